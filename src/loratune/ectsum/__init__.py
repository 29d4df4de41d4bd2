"""ECTSum (rajdeep345/ECTSum): earnings-call transcripts summarised as Reuters-style bullets.

- `select`: the cheap extractive step that chooses what of a ~2,800-word transcript the model reads;
- `numeric`: ECTSum's numeric precision, the share of a summary's numbers that the transcript or
  the reference supports.
"""

from __future__ import annotations

from loratune.ectsum.numeric import extract_numbers, mean_numeric_precision, numeric_precision
from loratune.ectsum.select import BUDGET_WORDS, lead_words, select_sentences

__all__ = ["BUDGET_WORDS", "extract_numbers", "lead_words", "mean_numeric_precision", "numeric_precision",
           "select_sentences"]
