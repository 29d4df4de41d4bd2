"""Which results are ordered, and where the gold's order has ties.

A result is compared as an ordered list only when the gold has ORDER BY at the top level.
Rows that tie on the ORDER BY keys may come back in any order (and, under LIMIT, either of two
tied rows may be the one kept), so two correct queries can disagree on ties alone. To judge
fairly, the gold is rewritten to also return its sort keys and to drop its LIMIT; the
comparison then lets a prediction order tied rows freely and pick any of the tied rows at
the LIMIT boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from loratune.sql.analyze import SET_OPERATIONS


def has_top_level_order(tree: exp.Expression) -> bool:
    """True when the outermost query (a SELECT or a set operation) has ORDER BY."""
    node = tree
    while isinstance(node, exp.Subquery):
        node = node.this
    return node.args.get("order") is not None


@dataclass(frozen=True)
class TieQuery:
    sql: str
    """The gold without LIMIT, its sort keys appended as extra output columns."""
    width: int
    """How many of the output columns are the gold's own."""
    limit: int | None


def tie_query(tree: exp.Expression) -> TieQuery | None:
    """Build the gold's tie query, or None where it cannot be done safely (a set operation at
    the top, OFFSET, DISTINCT with sort keys that are not outputs, `*` projections)."""
    if not isinstance(tree, exp.Select) or tree.args.get("order") is None or tree.args.get("offset"):
        return None
    if isinstance(tree.parent, SET_OPERATIONS) or any(isinstance(p, exp.Star) or p.is_star for p in tree.expressions):
        return None
    limit = None
    limit_node = tree.args.get("limit")
    if limit_node is not None:
        value = limit_node.expression
        if not (isinstance(value, exp.Literal) and value.is_int):
            return None
        limit = int(value.this)
    query = tree.copy()
    query.set("limit", None)
    projections = list(query.expressions)
    aliases = {p.alias.lower(): p.this for p in projections if isinstance(p, exp.Alias)}
    keys = []
    for ordered in query.args["order"].expressions:
        key = ordered.this
        if isinstance(key, exp.Literal) and key.is_int:  # ORDER BY 2
            position = int(key.this) - 1
            if not 0 <= position < len(projections):
                return None
            key = projections[position]
            key = key.this if isinstance(key, exp.Alias) else key
        elif isinstance(key, exp.Column) and not key.table and key.name.lower() in aliases:
            key = aliases[key.name.lower()]
        keys.append(key.copy())
    if query.args.get("distinct") is not None:
        outputs = {(p.this if isinstance(p, exp.Alias) else p).sql() for p in projections}
        if any(key.sql() not in outputs for key in keys):
            return None  # extra outputs would change what DISTINCT removes
    for i, key in enumerate(keys):
        query.append("expressions", exp.alias_(key, f"__tie_key_{i}"))
    return TieQuery(query.sql(dialect="sqlite"), len(projections), limit)
