"""Result comparison: multisets, ordered lists, column order, floats, ties under ORDER BY."""

from __future__ import annotations

from loratune.sql.compare import results_match


def test_multiset_comparison_counts_duplicates_and_ignores_row_order() -> None:
    assert results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=False)
    assert not results_match([(1, "a"), (1, "a")], [(1, "a")], ordered=False)
    assert not results_match([(1, "a"), (1, "a"), (2, "b")], [(1, "a"), (2, "b"), (2, "b")], ordered=False)
    assert results_match([], [], ordered=False)
    assert not results_match([(1,)], [], ordered=False)


def test_ordered_comparison_needs_the_same_order() -> None:
    assert results_match([(1,), (2,)], [(1,), (2,)], ordered=True)
    assert not results_match([(1,), (2,)], [(2,), (1,)], ordered=True)


def test_columns_may_come_in_another_order() -> None:
    assert results_match([("Ann", 30), ("Bo", 41)], [(41, "Bo"), (30, "Ann")], ordered=False)
    assert results_match([("Ann", 30), ("Bo", 41)], [(30, "Ann"), (41, "Bo")], ordered=True)
    # the pairing of values across columns still matters
    assert not results_match([("Ann", 30), ("Bo", 41)], [(41, "Ann"), (30, "Bo")], ordered=False)
    assert not results_match([("Ann", 30)], [("Ann",)], ordered=False)


def test_floats_compare_after_rounding_and_ints_equal_floats() -> None:
    assert results_match([(33.333333333333336,)], [(33.33333333333333,)], ordered=False)
    assert results_match([(30,)], [(30.0,)], ordered=False)
    assert not results_match([(30.5,)], [(30.4,)], ordered=False)
    assert not results_match([("30",)], [(30,)], ordered=False)


def test_tied_rows_may_come_in_any_order() -> None:
    # gold: name ORDER BY age; Ann and Cy tie at 30. Full rows carry the sort key after `width`.
    gold_full = [("Ann", 30), ("Cy", 30), ("Bo", 41)]
    gold = [("Ann",), ("Cy",), ("Bo",)]
    assert results_match(gold, [("Cy",), ("Ann",), ("Bo",)], ordered=True, gold_full=gold_full, width=1)
    assert not results_match(gold, [("Bo",), ("Ann",), ("Cy",)], ordered=True, gold_full=gold_full, width=1)


def test_limit_may_cut_a_tie_either_way() -> None:
    # gold: name ORDER BY count DESC LIMIT 1; Ann and Cy tie for the top
    gold_full = [("Ann", 3), ("Cy", 3), ("Bo", 1)]
    assert results_match([("Ann",)], [("Cy",)], ordered=True, gold_full=gold_full, width=1)
    assert not results_match([("Ann",)], [("Bo",)], ordered=True, gold_full=gold_full, width=1)
    assert not results_match([("Ann",)], [("Ann",), ("Cy",)], ordered=True, gold_full=gold_full, width=1)
