"""TAT-QA prompts, targets and the answer parser, checked on every dev-set question."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from shared_data import shared_file

from loratune.errors import AnswerError
from loratune.tatqa.calc import evaluate
from loratune.tatqa.judge import judge_answer
from loratune.tatqa.render import (
    INSTRUCTION,
    arithmetic_target,
    number_text,
    parse_model_answer,
    render_paragraphs,
    render_prompt,
    render_table,
    render_target,
    times_100,
)


def dev_questions() -> list[dict[str, Any]]:
    """Every dev-set question; a missing file fails under CI and skips elsewhere."""
    dev = shared_file("tat-qa/dev.json", "the TAT-QA dev set (NExTplusplus/TAT-QA dataset_raw/tatqa_dataset_dev.json)")
    return [q for context in json.loads(dev.read_text(encoding="utf-8")) for q in context["questions"]]


CONTEXT = {
    "table": {"uid": "t",
              "table": [["", "2019", "2018"], ["Revenue", "$1,496.5", "$1,202.9"], ["Cost", "(44.1)", "56.7"]]},
    "paragraphs": [{"uid": "b", "order": 2, "text": "Second paragraph."},
                   {"uid": "a", "order": 1, "text": " First paragraph. "}],
}


def test_prompt_layout() -> None:
    row = {**CONTEXT, "question": " What was revenue in 2019? "}
    assert render_prompt(row) == (
        f"{INSTRUCTION}\n"
        "Table:\n | 2019 | 2018\nRevenue | $1,496.5 | $1,202.9\nCost | (44.1) | 56.7\n"
        "Text:\nFirst paragraph.\nSecond paragraph.\n"
        "Question: What was revenue in 2019?\n"
    )


def test_table_as_rows_or_object_and_paragraph_order() -> None:
    assert render_table(CONTEXT["table"]) == render_table(CONTEXT["table"]["table"])
    paragraphs = [{"order": n, "text": f"p{n}"} for n in (3, 10, 1, 2)]
    assert render_paragraphs(paragraphs) == "p1\np2\np3\np10"  # numeric order, not text order
    with pytest.raises(ValueError, match="list of rows"):
        render_table({"uid": "t"})
    with pytest.raises(ValueError, match="order, text"):
        render_paragraphs([{"order": 1}])


@pytest.mark.parametrize(
    ("question", "target"),
    [
        ({"answer_type": "span", "answer": ["2019"], "scale": ""}, "answer: 2019\nscale: none"),
        ({"answer_type": "span", "answer": ["$1,496.5"], "scale": "million"}, "answer: $1,496.5\nscale: million"),
        ({"answer_type": "multi-span", "answer": ["fixed-price", "cost  plus"], "scale": ""},
         "answer: fixed-price | cost plus\nscale: none"),
        ({"answer_type": "count", "answer": "3", "scale": ""}, "answer: 3\nscale: none"),
        ({"answer_type": "arithmetic", "answer": -35, "derivation": "6 - 41", "scale": "million"},
         "calculation: 6 - 41\nscale: million"),
        ({"answer_type": "arithmetic", "answer": 16.85, "derivation": " (104-89)/89 ", "scale": "percent"},
         "calculation: (104-89)/89 * 100\nscale: percent"),
        ({"answer_type": "arithmetic", "answer": 88.06, "derivation": "126 / 67 - 1", "scale": "percent"},
         "calculation: (126 / 67 - 1) * 100\nscale: percent"),
        ({"answer_type": "arithmetic", "answer": 45, "derivation": "34% + 11%", "scale": "percent"},
         "calculation: 34% + 11%\nscale: percent"),
        ({"answer_type": "arithmetic", "answer": 92437, "derivation": "60.3 million + 32,137 thousand",
          "scale": "thousand"}, "calculation: 92437\nscale: thousand"),
    ],
)
def test_targets(question: dict[str, Any], target: str) -> None:
    assert render_target(question) == target


def test_bad_target_rows_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown answer_type"):
        render_target({"answer_type": "date", "answer": "x", "scale": ""})
    with pytest.raises(ValueError, match="non-blank span"):
        render_target({"answer_type": "span", "answer": [], "scale": ""})


def test_every_arithmetic_target_computes_the_gold_answer() -> None:
    """Coverage on the dev set: 717 of 718 derivations compute the gold answer (212 of them once a
    percent written as a fraction gets `* 100`); the one that cannot mixes scale words
    ("60.3 million + 32,137 thousand"), so its target is the gold number itself."""
    arithmetic = [q for q in dev_questions() if q["answer_type"] == "arithmetic"]
    sources = Counter()
    for question in arithmetic:
        calculation, source = arithmetic_target(question)
        sources[source] += 1
        value = evaluate(calculation, question["scale"])
        assert round(value, 2) == round(float(question["answer"]), 2), (question["uid"], calculation)
        if source == "gold number":
            assert "million" in question["derivation"] and "thousand" in question["derivation"]
    assert sources == {"derivation": 505, "derivation * 100": 212, "gold number": 1}
    assert sum(sources.values()) == len(arithmetic) == 718


def test_every_dev_target_scores_full_marks_through_the_judge() -> None:
    """Render -> parse -> compute -> official metric gives EM 1 for all 1,668 dev questions."""
    questions = dev_questions()
    verdicts = [judge_answer(question, render_target(question)) for question in questions]
    assert len(verdicts) == 1668
    assert [v.score.uid for v in verdicts if (v.em, v.f1, v.error) != (1.0, 1.0, None)] == []


def test_spans_round_trip() -> None:
    for question in dev_questions():
        if question["answer_type"] not in ("span", "multi-span"):
            continue
        answer, scale, calculation = parse_model_answer(render_target(question))
        spans = [" ".join(span.split()) for span in question["answer"] if span.strip()]
        assert answer == (spans[0] if len(spans) == 1 else spans)
        assert (scale, calculation) == (question["scale"], None)


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("answer: 2019\nscale: none", ("2019", "", None)),
        ("Answer: a | b |  c \nScale: Millions.", (["a", "b", "c"], "million", None)),
        ("Let me look.\n  answer: net sales\n", ("net sales", "", None)),
        ("calculation: 6 - 41\nscale: million\nanswer: ignored", (-35.0, "million", "6 - 41")),
        ("answer: 5\ncalculation: 2 + 2", ("5", "", None)),  # the first line decides
        ("calculation: 34% + 11%\nscale: %", (45.0, "percent", "34% + 11%")),
        ("calculation: 53% * 100\nscale: none", (53.0, "", "53% * 100")),
        ("answer:\nscale: none", ("", "", None)),
        ("answer: x\nscale: thousand\nscale: percent", ("x", "thousand", None)),
    ],
)
def test_parse_model_answer(reply: str, parsed: tuple) -> None:
    answer, scale, calculation = parse_model_answer(reply)
    assert (answer, scale, calculation) == (pytest.approx(parsed[0]) if isinstance(parsed[0], float) else parsed[0],
                                            parsed[1], parsed[2])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("The answer is 5.", "no 'answer:' or 'calculation:' line"),
        ("", "no 'answer:'"),
        ("answer: 5\nscale: dozens", "unknown scale 'dozens'"),
        ("calculation: 5 / 0", "division by zero"),
        ("calculation: import os", "unexpected"),
    ],
)
def test_parse_model_answer_errors(reply: str, message: str) -> None:
    with pytest.raises(AnswerError, match=message):
        parse_model_answer(reply)


def test_parser_never_raises_anything_but_answer_error() -> None:
    rng = random.Random(3)
    pieces = ["answer:", "calculation:", "scale:", "percent", "none", "1,234", "(", ")", "|", "%", "\n", " ", "x", "/0"]
    for _ in range(3000):
        reply = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        try:
            parse_model_answer(reply)
        except AnswerError:
            pass


def test_times_100_brackets_only_when_needed() -> None:
    assert times_100("(29-25)/25") == "(29-25)/25 * 100"
    assert times_100("(29-25)") == "(29-25) * 100"
    assert times_100("-12/3") == "-12/3 * 100"  # a sign, not a sum
    assert times_100("126 / 67 - 1") == "(126 / 67 - 1) * 100"
    assert times_100("[(4+4)/2] - [(2+3)/2]") == "([(4+4)/2] - [(2+3)/2]) * 100"
    assert times_100("2 * -3") == "2 * -3 * 100"
    assert times_100("1 ? 2") == "(1 ? 2) * 100"  # unreadable: bracketed, and the evaluation will say why


@pytest.mark.parametrize(("value", "text"), [(12.0, "12"), (-0.5, "-0.5"), (1e-05, "0.00001"), (0.0, "0"),
                                             (-0.0, "0"), (1e20, "100000000000000000000"), (16.85, "16.85")])
def test_number_text(value: float, text: str) -> None:
    assert number_text(value) == text
