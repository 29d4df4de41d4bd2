"""Plan the synthesized databases of a (gold, prediction) pair: what affinity (integer, real, text) each column
holds and which columns share values.

sql-create-context gives only CREATE TABLE statements, mostly declaring VARCHAR even where
Spider stores numbers. A column's affinity is read from what the gold does
with it (compared with a number, summed, compared with a string), then its declared type, then
its name (`age`, `year`, `..._id`), and only then from the prediction. The synthesized table
declares that affinity, so `age > 56` compares numbers as on the real database, not text.
Columns the gold equates (join keys, IN-subqueries, `a = (SELECT b ...)`, the two sides of a
set operation) form one domain sharing a pool of values; a member that looks like its table's
key (`id`, `stadium_id` in stadium, `stuid` in student) is the domain's primary key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from loratune.sql.analyze import Key, QueryFacts
from loratune.sql.schema import Schema

_NUMERIC_NAME = re.compile(
    r"(^|_)(age|year|years|capacity|weight|price|sales|share|rank|ranking|attendance|count|number|num|"
    r"population|height|score|salary|amount|total|budget|points|quantity|horsepower|mpg|cylinders)(_|$)|id$",
    re.I,
)
_DDL_TYPE = {"int": "INTEGER", "real": "REAL", "text": "TEXT"}


@dataclass
class Domain:
    """Columns that share values, and the constants any of them is compared with."""

    affinity: str = "text"
    members: list[Key] = field(default_factory=list)
    strings: set[str] = field(default_factory=set)
    numbers: set[float] = field(default_factory=set)
    likes: set[str] = field(default_factory=set)
    primary: Key | None = None
    name: str = ""


@dataclass
class DatabasePlan:
    """How to fill each column: its affinity and the domain it draws from."""

    schema: Schema
    domains: list[Domain]
    domain_of: dict[Key, int]
    facts: QueryFacts

    def ddl(self) -> list[str]:
        types = {key: _DDL_TYPE[self.domains[i].affinity] for key, i in self.domain_of.items()}
        return self.schema.ddl(types)


def merge_facts(all_facts: list[QueryFacts]) -> QueryFacts:
    merged = QueryFacts()
    for facts in all_facts:
        for name in ("strings", "numbers", "likes", "satisfying"):
            target, source = getattr(merged, name), getattr(facts, name)
            for key, values in source.items():
                target.setdefault(key, set()).update(values)
        merged.numeric |= facts.numeric
        merged.textual |= facts.textual
        merged.links += facts.links
        merged.loose_strings |= facts.loose_strings
        merged.loose_numbers |= facts.loose_numbers
    return merged


def plan_database(schema: Schema, gold: QueryFacts, others: list[QueryFacts] | None = None) -> DatabasePlan:
    """Group columns into domains and give each an affinity and its constants. Constants come from
    every query; joins only from the gold, whose join keys stand in for the foreign keys the
    context does not declare (a prediction joining the wrong columns must not make them share
    values, or its wrong join would match like the right one)."""
    facts = merge_facts([gold, *(others or [])])
    facts.links = list(gold.links)
    # witness rows and group sizes make the gold's answer non-empty, not the prediction's
    facts.satisfying = gold.satisfying
    facts.group_sizes = dict(gold.group_sizes)
    keys = [(t.name.lower(), c.name.lower()) for t in schema.tables for c in t.columns]
    declared = {(t.name.lower(), c.name.lower()): c.declared_type.upper() for t in schema.tables for c in t.columns}
    parent = {key: key for key in keys}

    def find(key: Key) -> Key:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for a, b in facts.links:
        if a in parent and b in parent:
            parent[find(a)] = find(b)
    roots: dict[Key, int] = {}
    domains: list[Domain] = []
    domain_of: dict[Key, int] = {}
    for key in keys:
        root = find(key)
        if root not in roots:
            roots[root] = len(domains)
            domains.append(Domain(name=key[1]))
        domain = domains[roots[root]]
        domain.members.append(key)
        domain_of[key] = roots[root]
        for value in facts.strings.get(key, ()):
            domain.strings.add(value)
            number = _as_number(value)
            if number is not None:  # `year = '2014'` on a numeric column: keep 2014 as a number too
                domain.numbers.add(number)
        domain.numbers |= facts.numbers.get(key, set())
        domain.likes |= facts.likes.get(key, set())
    for domain in domains:
        domain.affinity = _domain_affinity(domain, gold, others or [], declared)
        tables_with_primary: set[str] = set()
        for table, column in domain.members:
            if _looks_primary(table, column) and table not in tables_with_primary and domain.primary is None:
                domain.primary = (table, column)
                tables_with_primary.add(table)
    return DatabasePlan(schema, domains, domain_of, facts)


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):  # 'nan', 'inf', '1e999': no number a row could hold
        return None
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


def _domain_affinity(domain: Domain, gold: QueryFacts, others: list[QueryFacts], declared: dict[Key, str]) -> str:
    """What the gold does with the column first, then its declared type, then its name, and
    only then what a prediction does with it (a prediction comparing a text column with a
    number must not turn the column into numbers)."""
    affinity = _usage_affinity(domain.members, gold)
    if affinity:
        return affinity
    for key in domain.members:
        affinity = declared.get(key, "")
        if "INT" in affinity:
            return "int"
        if any(word in affinity for word in ("REAL", "FLOA", "DOUB", "DEC", "NUMERIC")):
            return "real"
    if any(_NUMERIC_NAME.search(column) for _table, column in domain.members):
        return "int"
    return next((k for k in (_usage_affinity(domain.members, f) for f in others) if k), "text")


def _usage_affinity(members: list[Key], facts: QueryFacts) -> str | None:
    numbers = [n for key in members for n in facts.numbers.get(key, ())]
    numbers += [n for key in members for s in facts.strings.get(key, ()) if (n := _as_number(s)) is not None]
    if numbers or any(key in facts.numeric for key in members):
        return "real" if any(isinstance(n, float) for n in numbers) else "int"
    if any(key in facts.textual for key in members):
        return "text"
    return None


def _looks_primary(table: str, column: str) -> bool:
    """`id`, `stadium_id` in stadium, `stuid` in student: probably the table's key."""
    if column in ("id", f"{table}_id", f"{table}id"):
        return True
    stem = column[:-3] if column.endswith("_id") else column[:-2] if column.endswith("id") else ""
    return len(stem) >= 3 and table.startswith(stem) and len(table) - len(stem) <= 4
