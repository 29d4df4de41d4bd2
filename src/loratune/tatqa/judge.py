"""Verdicts on a model's TAT-QA answers: read its reply, compute its calculation, score it officially.

A reply that cannot be read (no answer line, a calculation that is not arithmetic, an unknown scale)
is a wrong answer, not a crash: its verdict scores 0 and carries the reason in `error`, so one bad
generation never stops an evaluation of thousands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loratune.errors import AnswerError
from loratune.tatqa.metric import Prediction, QuestionScore, score_question, summarize
from loratune.tatqa.render import ModelAnswer, number_text, parse_model_answer


@dataclass(frozen=True)
class Verdict:
    """One question's judgement: what the model answered and how the official metric scored it."""

    answer: ModelAnswer
    scale: str
    calculation: str | None
    score: QuestionScore
    error: str | None = None

    @property
    def em(self) -> float:
        return self.score.em

    @property
    def f1(self) -> float:
        return self.score.f1

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.score.uid, "answer": self.answer, "scale": self.scale, "em": self.em, "f1": self.f1,
                "calculation": self.calculation, "error": self.error}


def metric_prediction(answer: ModelAnswer) -> Prediction:
    """What the metric is given for an answer. A computed number goes as plain decimal text: the
    official scorer takes the number 0 for "no prediction" and reads str(1e-05) as 1."""
    return number_text(answer) if isinstance(answer, float) else answer


def judge_answer(question: dict[str, Any], reply: str) -> Verdict:
    """The verdict on one model reply to one TAT-QA question (a dict with the dataset's fields)."""
    try:
        answer, scale, calculation = parse_model_answer(reply)
    except AnswerError as exc:
        return Verdict("", "", None, score_question(question, "", ""), error=str(exc))
    return Verdict(answer, scale, calculation, score_question(question, metric_prediction(answer), scale))


def judge_answers(questions: list[dict[str, Any]], replies: list[str]) -> list[Verdict]:
    """Verdicts for replies given in the order of their questions."""
    if len(questions) != len(replies):
        raise AnswerError(f"judge: {len(questions)} questions but {len(replies)} replies; they must pair up in order")
    return [judge_answer(question, reply) for question, reply in zip(questions, replies)]


def summarize_verdicts(verdicts: list[Verdict]) -> dict[str, Any]:
    """Official EM, F1 and scale accuracy overall and by answer type and source, plus how many
    replies could not be read."""
    summary = summarize([verdict.score for verdict in verdicts])
    summary["unreadable"] = sum(verdict.error is not None for verdict in verdicts)
    return summary
