"""Metric values against hand-computed numbers and against the reference packages."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from loratune.errors import LoratuneError
from loratune.evaluation.metrics import (
    TEXT_METRICS,
    bleu,
    bleu_per_example,
    chrf,
    chrf_per_example,
    exact_match,
    exact_match_per_example,
    headline_metric,
    normalize_text,
    paired_bootstrap,
    rouge_per_example,
    rouge_scores,
    text_metrics,
)

PREDS = ["the cat sat on the mat", "A quick brown fox jumped.", "SELECT name FROM users", "", "net margin was 12%"]
REFS = ["the cat is on the mat", "The quick brown fox jumps over the lazy dog.", "select name from users",
        "nothing", "Net margin was 12 % in 2020"]


def test_rouge_by_hand() -> None:
    # Reference: the cat sat on the mat (6 tokens); prediction: the cat on mat (4 tokens).
    # ROUGE-1: 4 unigrams match -> P = 4/4, R = 4/6, F = 2PR/(P+R) = 0.8.
    # ROUGE-2: "the cat" is the only shared bigram -> P = 1/3, R = 1/5, F = 0.25.
    # ROUGE-L: longest common subsequence "the cat on mat" = 4 -> same as ROUGE-1.
    scores = rouge_scores(["the cat on mat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(0.8)
    assert scores["rouge2"] == pytest.approx(0.25)
    assert scores["rougeL"] == pytest.approx(0.8)
    assert scores["rougeLsum"] == pytest.approx(0.8)  # one line: the same as ROUGE-L


def test_rouge_lsum_treats_lines_as_sentences() -> None:
    # Sentences swapped: the LCS over the whole text is 3 of 6 tokens (F = 0.5), but each
    # reference line is matched in full by some prediction line (F = 1).
    scores = rouge_scores(["d e f\na b c"], ["a b c\nd e f"])
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["rougeLsum"] == pytest.approx(1.0)


def test_rouge_stems_words() -> None:
    assert rouge_scores(["running"], ["run"])["rouge1"] == pytest.approx(1.0)
    plain = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False).score("run", "running")["rouge1"]
    assert plain.fmeasure == 0.0  # so the 1.0 above is the stemmer's doing


def test_rouge_equals_rouge_score_package() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(PREDS, REFS)]
    per = rouge_per_example(PREDS, REFS)
    means = rouge_scores(PREDS, REFS)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert per[key] == [d[key].fmeasure for d in direct]
        assert means[key] == pytest.approx(np.mean([d[key].fmeasure for d in direct]))
    assert per["rouge1"][3] == 0.0  # an empty prediction scores zero, it does not crash


def test_exact_match_normalises_case_and_whitespace() -> None:
    assert normalize_text("  SELECT\tname \n FROM  users ") == "select name from users"
    assert exact_match_per_example(PREDS, REFS) == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert exact_match(["Paris ", "berlin"], ["paris", "Rome"]) == 0.5
    assert exact_match(["a.b"], ["a b"]) == 0.0  # punctuation is kept: only case and spacing fold


def test_bleu_and_chrf_equal_sacrebleu() -> None:
    assert bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score / 100)
    assert chrf(PREDS, REFS) == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score / 100)
    assert bleu_per_example(PREDS, REFS) == pytest.approx(
        [sacrebleu.sentence_bleu(p, [r]).score / 100 for p, r in zip(PREDS, REFS)])
    assert chrf_per_example(PREDS, REFS) == pytest.approx(
        [sacrebleu.sentence_chrf(p, [r]).score / 100 for p, r in zip(PREDS, REFS)])
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert 0.0 < bleu(PREDS, REFS) < 1.0 and 0.0 < chrf(PREDS, REFS) < 1.0


def test_text_metrics_aggregates_and_per_example() -> None:
    agg, per = text_metrics(PREDS, REFS)
    assert set(agg) == set(per) == set(TEXT_METRICS)
    assert all(len(values) == len(PREDS) for values in per.values())
    assert agg["rougeL"] == pytest.approx(np.mean(per["rougeL"]))
    assert agg["exact_match"] == pytest.approx(0.2)
    # Corpus-level for the aggregate, sentence-level for the bootstrap lists.
    assert agg["bleu"] == pytest.approx(bleu(PREDS, REFS))
    assert agg["chrf"] == pytest.approx(chrf(PREDS, REFS))
    assert per["bleu"] == pytest.approx(bleu_per_example(PREDS, REFS))


def test_misaligned_or_empty_inputs_are_errors() -> None:
    with pytest.raises(LoratuneError, match="2 predictions but 1 references"):
        rouge_scores(["a", "b"], ["a"])
    with pytest.raises(LoratuneError, match="no predictions"):
        text_metrics([], [])
    with pytest.raises(LoratuneError, match="base has 3 scores and lora has 2"):
        paired_bootstrap([1, 0, 1], [1, 1])


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(123)
    base = rng.uniform(0.0, 0.6, size=80)
    lora = np.clip(base + rng.normal(0.1, 0.15, size=80), 0, 1)
    result = paired_bootstrap(list(base), list(lora), samples=500, seed=7)
    assert result["diff"] == pytest.approx(lora.mean() - base.mean())
    assert result["low"] < result["diff"] < result["high"]
    assert result["low"] > 0  # an improvement of ~0.1 with noise 0.15 over 80 examples is clear
    assert result["samples"] == 500
    assert paired_bootstrap(base, lora, samples=500, seed=7) == result  # reproducible
    other = paired_bootstrap(base, lora, samples=500, seed=8)
    assert (other["low"], other["high"]) != (result["low"], result["high"])
    assert other["diff"] == result["diff"]


def test_paired_bootstrap_uses_the_same_indices_for_both_sides() -> None:
    # A constant per-example difference survives any paired resample exactly; unpaired
    # resampling would spread it out.
    base = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] * 5
    lora = [b + 0.1 for b in base]
    result = paired_bootstrap(base, lora, samples=200, seed=0)
    assert result["low"] == pytest.approx(0.1) and result["high"] == pytest.approx(0.1)


def test_paired_bootstrap_percentiles_by_hand() -> None:
    # Recompute the interval the documented way: same seeded Generator, one index draw per sample.
    base, lora = [0, 1, 0, 1, 1], [1, 1, 1, 0, 1]
    result = paired_bootstrap(base, lora, samples=50, seed=3)
    idx = np.random.default_rng(3).integers(0, 5, size=(50, 5))
    means = (np.array(lora) - np.array(base))[idx].mean(axis=1)
    assert result["low"] == pytest.approx(np.percentile(means, 2.5))
    assert result["high"] == pytest.approx(np.percentile(means, 97.5))


@pytest.mark.parametrize("family, key", [("sql", "execution_accuracy"), ("tat-qa", "tatqa_em"),
                                         ("ectsum", "rougeL"), ("summary", "rougeL"), ("text", "rougeL"),
                                         ("qa", "rougeL"), ("chat", "rougeL")])
def test_headline_metric_of_a_task_family(family: str, key: str) -> None:
    assert headline_metric(family) == key


def test_headline_metric_read_off_scores() -> None:
    sql = {"rougeL": 0.5, "execution_accuracy": 0.4, "execution_accuracy_real_db": None}
    assert headline_metric(sql) == "execution_accuracy"
    assert headline_metric({**sql, "execution_accuracy_real_db": 0.6}) == "execution_accuracy_real_db"
    assert headline_metric({"rougeL": 0.3, "tatqa_em": 0.1, "tatqa_f1": 0.2}) == "tatqa_em"
    assert headline_metric({"rougeL": 0.3, "num_precision": 0.9}) == "rougeL"
    # a whole metrics.json: both variants read, its other keys ignored
    whole = {"n": 3, "task": "sql-create-context", "base": sql, "lora": {**sql, "execution_accuracy_real_db": 0.7}}
    assert headline_metric(whole) == "execution_accuracy_real_db"


def test_headline_metric_errors_name_what_is_missing() -> None:
    with pytest.raises(LoratuneError, match="unknown task family 'poetry'.*sql, tat-qa"):
        headline_metric("poetry")
    with pytest.raises(LoratuneError, match=r"none of execution_accuracy_real_db.*\(keys: bleu\)"):
        headline_metric({"bleu": 0.2})
