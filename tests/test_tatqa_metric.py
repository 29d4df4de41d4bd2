"""THE AGREEMENT TEST: loratune's TAT-QA metric against the official scorer, question by question.

The official `tatqa_metric.py` and `tatqa_utils.py` are vendored unchanged (MIT) under
tests/reference/tatqa/. Predictions are built from every dev-set question with seeded
perturbations (exact gold, rounded numbers, wrong scale, percent as a fraction, missing, extra and
reordered spans, casing, punctuation, articles, negatives in parentheses, ...) plus hand-made hard
cases; both scorers must give identical EM and F1 for each, and the same summaries.
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shared_data import shared_file

from loratune.errors import AnswerError
from loratune.tatqa.judge import judge_answer, metric_prediction
from loratune.tatqa.metric import SCALES, _round2, em_f1, score, score_question, summarize
from loratune.tatqa.render import parse_model_answer, render_target

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference" / "tatqa"))
with warnings.catch_warnings():  # the official regexes are not raw strings: invalid-escape warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    import tatqa_metric as official  # needs numpy, pandas, scipy: `pip install -e .[dev]`



def dev_contexts() -> list[dict[str, Any]]:
    """The official TAT-QA dev set; a missing file fails under CI and skips elsewhere."""
    return json.loads(shared_file("tat-qa/dev.json", "the TAT-QA dev set (NExTplusplus/TAT-QA dataset_raw/tatqa_dataset_dev.json)").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- seeded perturbations

Made = tuple[Any, str]  # (prediction, predicted scale)


def _number(question: dict[str, Any]) -> float | None:
    answer = question["answer"]
    if question["answer_type"] in ("arithmetic", "count"):
        return float(answer)
    text = answer[0] if len(answer) == 1 else ""
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def _other_scale(question: dict[str, Any], rng: random.Random) -> str:
    return rng.choice([scale for scale in SCALES if scale != question["scale"]])


def _natural(question: dict[str, Any]) -> Any:
    answer = question["answer"]
    return list(answer) if isinstance(answer, list) else answer


def _spans(question: dict[str, Any]) -> list[str]:
    return [str(span) for span in question["answer"]] if isinstance(question["answer"], list) else []


def _words(context: dict[str, Any], rng: random.Random, count: int) -> str:
    words = " ".join(p["text"] for p in context["paragraphs"]).split()
    return " ".join(rng.choice(words) for _ in range(count)) if words else "nothing"


def _cell(context: dict[str, Any], rng: random.Random) -> str:
    cells = [cell for row in context["table"]["table"] for cell in row if cell.strip()]
    return rng.choice(cells) if cells else "cell"


def _judged(question: dict[str, Any], reply: str) -> Made:
    answer, scale, _ = parse_model_answer(reply)
    return metric_prediction(answer), scale


def _any_kind(question: dict[str, Any], context: dict[str, Any], rng: random.Random) -> dict[str, Made]:
    gold, scale = _natural(question), question["scale"]
    made = {
        "exact": (gold, scale),
        "wrong scale": (gold, _other_scale(question, rng)),
        "no scale": (gold, ""),
        "judged target": _judged(question, render_target(question)),
        "random words": (_words(context, rng, rng.randint(1, 6)), scale),
        "table cell": (_cell(context, rng), rng.choice(SCALES)),
        "empty": (rng.choice(["", [], None]), scale),
    }
    if question["answer_type"] in ("arithmetic", "count"):
        made["as text"] = (str(question["answer"]), scale)
    return made


def _numeric_kinds(question: dict[str, Any], rng: random.Random) -> dict[str, Made]:
    value, scale = _number(question), question["scale"]
    if value is None:
        return {}
    made = {
        "rounded to 1": (round(value, 1), scale),
        "rounded to 0": (str(round(value)), scale),
        "near": (value + rng.choice([0.004, -0.004, 0.005, -0.005, 0.0049, 0.006, -0.006]), scale),
        "wrong number": (value * rng.uniform(1.01, 2.0) + rng.choice([0, 1, 7]), scale),
        "negated": (-value, scale),
        "parenthesised": (f"({abs(value)})", scale),
        "parenthesised commas": (f"({abs(value):,})", scale),
        "dollar commas": (f"${value:,}", scale),
        "unscaled": (value * official.scale_to_num(scale), ""),
        "zero": (rng.choice([0.0, "0", 0]), scale),
        "judged calculation": _judged(question, f"calculation: {value} + 0\nscale: {scale or 'none'}"),
    }
    if scale == "percent":
        made["fraction, no scale"] = (value / 100, "")
        made["fraction, percent"] = (value / 100, "percent")
        made["percent sign, no scale"] = (f"{value}%", "")
        made["percent sign, percent"] = (f"{value}%", "percent")
        made["fraction text"] = (str(round(value / 100, rng.choice([2, 4, 6]))), "")
    return made


def _span_kinds(question: dict[str, Any], context: dict[str, Any], rng: random.Random) -> dict[str, Made]:
    spans, scale = _spans(question), question["scale"]
    if not spans:
        return {}
    one = rng.randrange(len(spans))
    made = {
        "casing": ([rng.choice([s.upper(), s.swapcase(), s.title()]) for s in spans], scale),
        "punctuation": ([s + rng.choice([".", ",", "!", " ."]) for s in spans], scale),
        "no punctuation": ([s.replace(",", "").replace("$", "").replace(".", "") for s in spans], scale),
        "articles": ([rng.choice(["the ", "a ", "an ", "The "]) + s for s in spans], scale),
        "whitespace": (["  ".join(s.split()) for s in spans], scale),
        "truncated": ([" ".join(s.split()[: max(1, len(s.split()) // 2)]) for s in spans], scale),
        "extra words": ([s + " " + _words(context, rng, 2) for s in spans], scale),
        "as one string": (", ".join(spans), scale),
        "one span cased": ([s.upper() if i == one else s for i, s in enumerate(spans)], scale),
        "judged noisy reply": _judged(question, "Sure.\nanswer: " + " | ".join(spans) + f"\nscale: {scale or 'none'}"),
    }
    if len(spans) > 1:
        made["missing span"] = ([s for i, s in enumerate(spans) if i != one], scale)
        made["extra span"] = (spans + [_cell(context, rng)], scale)
        made["reordered"] = (rng.sample(spans, len(spans)), scale)
        made["duplicated span"] = (spans + [spans[one]], scale)
    return made


def perturbed_predictions(contexts: list[dict[str, Any]], seed: int = 0, per_question: int = 6
                          ) -> list[tuple[str, dict, Any, str]]:
    """(kind, question, prediction, scale): for every dev question, the exact gold and a seeded
    choice of `per_question` of the kinds that apply to it (all of them: ~35,000 predictions, ~20 s)."""
    rng = random.Random(seed)
    made = []
    for context in contexts:
        for question in context["questions"]:
            kinds = {**_any_kind(question, context, rng), **_numeric_kinds(question, rng),
                     **_span_kinds(question, context, rng)}
            chosen = ["exact"] + rng.sample(sorted(set(kinds) - {"exact"}), min(per_question, len(kinds) - 1))
            made.extend((kind, question, *kinds[kind]) for kind in chosen)
    return made


def official_score(metrics: Any, question: dict[str, Any], prediction: Any, scale: str) -> tuple[float, float]:
    metrics(ground_truth=question, prediction=prediction, pred_scale=scale)
    detail = metrics.get_raw()[-1]
    return float(detail["em"]), float(detail["f1"])


# ---------------------------------------------------------------- the agreement


def test_agreement_on_perturbed_dev_predictions() -> None:
    predictions = perturbed_predictions(dev_contexts())
    assert len(predictions) >= 500
    metrics = official.TaTQAEmAndF1()
    ours, disagreements = [], []
    for kind, question, prediction, scale in predictions:
        expected = official_score(metrics, question, prediction, scale)
        result = score_question(question, prediction, scale)
        ours.append(result)
        if (result.em, result.f1) != expected:
            disagreements.append((kind, question["uid"], prediction, scale, (result.em, result.f1), expected))
    assert disagreements == [], f"{len(disagreements)} of {len(predictions)} disagree, e.g. {disagreements[:5]}"
    kinds = Counter(kind for kind, *_ in predictions)
    assert len(kinds) >= 30 and min(kinds.values()) >= 20, kinds
    # The perturbations reach every outcome: right, wrong, and partly right spans.
    outcomes = Counter((s.em, s.f1 > s.em) for s in ours)
    assert outcomes[(1.0, False)] > 1000 and outcomes[(0.0, False)] > 1000 and outcomes[(0.0, True)] > 500
    _assert_same_summaries(metrics, summarize(ours))


def _assert_same_summaries(metrics: Any, summary: dict[str, Any]) -> None:
    em, f1, scale, _ = metrics.get_overall_metric()
    assert (summary["em"], summary["f1"], summary["scale"]) == (em, f1, scale)
    em_table, f1_table = metrics.get_detail_metric()
    for name, table in (("em", em_table), ("f1", f1_table)):
        theirs = {(kind, source): float(table.loc[kind, (name, source)])
                  for kind in table.index for source in table.columns.levels[1]}
        mine = {(kind, source): value for kind, row in summary["table"][name].items() for source, value in row.items()}
        assert mine == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    theirs_scale = {k: metrics.scale_correct_count[k] / metrics.scale_total_count[k] if metrics.scale_total_count[k]
                    else 0 for k in SCALES}
    assert summary["scale_by_gold"] == theirs_scale


# ---------------------------------------------------------------- hand-made hard cases


def _q(answer_type: str, answer: Any, scale: str = "", answer_from: str = "table") -> dict[str, Any]:
    return {"uid": "hand", "answer_type": answer_type, "answer": answer, "scale": scale, "answer_from": answer_from}


# (question, prediction, predicted scale, EM, F1): the official test file's cases, then our own.
HARD_CASES = [
    (_q("span", ["here is, a test"]), "here is, a test", "", 1, 1),
    (_q("span", ["1234.1"], "million"), "1234.1", "thousand", 0, 0),
    (_q("span", ["12314.1"], "million"), "12314.1", "million", 1, 1),
    (_q("multi-span", ["singapore", "china", "usa"]), ["china", "singapore", "usa"], "", 1, 1),
    (_q("multi-span", ["singapore", "china", "usa"]), ["china", "singapore"], "", 0, 0.8),
    (_q("arithmetic", 123.2, "million"), 123.2, "", 0, 0),
    (_q("arithmetic", 123.2, "million"), 123200000, "", 1, 1),
    (_q("arithmetic", 123.22), 123.2, "", 0, 0),
    (_q("arithmetic", 123.2), 123.2010, "", 1, 1),
    (_q("arithmetic", 22.12, "percent"), 0.2212, "", 1, 1),
    (_q("arithmetic", 22.12, "percent"), 0.22121, "percent", 0, 0),
    (_q("arithmetic", 22.12, "percent"), 22.1231, "percent", 1, 1),
    (_q("span", [22.12], "percent"), "22.12%", "", 1, 1),
    (_q("span", [22.12]), "22.12%", "", 0, 0),
    (_q("span", [22.12], "million"), "$22.12", "", 0, 0),
    (_q("span", ["$1.0 million"]), ["['$1.0 million']"], "", 1, 1),
    (_q("count", 5), "abcd 5", "1", 0, 0),
    (_q("multi-span", ["$23,234", "$234.12"]), ["234.12", "23,234"], "", 1, 1),
    (_q("arithmetic", ["34.12"], "percent"), ["0.3412"], "", 1, 1),
    (_q("span", [("wages and salaries, social security costs, pension and other costs and share-based payments, "
                  "see note 10 of the Financial Statements")]),
     ["wages and salaries, social security costs, pension and other costs and share - based payments,"], "", 0, 0.67),
    # our own
    (_q("multi-span", ["apple", "Banana"]), ["Apple", "banana"], "", 0, 1),  # spans sort as raw text: case first
    (_q("span", ["(1,234)"], "thousand"), "-1234", "thousand", 0, 0),  # "(1,234)" reads as +1234 officially
    (_q("span", ["(1,234)"], "thousand"), "1234", "thousand", 1, 1),
    (_q("span", ["(123)"]), "-123", "", 1, 1),
    (_q("arithmetic", -35, "million"), "(35)", "million", 1, 1),
    (_q("arithmetic", -1581, "million"), "(1,581)", "million", 0, 0),
    (_q("arithmetic", 0, "percent"), 0.0, "percent", 0, 0),  # the number 0 is "no prediction"
    (_q("arithmetic", 0, "percent"), "0", "percent", 1, 1),
    (_q("arithmetic", 0), "-0", "", 1, 1),
    (_q("arithmetic", 0), "-0.0", "", 0, 0),  # "-0.0000" normalises to "-0.0"
    (_q("arithmetic", 1), 1e-05, "", 1, 1),  # str(1e-05) reads as 1
    (_q("arithmetic", 5), "inf", "", 0, 0),
    (_q("arithmetic", 5), "nan", "", 0, 0),
    (_q("count", "2"), "٢", "", 1, 1),  # other scripts' digits are numbers officially
    (_q("arithmetic", 500), "5 hundred", "", 1, 1),
    (_q("span", ["the"]), "a", "", 1, 1),  # both normalise to nothing
    (_q("span", ["x"]), "...", "", 0, 0),
    (_q("span", ["total sales"]), "total\nsales", "", 1, 1),
    (_q("multi-span", ["a1", "b1"]), ["a1", "a1", "b1"], "", 0, 1),
    (_q("multi-span", ["$35,120", "$24,159"], "thousand"), ["24159", "35120"], "thousand", 1, 1),
    (_q("span", ["22.12"], "million"), "22120", "thousand", 1, 1),  # the same amount in other units
    (_q("arithmetic", 1136.66, "percent"), 11.3666, "", 1, 1),
    (_q("arithmetic", 16.36, "percent"), 16.364999, "percent", 1, 1),
    (_q("arithmetic", 16.36, "percent"), 16.3651, "percent", 0, 0),
    (_q("count", "3"), "three", "", 0, 0),
    (_q("count", "3"), 3.004, "", 1, 1),
    (_q("count", "3"), 3.4, "", 0, 0),
    (_q("span", ["2019 and 2018"]), "2018 and 2019", "", 0, 1),
    (_q("span", ["revenue"], "million"), "revenue", "", 0, 0.67),
    (_q("span", ["12%"]), "12 percent", "", 1, 1),
    (_q("arithmetic", 4277, "million"), "4,277", "million", 1, 1),
    (_q("span", ["company’s revenue"]), "company's revenue", "", 0, 0.5),  # ’ is not ASCII punctuation
    (_q("arithmetic", 5), "1" + "0" * 30, "", 0, 0),
    (_q("arithmetic", 1000), "1 000", "", 0, 0),
    (_q("span", ["x"]), "", "", 0, 0),
    (_q("span", ["x"]), [], "", 0, 0),
    (_q("span", ["x"]), None, "", 0, 0),
]


@pytest.mark.parametrize(("question", "prediction", "scale", "em", "f1"), HARD_CASES)
def test_hard_cases(question: dict, prediction: Any, scale: str, em: float, f1: float) -> None:
    metrics = official.TaTQAEmAndF1()
    assert official_score(metrics, question, prediction, scale) == (em, f1)  # our reading of the official
    assert score(question, prediction, scale) == (em, f1)


def test_enough_hard_cases() -> None:
    assert len(HARD_CASES) >= 50


def test_summary_of_hand_cases_matches_official() -> None:
    metrics = official.TaTQAEmAndF1()
    ours = []
    for question, prediction, scale, *_ in HARD_CASES:
        official_score(metrics, question, prediction, scale)
        ours.append(score_question(question, prediction, scale))
    _assert_same_summaries(metrics, summarize(ours))


# ---------------------------------------------------------------- the pieces


def test_round2_is_numpys_rounding() -> None:
    values = [(2 * p * r) / (p + r) for p in (i / 37 for i in range(1, 38)) for r in (j / 23 for j in range(1, 24))]
    values += [k / 1000 + 0.005 for k in range(1000)] + [0.125, 0.135, 0.145, 1.005, 2.675]
    assert [_round2(v) for v in values] == [float(round(np.float64(v), 2)) for v in values]


def test_em_f1_on_span_lists_matches_official_alignment() -> None:
    rng = random.Random(7)
    vocabulary = ["net", "sales", "2019", "2018", "total", "cost", "$1,234", "12%", "the", "revenue", "(5)"]
    for _ in range(800):
        predicted = [" ".join(rng.sample(vocabulary, rng.randint(1, 3))) for _ in range(rng.randint(1, 4))]
        gold = [" ".join(rng.sample(vocabulary, rng.randint(1, 3))) for _ in range(rng.randint(1, 4))]
        theirs = official.get_metrics(predicted, gold)
        assert em_f1(predicted, gold) == (float(theirs[0]), float(theirs[1])), (predicted, gold)


def test_judge_scores_a_reply() -> None:
    question = _q("arithmetic", 16.85, "percent")
    verdict = judge_answer(question, "calculation: (104 - 89) / 89 * 100\nscale: percent")
    assert verdict.as_dict() == {"uid": "hand", "answer": pytest.approx(16.853932584), "scale": "percent", "em": 1.0,
                                 "f1": 1.0, "calculation": "(104 - 89) / 89 * 100", "error": None}
    wrong = judge_answer(question, "calculation: (104 - 89) / 89\nscale: percent")
    assert (wrong.em, wrong.f1, wrong.error) == (0.0, 0.0, None)
    unreadable = judge_answer(question, "calculation: 15 / (89 - 89)\nscale: percent")
    assert (unreadable.em, unreadable.answer) == (0.0, "") and "division by zero" in unreadable.error


def test_gold_span_must_be_a_list() -> None:
    with pytest.raises(AnswerError, match="must be a list"):
        score(_q("span", "not a list"), "x", "")


def test_reference_is_the_vendored_official_code() -> None:
    source = Path(official.__file__).read_text(encoding="utf-8")
    assert "MIT License" in source and "github.com/NExTplusplus/TAT-QA" in source
    assert "def get_answer_str" in source and "linear_sum_assignment" in source
