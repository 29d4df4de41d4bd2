"""The TAT-QA judge: hybrid table + text financial questions (NExTplusplus/TAT-QA).

- `calc`: the safe arithmetic that computes the calculations a model writes;
- `metric`: the official TAT-QA exact match and F1, per question and summarised;
- `render`: the prompt a model reads, the target it learns, and the parser for its reply;
- `judge`: per-question verdicts on a model's replies, and their breakdowns.
"""

from __future__ import annotations

from loratune.tatqa.calc import evaluate
from loratune.tatqa.judge import Verdict, judge_answer, judge_answers, summarize_verdicts
from loratune.tatqa.metric import QuestionScore, score, score_question, summarize
from loratune.tatqa.render import parse_model_answer, render_prompt, render_target

__all__ = ["QuestionScore", "Verdict", "evaluate", "judge_answer", "judge_answers", "parse_model_answer",
           "render_prompt", "render_target", "score", "score_question", "summarize", "summarize_verdicts"]
