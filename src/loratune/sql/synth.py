"""Fill the databases a plan describes with rows that can tell two queries apart
(test-suite accuracy, after Zhong, Yu and Klein, 2020).

Each database is drawn from `random.Random` seeded with a string, so a seed gives the same
databases. In every table:
- the first rows are witness rows: they hold values that satisfy the gold's comparisons
  (`age > 20` gives 21, LIKE patterns filled in) and the same key value in every column of a
  join domain, so they join across tables and the gold has rows to return;
- the other rows are random: every constant of either query (strings with a case variant,
  numbers with their neighbours c-1 and c+1 so `>` differs from `>=`), values of the column's
  kind repeated with skewed frequencies (GROUP BY counts differ, ORDER BY ... LIMIT matters),
  NULLs, duplicate rows, and a dangling foreign key. Database 0 is kept clean (small, no NULLs,
  no duplicates, no dangling keys); the others vary in size, skew and number of distinct values.
Tables that refer to another table's key get more rows than the tables they refer to.
"""

from __future__ import annotations

import random
import sqlite3

from loratune.sql.analyze import Key
from loratune.sql.execute import memory_database
from loratune.sql.plan import DatabasePlan, Domain

_NAME_RANGES = (("year", (1950, 2020)), ("age", (16, 80)))

def synthesize_database(plan: DatabasePlan, *, seed: str, index: int) -> sqlite3.Connection:
    """Database number `index` for `plan`: a guarded in-memory database, the same for the same
    seed and index. Database 0 is the clean one."""
    rows = fill_database(plan, random.Random(f"{seed}:{index}"), clean=index == 0)
    return memory_database(plan.ddl(), rows)


def synthesize_databases(plan: DatabasePlan, *, num_dbs: int, seed: str) -> list[sqlite3.Connection]:
    """Databases 0 .. num_dbs-1 for `plan`."""
    return [synthesize_database(plan, seed=seed, index=i) for i in range(num_dbs)]


WITNESS_ROWS = 3
"""Rows 0..2 of each table hold values that satisfy the queries' comparisons and join across
tables, so the gold has rows to return; the other rows are random and tell queries apart."""


def fill_database(plan: DatabasePlan, rng: random.Random, *, clean: bool) -> dict[str, tuple[list[str], list[tuple]]]:
    """Rows for every table (table -> (columns, rows)). A `clean` database has no NULLs, no
    duplicate rows and no dangling foreign keys."""
    # tables that refer to another table's key (concert -> stadium) get more rows than the
    # tables they refer to, so per-key counts differ and ORDER BY count(*) has a clear winner
    referring = {key[0] for d in plan.domains if d.primary is not None for key in d.members if key != d.primary}
    sizes = {}
    for table in plan.schema.tables:
        name = table.name.lower()
        sizes[name] = rng.randint(3, 6) if clean else rng.randint(10, 24) if name in referring else rng.randint(6, 14)
    groups = _group_targets(plan)
    for (table, _column), need in groups.items():
        sizes[table] = max(sizes[table], need + rng.randint(0, 3))
    skew = rng.choice((0.5, 1.0, 2.0))  # how unevenly values repeat, varied across databases
    pools = []
    for domain in plan.domains:
        # few distinct values (GROUP BY groups, duplicates) in some databases, many in others
        size = rng.choice((rng.randint(2, 4), rng.randint(4, 8), rng.randint(8, 16)))
        if domain.primary is not None:
            size = max(size, sizes[domain.primary[0]] + rng.randint(1, 3))
        pools.append(_pool(domain, size, rng, plan.facts.loose_strings))
    keys, witnesses = _key_values(plan, pools, sizes, rng)
    out: dict[str, tuple[list[str], list[tuple]]] = {}
    for table in plan.schema.tables:
        n = sizes[table.name.lower()]
        columns = []
        for column in table.columns:
            key = (table.name.lower(), column.name.lower())
            index = plan.domain_of[key]
            domain = plan.domains[index]
            if domain.primary == key:
                values = list(keys[index])
            else:
                source = pools[index]
                if index in keys:
                    # foreign keys take their key column's values; outside the clean database,
                    # one more value that no key has (a dangling reference)
                    source = keys[index] + [v for v in pools[index] if v not in keys[index]][: 0 if clean else 1]
                values = _skewed_choices(source, n, rng, skew)
                null_rate = 0.0 if clean else (0.05 if len(domain.members) > 1 else 0.1)
                values = [None if j >= WITNESS_ROWS and rng.random() < null_rate else v for j, v in enumerate(values)]
                own = witnesses.get(index) or _rotated(_witness_candidates(plan, [key], rng), rng)
                for j in range(min(n, WITNESS_ROWS) if own else 0):
                    values[j] = own[j % len(own)]
            _force_constants(values, _own_constants(plan, key), rng, clean, unique=domain.primary == key)
            if key in groups:  # one group as big as `HAVING count(*) > k` asks, keyed like witness row 0
                values[: groups[key]] = [values[0]] * groups[key]
            columns.append(values)
        if not clean and rng.random() < 0.35:
            _correlate(columns, rng)
        rows = [tuple(col[i] for col in columns) for i in range(n)]
        if not clean and rows and not any(d.primary and d.primary[0] == table.name.lower() for d in plan.domains):
            rows += [rows[rng.randrange(len(rows))] for _ in range(rng.randint(0, 2))]
        rng.shuffle(rows)
        out[table.name] = ([c.name for c in table.columns], rows)
    return out


def _correlate(columns: list[list], rng: random.Random) -> None:
    """Sort each column's random rows (some descending), so values go together across columns:
    the most frequent key then comes with a run of low (or high) years, say, and a filter on one
    column changes which key wins a count. Independent columns rarely show that."""
    for values in columns:
        tail = values[WITNESS_ROWS:]
        tail.sort(key=lambda v: (v is None, type(v).__name__, v if v is not None else 0), reverse=rng.random() < 0.5)
        values[WITNESS_ROWS:] = tail


def _key_values(
    plan: DatabasePlan, pools: list[list], sizes: dict[str, int], rng: random.Random
) -> tuple[dict[int, list], dict[int, list]]:
    """For each domain with a primary key: the key column's distinct values. For each domain of
    several columns: the values of witness rows 0, 1, 2 in every member column, in that order,
    so witness row j of one table joins witness row j of the others."""
    keys: dict[int, list] = {}
    witnesses: dict[int, list] = {}
    for index, domain in enumerate(plan.domains):
        if domain.primary is None and len(domain.members) == 1:
            continue
        candidates = _rotated(_witness_candidates(plan, domain.members, rng), rng)
        ordered = _distinct(candidates + rng.sample(pools[index], len(pools[index])))
        if domain.primary is not None:
            ordered = keys[index] = ordered[: sizes[domain.primary[0]]]
        witnesses[index] = [ordered[j % len(ordered)] for j in range(WITNESS_ROWS)]
    return keys, witnesses


def _group_targets(plan: DatabasePlan) -> dict[Key, int]:
    """Columns that must hold one value in many rows for `HAVING count(*) > k` to pass. A GROUP BY
    on a key column (unique) puts the burden on the columns that refer to it."""
    targets: dict[Key, int] = {}
    for key, need in plan.facts.group_sizes.items():
        domain = plan.domains[plan.domain_of[key]] if key in plan.domain_of else None
        if domain is None:
            continue
        for member in [m for m in domain.members if m != domain.primary] if domain.primary == key else [key]:
            targets[member] = max(targets.get(member, 0), need)
    return targets


def _witness_candidates(plan: DatabasePlan, keys: list[Key], rng: random.Random) -> list:
    """Values that satisfy the queries' comparisons on these columns (LIKE patterns filled in)."""
    values: list = []
    for key in keys:
        values += _sorted(plan.facts.satisfying.get(key, set()))
        values += [_like_instance(p, rng) for p in _sorted(plan.facts.likes.get(key, set()))]
    return _distinct(values)


def _rotated(values: list, rng: random.Random) -> list:
    if not values:
        return values
    start = rng.randrange(len(values))
    return values[start:] + values[:start]


def _distinct(values: list) -> list:
    out: list = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _sorted(values: set) -> list:
    return sorted(values, key=lambda v: (type(v).__name__, v))


def _pool(domain: Domain, size: int, rng: random.Random, loose: set[str]) -> list:
    """Distinct candidate values: the constants first, then `size` random ones of the domain's affinity."""
    values: list = []

    def add(value: object) -> None:
        if value not in values:
            values.append(value)

    if domain.affinity == "text":
        for text in _sorted(domain.strings):
            add(text)
            add(text.lower() if text != text.lower() else text.upper())
        for pattern in _sorted(domain.likes):
            add(_like_instance(pattern, rng))
        for text in _sorted(loose):
            if rng.random() < 0.2:
                add(text)
        wanted = len(values) + size  # random values besides the constants, or they would crowd the column
        while len(values) < wanted:
            add(_word(rng))
        return values
    step = 0.5 if domain.affinity == "real" else 1
    for number in _sorted(domain.numbers):
        for value in (number, number - step, number + step):
            add(value)
    lo, hi = _number_range(domain, size)
    wanted = len(values) + size
    hi = max(hi, lo + 2 * wanted)  # room for `size` distinct values besides the constants
    for _attempt in range(10 * wanted):
        if len(values) >= wanted:
            break
        add(round(rng.uniform(lo, hi), 1) if domain.affinity == "real" else rng.randint(lo, hi))
    return values


_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "so", "na", "bi", "do", "fe", "gu", "pa", "ve", "zi", "ho", "ja")


def _word(rng: random.Random) -> str:
    """A random capitalised word and number (`Loteka 42`): varied letters, so LIKE patterns and
    text comparisons match some values and not others."""
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
    return f"{word.capitalize()} {rng.randint(1, 99)}" if rng.random() < 0.5 else word.capitalize()


_NUMBER_LIMIT = 2**53
"""Random numbers stay within +-2**53, where floats hold integers exactly and SQLite's 64-bit
integers have room: a query comparing with 1e300 must not make the synthesizer draw integers
SQLite cannot store (the constant itself still goes into a row, as a REAL)."""


def _number_range(domain: Domain, size: int) -> tuple[int, int]:
    if domain.numbers:
        low, high = (min(max(v, -_NUMBER_LIMIT), _NUMBER_LIMIT) for v in (min(domain.numbers), max(domain.numbers)))
        span = max(10, int(high - low))
        return max(int(low) - span, -_NUMBER_LIMIT), min(int(high) + span, _NUMBER_LIMIT)
    if domain.primary is not None or len(domain.members) > 1:
        return 1, size * 2
    for word, bounds in _NAME_RANGES:
        if word in domain.name:
            return bounds
    return 1, 100


def _like_instance(pattern: str, rng: random.Random) -> str:
    """A string the LIKE pattern matches: `%` becomes a few letters (or none), `_` one letter."""
    letters = "abcxyz"
    out = []
    for char in pattern:
        if char == "%":
            out.append("".join(rng.choice(letters) for _ in range(rng.randint(0, 3))))
        elif char == "_":
            out.append(rng.choice(letters))
        else:
            out.append(char)
    return "".join(out)


def _skewed_choices(pool: list, n: int, rng: random.Random, skew: float) -> list:
    """Draw with replacement, some values far more often than others, so group counts differ."""
    order = list(pool)
    rng.shuffle(order)
    weights = [1.0 / (rank + 1) ** skew for rank in range(len(order))]
    return rng.choices(order, weights=weights, k=n)


def _own_constants(plan: DatabasePlan, key: Key) -> list:
    facts = plan.facts
    return _sorted(facts.strings.get(key, set()) | facts.numbers.get(key, set()))


def _force_constants(values: list, constants: list, rng: random.Random, clean: bool, unique: bool) -> None:
    """Put the constants a column is compared with into one or two of the rows after the
    witness rows (mostly: a database where one is absent tests the empty case). A key column
    (`unique`) gets each at most once."""
    for constant in constants:
        if (not clean and rng.random() < 0.15) or (unique and constant in values):
            continue
        free = [i for i in range(WITNESS_ROWS, len(values)) if values[i] not in constants]
        for slot in rng.sample(free, min(len(free), 1 if clean or unique else rng.randint(1, 2))):
            values[slot] = constant
