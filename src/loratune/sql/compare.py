"""Are two query results the same answer?

As in the test-suite evaluation of Zhong, Yu and Klein (2020): results compare as multisets
of rows (duplicates count), as ordered lists only when the gold orders its output; the
columns of the prediction may come in another order (`SELECT name, age` answers the same
question as `SELECT age, name`); floats compare after rounding, since two correct queries may
sum in different orders. Ties in the gold's sort keys are handled as `ordering.py` explains.
"""

from __future__ import annotations

from collections import Counter
from itertools import permutations

MAX_PERMUTED_COLUMNS = 6
"""Beyond this many columns only the given column order is tried (6! = 720 permutations)."""


def normalize_rows(rows: list[tuple]) -> list[tuple]:
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def results_match(
    gold: list[tuple],
    pred: list[tuple],
    *,
    ordered: bool,
    gold_full: list[tuple] | None = None,
    width: int | None = None,
) -> bool:
    """True when `pred` is the same answer as `gold`.

    `gold_full`, for an ordered gold, is the gold without its LIMIT and with its sort keys as
    the columns after `width`: rows with equal keys may then come in any order, and under a
    LIMIT any of the tied rows at the boundary may be the one returned.
    """
    gold, pred = normalize_rows(gold), normalize_rows(pred)
    if gold == pred:
        return True
    if len(gold) != len(pred):
        return False
    if not gold:
        return True
    if len(gold[0]) != len(pred[0]):
        return False
    full = normalize_rows(gold_full) if gold_full is not None else None
    for perm in _candidate_permutations(gold if full is None else [r[:width] for r in full], pred):
        moved = [tuple(row[i] for i in perm) for row in pred]
        if not ordered:
            if Counter(moved) == Counter(gold):
                return True
        elif moved == gold or (full is not None and width is not None and _tie_match(full, width, moved)):
            return True
    return False


def _candidate_permutations(gold: list[tuple], pred: list[tuple]):
    """Column orders of `pred` in which every column's values could come from the matching gold
    column; the given order first."""
    ncols = len(pred[0])
    identity = tuple(range(ncols))
    yield identity
    if ncols < 2 or ncols > MAX_PERMUTED_COLUMNS:
        return
    gold_sets = [{row[i] for row in gold} for i in range(ncols)]
    pred_sets = [{row[i] for row in pred} for i in range(ncols)]
    fits = [[j for j in range(ncols) if pred_sets[j] <= gold_sets[i]] for i in range(ncols)]
    if any(not f for f in fits):
        return
    for perm in permutations(range(ncols)):
        if perm != identity and all(perm[i] in fits[i] for i in range(ncols)):
            yield perm


def _tie_match(full: list[tuple], width: int, pred: list[tuple]) -> bool:
    """Walk the gold's groups of equal sort keys: each whole group must match its slice of
    `pred` as a multiset; the group cut by the LIMIT must contain the slice."""
    groups: list[list[tuple]] = []
    last_key: tuple | None = None
    for row in full:
        key = row[width:]
        if not groups or key != last_key:
            groups.append([])
            last_key = key
        groups[-1].append(row[:width])
    start = 0
    for group in groups:
        if start >= len(pred):
            break
        take = min(len(group), len(pred) - start)
        piece = Counter(pred[start : start + take])
        if take == len(group):
            if piece != Counter(group):
                return False
        elif piece - Counter(group):
            return False
        start += take
    return start == len(pred)
