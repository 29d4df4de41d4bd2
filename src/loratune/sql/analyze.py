"""What a query says about the data it expects: the facts the database synthesizer builds from.

For each column reference the query makes, resolve it to a (table, column) of the schema
(through aliases and enclosing scopes), then record how it is used: compared with which
string or number constants, matched with which LIKE patterns, used as a number (SUM, AVG,
arithmetic), or equated with another column (a join key, an IN-subquery, the two sides of a
set operation). Columns the query needs but the context lacks are listed too: the context of
sql-create-context is an incomplete view of the real schema, so the gold query is allowed to
extend it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlglot import exp

from loratune.sql.schema import Schema

Key = tuple[str, str]
"""(table, column), both lower case."""

SET_OPERATIONS = (exp.Union, exp.Intersect, exp.Except)
MAX_CONSTANTS_PER_COLUMN = 24
"""Constants past this many on one column are ignored: `a IN (1, 2, ..., 3000)` must not
make every synthesized database thousands of rows of work."""
MAX_GROUP_SIZE = 250
"""`HAVING count(*) > k` makes groups of k + 1 rows, up to this many."""
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.Glob)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)
_AGGREGATES = (exp.Sum, exp.Avg, exp.Max, exp.Min)
_MIRROR = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE}


@dataclass
class QueryFacts:
    strings: dict[Key, set[str]] = field(default_factory=dict)
    numbers: dict[Key, set[float]] = field(default_factory=dict)
    likes: dict[Key, set[str]] = field(default_factory=dict)
    numeric: set[Key] = field(default_factory=set)
    """Columns used as numbers: compared with a number, summed, averaged, in arithmetic."""
    textual: set[Key] = field(default_factory=set)
    """Columns compared with a string."""
    satisfying: dict[Key, set] = field(default_factory=dict)
    """Values that satisfy a comparison of the column with a constant (`age > 20` gives 21):
    the synthesizer puts them in a few rows so the gold has rows to return."""
    group_sizes: dict[Key, int] = field(default_factory=dict)
    """GROUP BY columns whose groups must reach a size (`HAVING count(*) > 10` needs 11 rows)."""
    links: list[tuple[Key, Key]] = field(default_factory=list)
    """Pairs of columns whose values must be able to match (join keys and the like)."""
    missing: list[tuple[str, str]] = field(default_factory=list)
    """(table, column) the query uses that the schema lacks, table as the query spells it."""
    loose_strings: set[str] = field(default_factory=set)
    loose_numbers: set[float] = field(default_factory=set)
    """Every constant in the query, also those not tied to a column."""


def from_sources(select: exp.Select) -> list[exp.Expression]:
    """The tables and subqueries a SELECT reads, in FROM/JOIN order."""
    sources = []
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is not None:
        sources.append(from_.this)
    for join in select.args.get("joins") or []:
        sources.append(join.this)
    return sources


def literal_value(node: exp.Expression, schema: Schema | None = None) -> str | float | None:
    """A constant's value: strings, numbers (with a sign), and double-quoted names that name no
    column, which SQLite reads as strings (Spider's gold writes `name = "Ben Jones"`)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Literal):
        if node.is_string:
            return str(node.this)
        try:
            value = float(node.this)
        except ValueError:
            return None
        # an integer literal past SQLite's 64-bit range is read by SQLite as a REAL, so it stays a float
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(node, exp.Neg):
        inner = literal_value(node.this, schema)
        return -inner if isinstance(inner, (int, float)) else None
    if isinstance(node, exp.Column) and is_string_identifier(node, schema):
        return node.name
    return None


def storable(value: str | float) -> bool:
    """Can the value go into a synthesized row? `1e999` is infinite and a string with a lone
    surrogate (valid JSON, invalid UTF-8) cannot be stored: both stay in the query, where
    SQLite answers for them, and are left out of the data planted for it."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def is_string_identifier(column: exp.Column, schema: Schema | None) -> bool:
    """SQLite's fallback: a double-quoted identifier that resolves to nothing is a string."""
    ident = column.this
    if column.table or not isinstance(ident, exp.Identifier) or not ident.quoted:
        return False
    return schema is None or not schema.has_column(column.name)


class _Resolver:
    """Resolves column references through the alias maps of the enclosing SELECTs."""

    def __init__(self, tree: exp.Expression, schema: Schema) -> None:
        self.schema = schema
        self.ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        self._scopes: dict[int, list[tuple[str, str | None]]] = {}

    def scope(self, select: exp.Select) -> list[tuple[str, str | None]]:
        """(name or alias, table or None for a subquery/CTE) for each source of `select`."""
        key = id(select)
        if key not in self._scopes:
            entries: list[tuple[str, str | None]] = []
            for source in from_sources(select):
                if isinstance(source, exp.Table):
                    table = None if source.name.lower() in self.ctes else source.name
                    entries.append((source.alias_or_name.lower(), table))
                    if source.alias:
                        entries.append((source.name.lower(), table))
                elif source.alias:
                    entries.append((source.alias.lower(), None))
            self._scopes[key] = entries
        return self._scopes[key]

    def resolve(self, column: exp.Column, facts: QueryFacts | None = None) -> Key | None:
        if not column.name or is_string_identifier(column, self.schema):
            return None
        selects = _enclosing_selects(column)
        if not selects:
            return None
        name = column.name.lower()
        if column.table:
            qualifier = column.table.lower()
            for select in selects:
                for alias, table in self.scope(select):
                    if alias == qualifier:
                        return self._key_or_missing(table, column, facts)
            return None
        if _is_projection_alias(column, selects[0]):
            return None
        for select in selects:
            for _alias, table in self.scope(select):
                found = self.schema.table(table) if table else None
                if found is not None and found.column(name) is not None:
                    return (table.lower(), name)
        first = next((table for _a, table in self.scope(selects[0]) if table), None)
        return self._key_or_missing(first, column, facts) if first else None

    def _key_or_missing(self, table: str | None, column: exp.Column, facts: QueryFacts | None) -> Key | None:
        if table is None:
            return None
        found = self.schema.table(table)
        if (found is None or found.column(column.name) is None) and facts is not None:
            if (table, column.name) not in facts.missing:
                facts.missing.append((table, column.name))
        return (table.lower(), column.name.lower())


def _enclosing_selects(node: exp.Expression) -> list[exp.Select]:
    out = []
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.Select):
            out.append(parent)
        parent = parent.parent
    return out


def _is_projection_alias(column: exp.Column, select: exp.Select) -> bool:
    """`ORDER BY cnt` where `count(*) AS cnt`: a reference to the output, not to a table."""
    if column.find_ancestor(exp.Order, exp.Having, exp.Group) is None:
        return False
    return column.name.lower() in {p.alias.lower() for p in select.expressions if isinstance(p, exp.Alias)}


def _unparen(node: exp.Expression | None) -> exp.Expression | None:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def analyze_query(tree: exp.Expression, schema: Schema) -> QueryFacts:
    """Collect the facts about data that `tree` depends on, resolved against `schema`."""
    facts = QueryFacts()
    resolver = _Resolver(tree, schema)

    def key_of(node: exp.Expression | None) -> Key | None:
        node = _unparen(node)
        if isinstance(node, _AGGREGATES) and node.find_ancestor(exp.Having, exp.Select) is not None:
            node = _unparen(node.this)  # `HAVING sum(x) > 5000`: rows with x > 5000 let it pass
        return resolver.resolve(node, facts) if isinstance(node, exp.Column) else None

    def note(key: Key, value: str | float, op: type = exp.EQ) -> None:
        """Record `key <op> value` (the column on the left)."""
        if not storable(value):
            return
        if sum(len(d.get(key, ())) for d in (facts.strings, facts.numbers, facts.likes)) >= MAX_CONSTANTS_PER_COLUMN:
            return
        if op in (exp.Like, exp.ILike, exp.Glob) and isinstance(value, str):
            facts.likes.setdefault(key, set()).add(value)
            facts.textual.add(key)
            return
        if isinstance(value, str):
            facts.strings.setdefault(key, set()).add(value)
            facts.textual.add(key)
        else:
            facts.numbers.setdefault(key, set()).add(value)
            facts.numeric.add(key)
        witness = _satisfying(value, op)
        if witness is not None:
            facts.satisfying.setdefault(key, set()).add(witness)

    for column in tree.find_all(exp.Column):
        key_of(column)  # records missing columns even where nothing else is learnt
    for node in tree.walk():
        if isinstance(node, _COMPARISONS) and node.find_ancestor(exp.Having, exp.Select) is not None:
            _note_group_size(node, facts, key_of)
        if isinstance(node, _COMPARISONS):
            left, right = _unparen(node.this), _unparen(node.expression)
            lkey, rkey = key_of(left), key_of(right)
            if lkey and rkey and isinstance(node, exp.EQ):
                facts.links.append((lkey, rkey))
            for key, other in ((lkey, right), (rkey, left)):
                inner = _unparen(other.this) if isinstance(other, exp.Subquery) else None
                if key and isinstance(inner, exp.Select) and inner.expressions:  # a = (SELECT b ...)
                    linked = key_of(_strip_alias(inner.expressions[0]))
                    if linked:
                        facts.links.append((key, linked))
            for key, other, op in ((lkey, right, type(node)), (rkey, left, _MIRROR.get(type(node), type(node)))):
                value = literal_value(other, schema) if other is not None else None
                if key and value is not None:
                    note(key, value, op)
        elif isinstance(node, exp.Between):
            key = key_of(node.this)
            for bound in (node.args.get("low"), node.args.get("high")):
                value = literal_value(bound, schema) if bound is not None else None
                if key and value is not None:
                    note(key, value)
        elif isinstance(node, exp.In):
            key = key_of(node.this)
            for item in node.expressions:
                value = literal_value(item, schema)
                if key and value is not None:
                    note(key, value)
            query = node.args.get("query")
            inner = _unparen(query.this if isinstance(query, exp.Subquery) else query)
            if key and isinstance(inner, exp.Select) and inner.expressions:
                other = key_of(inner.expressions[0])
                if other:
                    facts.links.append((key, other))
        elif isinstance(node, (exp.Sum, exp.Avg)) or isinstance(node, _ARITHMETIC):
            for operand in (node.this, node.args.get("expression")):
                key = key_of(operand)
                if key:
                    facts.numeric.add(key)
        elif isinstance(node, SET_OPERATIONS):
            left, right = _unparen(node.this), _unparen(node.expression)
            if isinstance(left, exp.Select) and isinstance(right, exp.Select):
                for a, b in zip(left.expressions, right.expressions):
                    ka, kb = key_of(_strip_alias(a)), key_of(_strip_alias(b))
                    if ka and kb:
                        facts.links.append((ka, kb))
        elif isinstance(node, (exp.Literal, exp.Neg)) and not isinstance(node.parent, (exp.Neg, exp.Limit, exp.Offset)):
            value = literal_value(node)
            loose = facts.loose_strings if isinstance(value, str) else facts.loose_numbers
            if value is not None and storable(value) and len(loose) < MAX_CONSTANTS_PER_COLUMN:
                loose.add(value)
        elif isinstance(node, exp.Column) and is_string_identifier(node, schema):
            if storable(node.name) and len(facts.loose_strings) < MAX_CONSTANTS_PER_COLUMN:
                facts.loose_strings.add(node.name)
    return facts


def _note_group_size(node: exp.Expression, facts: QueryFacts, key_of: Callable[[exp.Expression], Key | None]) -> None:
    """`HAVING count(*) > 10` (or `>=`, `=`): the groups of the SELECT's GROUP BY columns need
    11 rows for the gold to return anything."""
    having = node.find_ancestor(exp.Having, exp.Select)
    if not isinstance(having, exp.Having):
        return
    left, right = _unparen(node.this), _unparen(node.expression)
    op = type(node)
    if isinstance(right, exp.Count) and not isinstance(left, exp.Count):
        left, right, op = right, left, _MIRROR.get(op, op)
    value = literal_value(right) if isinstance(left, exp.Count) and right is not None else None
    if not isinstance(value, (int, float)) or not storable(value) or op not in (exp.GT, exp.GTE, exp.EQ):
        return
    need = min(MAX_GROUP_SIZE, int(value) + (1 if op is exp.GT else 0))
    select = having.parent
    group = select.args.get("group") if isinstance(select, exp.Select) else None
    for expression in group.expressions if group is not None else []:
        key = key_of(expression)
        if key and need > 1:
            facts.group_sizes[key] = max(facts.group_sizes.get(key, 0), need)


def _satisfying(value: str | float, op: type) -> str | float | None:
    """A value `v` with `v <op> value` true; None for `!=`, where almost anything will do."""
    if op in (exp.EQ, exp.GTE, exp.LTE):
        return value
    if isinstance(value, str):  # a proper prefix sorts before a string, an extension after it
        if op is exp.LT:
            return value[:-1] if value else None
        return value + "0" if op is exp.GT else None
    step = 1 if isinstance(value, int) else 0.5
    if op is exp.GT:
        return value + step
    if op is exp.LT:
        return value - step
    return None


def _strip_alias(node: exp.Expression) -> exp.Expression:
    return node.this if isinstance(node, exp.Alias) else node
