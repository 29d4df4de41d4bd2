"""Normalised exact match: two queries that differ only in spelling compare equal.

Both queries are parsed with sqlglot (SQLite dialect) and regenerated after erasing what does
not change meaning: keyword and identifier case (SQLite identifiers are case-insensitive),
whitespace, identifier quoting, string quote style (a double-quoted name that names no column
is a string in SQLite), table alias names (a table read once is called by its name,
repeated tables t1, t2, ...), redundant parentheses, an explicit ASC, the side a constant is written on
(`'x' = a` is `a = 'x'`) and a trailing semicolon. Anything else (operand order, a different
but equivalent formulation) is left to execution accuracy.
"""

from __future__ import annotations

from collections import Counter

from sqlglot import exp
from sqlglot.errors import SqlglotError

from loratune.sql.analyze import from_sources, is_string_identifier, literal_value
from loratune.sql.schema import Schema

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_MIRROR = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE, exp.EQ: exp.EQ, exp.NEQ: exp.NEQ}
_PREDICATES = (*_COMPARISONS, exp.Like, exp.ILike, exp.Glob, exp.In, exp.Between, exp.Is, exp.Exists)
_ATOMS = (exp.Column, exp.Literal, exp.Paren, exp.Identifier, exp.Star, exp.Null, exp.Boolean, exp.Subquery)


def normalized_sql(tree: exp.Expression, schema: Schema | None = None) -> str:
    """A canonical string for `tree`; `schema` tells double-quoted strings from column names."""
    tree = tree.copy()
    for column in list(tree.find_all(exp.Column)):
        if is_string_identifier(column, schema):
            column.replace(exp.Literal.string(column.name))
    _canonical_aliases(tree)
    for ident in tree.find_all(exp.Identifier):
        ident.set("this", str(ident.this).lower())
        ident.set("quoted", False)
    _drop_redundant_parens(tree)
    for node in list(tree.find_all(*_COMPARISONS)):
        left, right = node.this, node.expression
        if literal_value(left) is not None and literal_value(right) is None:
            node.replace(_MIRROR[type(node)](this=right.copy(), expression=left.copy()))
    for ordered in tree.find_all(exp.Ordered):
        if ordered.args.get("desc") is False:
            ordered.set("desc", None)
    try:
        return tree.sql(dialect="sqlite", comments=False)
    except (SqlglotError, RecursionError):
        return ""


def _canonical_aliases(tree: exp.Expression) -> None:
    """Make table aliases not matter: in each SELECT, a table read once is called by its own
    name (alias dropped), a table read twice gets t1, t2, ... by position; a SELECT over a
    single table drops the qualifiers of its own columns."""
    renames: dict[int, dict[str, str]] = {}
    single: set[int] = set()
    for select in tree.find_all(exp.Select):
        sources = from_sources(select)
        tables = [s for s in sources if isinstance(s, exp.Table)]
        counts = Counter(t.name.lower() for t in tables)
        mapping: dict[str, str] = {}
        for position, table in enumerate(tables, start=1):
            name = table.name.lower()
            mapping[table.alias_or_name.lower()] = name if counts[name] == 1 else f"t{position}"
        renames[id(select)] = mapping
        if len(sources) == 1 and len(tables) == 1:
            single.add(id(select))
    for column in list(tree.find_all(exp.Column)):
        if not column.table:
            continue
        nearest = column.find_ancestor(exp.Select)
        parent = column.parent
        while parent is not None:
            mapping = renames.get(id(parent)) if isinstance(parent, exp.Select) else None
            if mapping and column.table.lower() in mapping:
                if parent is nearest and id(parent) in single:
                    column.set("table", None)
                else:
                    column.set("table", exp.to_identifier(mapping[column.table.lower()]))
                break
            parent = parent.parent
    for select in tree.find_all(exp.Select):
        mapping = renames[id(select)]
        for source in from_sources(select):
            if isinstance(source, exp.Table) and source.alias:
                new = mapping[source.alias.lower()]
                source.set("alias", None if new == source.name.lower() else exp.TableAlias(this=exp.to_identifier(new)))


def _drop_redundant_parens(tree: exp.Expression) -> None:
    """Remove parentheses that cannot change how the expression groups."""
    changed = True
    while changed:
        changed = False
        for paren in list(tree.find_all(exp.Paren)):
            inner, parent = paren.this, paren.parent
            redundant = (
                isinstance(inner, _ATOMS)
                or _is_function_call(inner)
                or isinstance(parent, (exp.Where, exp.Having, exp.Join, exp.Select, exp.Ordered, exp.Group, exp.Tuple))
                or (isinstance(inner, _PREDICATES) and isinstance(parent, (exp.And, exp.Or, exp.Not)))
                or (isinstance(inner, exp.And) and isinstance(parent, exp.And))
                or (isinstance(inner, exp.Or) and isinstance(parent, exp.Or))
                or (isinstance(inner, exp.And) and isinstance(parent, exp.Or))
            )
            if redundant and not isinstance(inner, exp.Select):
                paren.replace(inner)
                changed = True


def _is_function_call(node: exp.Expression) -> bool:
    """`count(x)`, `max(a)`: sqlglot also counts AND/OR as functions, which group differently."""
    return isinstance(node, exp.Func) and not isinstance(node, (exp.Binary, exp.Unary, exp.Connector))
