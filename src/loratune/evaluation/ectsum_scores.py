"""Earnings-call summaries scored by their numbers: ECTSum's numeric precision (`ectsum.numeric`),
the share of a summary's distinct numbers that the transcript or the reference supports. ROUGE
comes from `metrics.text_metrics`, as for every task.
"""

from __future__ import annotations

from typing import Any

from loratune.ectsum.numeric import mean_numeric_precision, numeric_precision

ECTSUM_METRICS = ("num_precision",)
"""The headline keys an evaluation of an ectsum run adds to metrics.json."""


def ectsum_scores(replies: list[str], rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Aggregate numeric precision (ECTSum's: the mean over the summaries that hold a number) with
    the count of those summaries, and per-summary values for paired bootstrap intervals."""
    scores = numeric_precisions(replies, rows)
    mean = mean_numeric_precision(scores)
    aggregate = {"num_precision": mean, "num_precision_summaries": sum(s is not None for s in scores)}
    return aggregate, ({"num_precision": bootstrap_values(scores, mean)} if mean is not None else {})


def numeric_precisions(replies: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
    """Each summary's numeric precision against its transcript and reference; None for a summary
    without numbers (ECTSum leaves those out of the mean)."""
    return [numeric_precision(reply, str(row["document"]), str(row["summary"])) for reply, row in zip(replies, rows)]


def bootstrap_values(scores: list[float | None], mean: float) -> list[float]:
    """One value per summary whose plain mean is ECTSum's aggregate, for `metrics.paired_bootstrap`.

    The aggregate is a ratio: the mean over the summaries with numbers, whose count varies between
    resamples. Each summary gets its linearised contribution, mean + (score − mean) / share, where
    share is the fraction of summaries with numbers, and a summary without numbers gets the mean:
    these average to the aggregate exactly and spread as the ratio does, so the interval of LoRA −
    base is the ratio's, and its difference the one the table shows.
    """
    share = sum(s is not None for s in scores) / len(scores)
    return [mean if s is None else mean + (s - mean) / share for s in scores]
