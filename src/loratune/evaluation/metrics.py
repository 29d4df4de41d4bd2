"""Text metrics for base-vs-LoRA comparisons: ROUGE, exact match, BLEU, chrF, paired bootstrap.

Pure functions over lists of strings, no model code, so evaluation, reports and tests share one
definition of every number.

ROUGE is the `rouge-score` package (the implementation behind Hugging Face `evaluate`'s
"rouge"), with the Porter stemmer, reported as the mean of per-example F-measures, which is what
`evaluate` reports. ROUGE-Lsum treats each line of a text as one sentence (rouge-score splits on
"\\n"); like `evaluate`, we take texts as given and add no sentence splitting, so on single-line
texts ROUGE-Lsum equals ROUGE-L. Callers that want sentence-level ROUGE-Lsum put one sentence per
line before scoring (CNN/DailyMail highlights already are).

BLEU and chrF are sacrebleu's corpus scores, divided by 100 so every metric here is on 0..1.
For the bootstrap, per-example lists use sacrebleu's sentence-level scores.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from loratune.errors import LoratuneError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TEXT_METRICS = (*ROUGE_TYPES, "exact_match", "bleu", "chrf")
SQL_METRICS = ("sql_valid", "sql_exact_match", "execution_accuracy", "execution_accuracy_real_db")
"""Computed by the SQL evaluation; listed here so tables and plots name every metric one way."""
METRIC_LABELS = {
    "rouge1": "Rouge-1",
    "rouge2": "Rouge-2",
    "rougeL": "Rouge-L",
    "rougeLsum": "Rouge-Lsum",
    "exact_match": "Exact match",
    "bleu": "BLEU",
    "chrf": "chrF",
    "sql_valid": "SQL valid",
    "sql_exact_match": "SQL exact match",
    "execution_accuracy": "Execution accuracy",
    "execution_accuracy_real_db": "Execution accuracy (real DB)",
    "tatqa_em": "TAT-QA EM",
    "tatqa_f1": "TAT-QA F1",
    "tatqa_scale": "TAT-QA scale right",
    "num_precision": "Numeric precision",
}
FORGETTING_METRIC_NAMES = {"execution_accuracy": "execution accuracy", "rougeL": "ROUGE-L"}
"""The metric a forgetting matrix reads per eval set (SQL tasks: execution; others: ROUGE-L), in words."""

HEADLINE_METRICS = {"sql": "execution_accuracy", "tat-qa": "tatqa_em", "ectsum": "rougeL", "summary": "rougeL",
                    "text": "rougeL", "qa": "rougeL", "chat": "rougeL"}
"""Each task family's headline: the one number a run is shown and filtered by first."""
HEADLINE_ORDER = ("execution_accuracy_real_db", "execution_accuracy", "tatqa_em", "rougeL")
"""Read off scores: the first of these they hold (real databases before synthesized ones)."""

_WHITESPACE = re.compile(r"\s+")


def headline_metric(task_family_or_metrics: str | Mapping[str, Any]) -> str:
    """The headline metric's key, from a task family (`HEADLINE_METRICS`) or from scores: one
    variant's aggregates or a whole metrics.json (both variants). Scores name the real-database
    execution accuracy when the rows were judged on real databases, which a family cannot tell.
    Pass aggregates, not one row's scores: a row without a database has no real-database value."""
    if isinstance(task_family_or_metrics, str):
        family = task_family_or_metrics
        if family not in HEADLINE_METRICS:
            known = ", ".join(HEADLINE_METRICS)
            raise LoratuneError(f"headline_metric: unknown task family {family!r}; known: {known}")
        return HEADLINE_METRICS[family]
    scores = _variant_scores(task_family_or_metrics)
    for key in HEADLINE_ORDER:
        if scores.get(key) is not None:
            return key
    raise LoratuneError(
        f"headline_metric: the scores hold none of {', '.join(HEADLINE_ORDER)} (keys: {', '.join(map(str, scores))})"
    )


def _variant_scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One variant's scores, or both variants' merged when given a metrics.json object."""
    variants = [metrics[v] for v in ("base", "lora") if isinstance(metrics.get(v), Mapping)]
    return {k: v for scores in variants for k, v in scores.items() if v is not None} if variants else dict(metrics)


def _check_aligned(predictions: Sequence[str], references: Sequence[str]) -> None:
    # A silent zip() over lists of different lengths would score the wrong pairs.
    if len(predictions) != len(references):
        raise LoratuneError(
            f"metrics: {len(predictions)} predictions but {len(references)} references; "
            "each prediction needs exactly one reference, in the same order"
        )
    if not predictions:
        raise LoratuneError("metrics: no predictions to score (the evaluation split is empty)")


def rouge_per_example(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE F-measures (0..1) for rouge1, rouge2, rougeL and rougeLsum."""
    _check_aligned(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out: dict[str, list[float]] = {key: [] for key in ROUGE_TYPES}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for key in ROUGE_TYPES:
            out[key].append(float(scores[key].fmeasure))
    return out


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE F-measures (0..1), the numbers `evaluate.load("rouge")` reports."""
    per = rouge_per_example(predictions, references)
    return {key: float(np.mean(values)) for key, values in per.items()}


def normalize_text(s: str) -> str:
    """Lowercase, collapse runs of whitespace to one space, strip: what exact match compares."""
    return _WHITESPACE.sub(" ", s.lower()).strip()


def exact_match_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where the normalised prediction equals the normalised reference, else 0.0."""
    _check_aligned(predictions, references)
    return [float(normalize_text(p) == normalize_text(r)) for p, r in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after `normalize_text`."""
    return float(np.mean(exact_match_per_example(predictions, references)))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (default 13a tokenizer, exp smoothing) on a 0..1 scale."""
    _check_aligned(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) / 100.0


def bleu_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """sacrebleu sentence BLEU per example (effective-order smoothing), 0..1, for the bootstrap."""
    _check_aligned(predictions, references)
    return [float(sacrebleu.sentence_bleu(p, [r]).score) / 100.0 for p, r in zip(predictions, references)]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus chrF (character 6-grams, beta 2) on a 0..1 scale."""
    _check_aligned(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score) / 100.0


def chrf_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """sacrebleu sentence chrF per example, 0..1, for the bootstrap."""
    _check_aligned(predictions, references)
    return [float(sacrebleu.sentence_chrf(p, [r]).score) / 100.0 for p, r in zip(predictions, references)]


def paired_bootstrap(
    base: Sequence[float], lora: Sequence[float], *, samples: int = 1000, seed: int = 0
) -> dict[str, float | int]:
    """95% interval for mean(lora) - mean(base) by paired bootstrap.

    Each resample draws example indices with replacement and uses the same indices for both
    systems, so the interval reflects the per-example difference, not two independent spreads.
    Returns {"diff", "low", "high", "samples"}; "diff" is the observed difference.
    """
    base_arr = np.asarray(base, dtype=float)
    lora_arr = np.asarray(lora, dtype=float)
    if base_arr.shape != lora_arr.shape or base_arr.ndim != 1:
        raise LoratuneError(
            f"paired_bootstrap: base has {base_arr.size} scores and lora has {lora_arr.size}; "
            "both must score the same examples in the same order"
        )
    if base_arr.size == 0:
        raise LoratuneError("paired_bootstrap: no examples to resample")
    if samples < 1:
        raise LoratuneError(f"paired_bootstrap: samples must be at least 1, got {samples}")
    delta = lora_arr - base_arr
    n = delta.size
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    # Chunks keep the index matrix small (1000 x 10,000 int64 would be 80 MB at once).
    chunk = max(1, 2_000_000 // n)
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = delta[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(delta.mean()), "low": float(low), "high": float(high), "samples": samples}


def text_metrics(
    predictions: Sequence[str], references: Sequence[str]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """All text metrics at once: (aggregates, per-example lists), keyed by `TEXT_METRICS`.

    Aggregates use corpus BLEU/chrF; the per-example lists (for `paired_bootstrap`) use
    sentence-level BLEU/chrF, whose mean differs from the corpus score.
    """
    per: dict[str, list[float]] = dict(rouge_per_example(predictions, references))
    per["exact_match"] = exact_match_per_example(predictions, references)
    per["bleu"] = bleu_per_example(predictions, references)
    per["chrf"] = chrf_per_example(predictions, references)
    agg = {key: float(np.mean(per[key])) for key in (*ROUGE_TYPES, "exact_match")}
    agg["bleu"] = bleu(predictions, references)
    agg["chrf"] = chrf(predictions, references)
    return agg, per
