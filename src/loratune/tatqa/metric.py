"""TAT-QA's official exact match and F1, written for loratune.

Scores must be comparable with published TAT-QA numbers, so this module computes exactly what the
official scorer (`tatqa_metric.py`, `tatqa_utils.py`, `tatqa_eval.py`) computes, quirks included;
`tests/test_tatqa_metric.py` checks per-question agreement with a vendored copy of it. In short:
- every answer, gold or predicted, becomes ONE string: its spans sorted (as raw strings) and joined;
  each span that reads as a number is replaced by `round(number, 2) * scale` written with 4
  decimals ("1,496.5" in millions -> "1496500000.0000"; a span with a `%` keeps its own value),
  each other span gets the scale word appended;
- a prediction with no scale that is one number is also tried unscaled, so 0.2212 matches
  "22.12 percent"; the better (EM, F1) pair counts;
- EM compares the normalised strings (lower case, no punctuation or articles, numbers canonical),
  F1 their token sets; arithmetic and count questions get F1 = EM;
- an empty or falsy prediction ("", [], None, and also the number 0) scores 0.

The official code aligns bags of spans with scipy's linear_sum_assignment. Through `score` both
sides are always one string (one bag), so the alignment is trivial; `em_f1` still accepts lists
and aligns them with an exact search of its own, so scipy is not needed.

Follows tatqa_metric.py and tatqa_utils.py of https://github.com/NExTplusplus/TAT-QA
(MIT licence, Copyright (c) 2021 Fengbin Zhu).
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Any

from loratune.errors import AnswerError

Prediction = str | float | int | list[str] | None
SCALES = ("", "thousand", "million", "billion", "percent")
ANSWER_TYPES = ("span", "multi-span", "arithmetic", "count")

_SCALE_FACTORS = (("hundred", 100), ("thousand", 1000), ("million", 1000000), ("billion", 1000000000),
                  ("percent", 0.01))
_NUMBER_NOISE = frozenset("'\"\\$€£¥%(),[]")
_FIRST_NUMBER = re.compile(r"([+-]?\d+(\.\d+)?)|([+-]?\.\d+)")
_ACCOUNTING_NEGATIVE = re.compile(r"(\([\d.\s]+\))")
_PERCENT = re.compile(r"([\d.\s]+%)")
_NUMBER_WITH_WORD = re.compile(r"([\d.]+\s?[a-zA-Z]+)")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------- numbers (tatqa_utils.py)


def scale_factor(scale: str) -> float:
    """What one unit of a scale word is worth; unknown words (and "") are 1."""
    scale = scale.lower()
    for word, factor in _SCALE_FACTORS:
        if word in scale:
            return factor
    return 1


def _without_number_noise(text: str) -> str:
    return "".join(char for char in str(text) if char not in _NUMBER_NOISE)


def _first_number(text: str) -> float | None:
    # An int stays an int, so "1234" normalises to "1234" and "1234.0" to "1234.0", as officially.
    match = _FIRST_NUMBER.search(_without_number_noise(text))
    if match is None or match.group(1) is None:
        return None
    number = match.group(1)
    return float(number) if "." in number else int(number)


def is_number(text: str) -> bool:
    """Whether the official scorer reads `text` as a number: its first word parses as a float and a
    second word, if any, is a scale word ("12 million" is a number, "1023 or 1" is not)."""
    words = " ".join(_without_number_noise(word) for word in text.split()).split()
    if not words:
        return False
    try:
        value = float(words[0])
    except ValueError:
        return False
    if math.isnan(value):
        return False
    return len(words) < 2 or scale_factor(words[1]) != 1


def _word_scale(text: str) -> float:
    match = _NUMBER_WITH_WORD.search(text)
    return scale_factor(match.group(0).lower()) if match else 1


def to_number(text: str) -> float | None:
    """The value of a number as written: "(12)" is -12, "12%" is 0.12, "1.5 million" is 1,500,000.

    Only parentheses around bare digits negate, so "(1,234)" reads as +1234 (official behaviour).
    """
    number = _first_number(text)
    scale = _word_scale(text)
    negative = -1 if _ACCOUNTING_NEGATIVE.findall(text.strip()) else 1
    percent = 0.01 if _PERCENT.findall(text.strip()) else 1
    if number is None:
        return None
    return round(number * scale * negative * percent, 4)


# ---------------------------------------------------------------- normalisation


def _normalize_token(token: str) -> str:
    token = token.lower()
    if not is_number(token):
        token = "".join(char for char in token if char not in _PUNCTUATION)
    if is_number(token):
        token = str(to_number(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation (except inside numbers) and articles, write numbers canonically."""
    parts = [_normalize_token(token) for token in text.split(" ")]
    return " ".join(part for part in parts if part.strip()).strip()


def _scaled_span(text: str, scale: str) -> str:
    if is_number(text):
        number = to_number(text)
        if number is None:
            return f"{text} {scale}" if scale else text
        if "%" in text:  # the span carries its own percent sign: its value is already a fraction
            return f"{number:.4f}"
        return f"{round(number, 2) * scale_factor(scale):.4f}"
    return f"{text} {scale}" if scale else text


def answer_text(answers: list[Any], scale: str) -> str:
    """One answer (all its spans) as the single string the official scorer compares."""
    return " ".join(_scaled_span(str(answer), scale) for answer in sorted(answers))


def _prediction_texts(prediction: list[Any], scale: str) -> list[str]:
    texts = [answer_text(prediction, scale)]
    if len(prediction) > 1:
        return texts
    first = str(prediction[0])
    if not scale and "%" not in first and is_number(first):
        number = to_number(first)
        if number is not None:  # a bare fraction may be a percent answer: 0.2212 = 22.12 percent
            texts.append(f"{number:.4f}")
    return texts


# ---------------------------------------------------------------- EM and F1 of two strings


def _bags(answer: str | list[str]) -> tuple[list[str], list[set[str]]]:
    spans = [normalize_answer(span) for span in (answer if isinstance(answer, list) else [answer])]
    return spans, [set(span.split()) for span in spans]


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    overlap = len(gold & predicted)
    precision = overlap / float(len(predicted)) if predicted else 1.0
    recall = overlap / float(len(gold)) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return (2 * precision * recall) / (precision + recall)


def _best_total(scores: list[list[float]]) -> float:
    """The largest sum of a one-to-one matching in a score matrix (what linear_sum_assignment
    maximises), by dynamic programming over subsets of the smaller side: exact, and fast for the
    handful of spans an answer has."""
    if len(scores) < len(scores[0]):
        scores = [list(column) for column in zip(*scores)]
    width = len(scores[0])
    if width > 16:
        raise ValueError(f"em_f1: {width} spans on each side is more than the exact alignment handles")
    best = {0: 0.0}
    for row in scores:
        following = dict(best)
        for used, total in best.items():
            for column, value in enumerate(row):
                if not used >> column & 1:
                    key = used | 1 << column
                    following[key] = max(following.get(key, 0.0), total + value)
        best = following
    return max(best.values())


def _round2(value: float) -> float:
    # The official rounds a numpy float: numpy scales by 100, rounds half to even, and unscales,
    # which differs from Python's round(value, 2) on some ties.
    return round(value * 100) / 100


def em_f1(predicted: str | list[str], gold: str | list[str]) -> tuple[float, float]:
    """Exact match and bag-of-tokens F1 (rounded to 2 decimals) of two answers (official `get_metrics`)."""
    predicted_spans, predicted_bags = _bags(predicted)
    gold_spans, gold_bags = _bags(gold)
    same = set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
    scores = [[_bag_f1(p, g) for p in predicted_bags] for g in gold_bags]
    f1 = _best_total(scores) / max(len(gold_bags), len(predicted_bags))
    return (1.0 if same else 0.0), _round2(f1)


# ---------------------------------------------------------------- one question


def gold_answers(question: dict[str, Any]) -> list[Any]:
    """The gold answer as a list of spans (official `extract_gold_answers`)."""
    answer_type, answer = question["answer_type"], question["answer"]
    if answer_type in ("span", "multi-span"):
        if not isinstance(answer, list):
            raise AnswerError(f"question {question.get('uid', '?')}: a {answer_type} answer must be a list, "
                              f"got {answer!r}")
        return answer
    if answer_type == "count":
        return [str(int(answer))]
    return [str(answer)]


@dataclass(frozen=True)
class QuestionScore:
    """One question's official scores plus what the breakdowns group by."""

    uid: str
    answer_type: str
    answer_from: str
    gold_scale: str
    predicted_scale: str
    answered: bool
    """A non-empty prediction for a non-empty gold: only these count towards the scale score."""
    em: float
    f1: float

    @property
    def scale_right(self) -> bool:
        return self.predicted_scale == self.gold_scale


def _em_f1_of(question: dict[str, Any], gold: list[Any], prediction: Prediction, scale: str) -> tuple[float, float]:
    predictions = prediction if isinstance(prediction, list) else [prediction]
    gold_text = answer_text(gold, question["scale"])
    em, f1 = max(em_f1(text, gold_text) for text in _prediction_texts(predictions, scale))
    if question["answer_type"] in ("arithmetic", "count"):
        f1 = em  # a number is right or wrong; shared digits earn nothing
    return em, f1


def score_question(question: dict[str, Any], prediction: Prediction, prediction_scale: str) -> QuestionScore:
    """Score one prediction against a TAT-QA question dict (as in the dataset's JSON)."""
    gold = gold_answers(question) if prediction else []
    answered = bool(prediction) and bool(gold)
    em, f1 = _em_f1_of(question, gold, prediction, prediction_scale) if answered else (0.0, 0.0)
    return QuestionScore(str(question.get("uid", "")), question["answer_type"], question.get("answer_from", ""),
                         question["scale"], prediction_scale, answered, em, f1)


def score(question: dict[str, Any], prediction: Prediction, prediction_scale: str) -> tuple[float, float]:
    """(EM, F1) of one prediction: `prediction` is a span, a list of spans or a number; `prediction_scale`
    one of SCALES."""
    result = score_question(question, prediction, prediction_scale)
    return result.em, result.f1


# ---------------------------------------------------------------- many questions


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0


def _group(scores: list[QuestionScore], key: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[QuestionScore]] = {}
    for item in scores:
        groups.setdefault(getattr(item, key), []).append(item)
    return {name: {"em": _mean([s.em for s in group]), "f1": _mean([s.f1 for s in group]), "count": len(group)}
            for name, group in sorted(groups.items())}


def _table(scores: list[QuestionScore], metric: str) -> dict[str, dict[str, float]]:
    # The official pivot table: answer_type x answer_from means, with 0 where no question falls.
    types = sorted({s.answer_type for s in scores})
    sources = sorted({s.answer_from for s in scores})
    return {kind: {source: _mean([getattr(s, metric) for s in scores
                                  if s.answer_type == kind and s.answer_from == source]) for source in sources}
            for kind in types}


def _scale_by_gold(scores: list[QuestionScore]) -> dict[str, float]:
    accuracy = {}
    for scale in SCALES:
        group = [s for s in scores if s.gold_scale == scale]
        accuracy[scale] = sum(s.scale_right for s in group) / len(group) if group else 0
    return accuracy


def summarize(scores: list[QuestionScore]) -> dict[str, Any]:
    """Overall EM, F1 and scale accuracy (official `get_overall_metric`), the answer_type x answer_from
    tables (`get_detail_metric`), and the per-group means and scale accuracy by gold scale."""
    count = len(scores)
    return {
        "count": count,
        "em": _mean([s.em for s in scores]),
        "f1": _mean([s.f1 for s in scores]),
        "scale": sum(s.answered and s.scale_right for s in scores) / count if count else 0,
        "by_answer_type": _group(scores, "answer_type"),
        "by_answer_from": _group(scores, "answer_from"),
        "table": {"em": _table(scores, "em"), "f1": _table(scores, "f1")},
        "scale_by_gold": _scale_by_gold(scores),
    }
