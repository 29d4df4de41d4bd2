"""ECTSum's numeric precision: ECTSum's number extraction (its normalisation's placeholders and quirks
included), the per-summary score and the aggregate, on hand-written strings with hand-computed
values, then on the real val rows (read from ../shared, never copied into the repository).

loratune's extraction was also run beside ECTSum's own `utils.py` (GPL-3.0, so not kept here) on
every line of ECTSum's test and val transcripts and summaries (97,505 lines, the same output on
each) and on the four sets of ECT-BPS summaries in its repository, where it gives the Num-Prec of
its results files (0.910, 0.916, 0.885, 0.89).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import shared_file

from loratune.ectsum.numeric import extract_numbers, mean_numeric_precision, normalize_line, numeric_precision

ECTSUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ectsum"


@pytest.mark.parametrize("text, numbers", [
    ("Revenue was $1.5 billion, up 7.5%.", {"1.5", "7.5"}),
    ("EPS of $1.10 vs 1.1.", {"1.10", "1.1"}),  # compared as written
    ("We shipped 1,234,567 units.", {"1,234", "567"}),  # one comma group a number
    ("About 3/4 of sales.", {"3/4"}),
    ("As of March 31, 2021 we had cash of 40 million.", {"40"}),  # a date and a year are not values
    ("On August 5 we paid 3 dollars.", {"5", "3"}),  # August is not among ECTSum's months
    ("Dial 1-800-555-0199 to join.", set()),
    ("The call starts at 10:30 a.m. Eastern.", set()),
    ("See our 10-K and the 5-year plan.", set()),
    ("COVID-19 cost us 12 cents.", {"12"}),
    ("Turning to slide 12, margin was 31%.", {"31"}),
    ("Use passcode 12345 to listen.", set()),
    ("Fiscal '21 was strong; FY22 looks better.", set()),
    ("Our 2nd quarter, q12 and q1.", set()),
    ("Sales of $1.5b.", {"1"}),  # "5b" is a number glued to a letter
    ("In 2020 sales were 2,020.", {"2,020"}),
    ("", set()),
])
def test_numbers_are_extracted_as_ectsum_extracts_them(text: str, numbers: set[str]) -> None:
    assert extract_numbers(text) == numbers


def test_placeholders_replace_what_is_not_a_value() -> None:
    assert normalize_line("In Q1 2021, call 1-800-555-0199 at 10:30 a.m.") == "In [TXT-NUM] [YEAR], call [PHONENUM] at [TIME]"


def test_each_line_is_normalised_on_its_own() -> None:
    # A phone-number pattern must not join digits across lines: ten digits over two lines stay two numbers.
    assert extract_numbers("sales 123 456\n7890 units") == {"123", "456", "7890"}
    assert extract_numbers("sales 123 456 7890 units") == set()


def test_the_share_of_a_summary_numbers_the_sources_support() -> None:
    summary = "q1 revenue $1.5 billion, up 7.5%.\nsees fy eps $2.85 to $3.10."
    document = "Revenue was $1.5 billion in Q1 2021.\nEPS guidance is $2.85 to $3.1."
    reference = "revenue rose 7.5%."
    # summary {1.5, 7.5, 2.85, 3.10}; document {1.5, 2.85, 3.1}; reference {7.5}: "3.10" is not "3.1"
    assert numeric_precision(summary, document, reference) == 0.75
    assert numeric_precision(summary, document, "") == 0.5


def test_scores_are_rounded_to_two_decimals_as_ectsum_rounds_them() -> None:
    assert numeric_precision("1 and 2 and 3", "1 and 2", "") == 0.67
    assert numeric_precision("1 and 2 and 3", "1", "") == 0.33


def test_a_summary_without_numbers_is_left_out() -> None:
    assert numeric_precision("Revenue rose.", "Revenue rose 5%.", "revenue up 5%.") is None
    assert mean_numeric_precision([1.0, None, 0.5]) == 0.75
    assert mean_numeric_precision([None, None]) is None


def val_rows() -> list[dict]:
    path = shared_file("ectsum/val.jsonl", "the ECTSum val split")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_reference_with_itself_as_reference_is_fully_supported() -> None:
    scores = [numeric_precision(row["summary"], row["document"], row["summary"]) for row in val_rows()]
    assert set(scores) == {1.0, None}


def test_the_references_against_their_transcripts_alone() -> None:
    rows = val_rows()
    scores = {row["id"]: numeric_precision(row["summary"], row["document"], "") for row in rows}
    # 242 of the 249 val summaries hold a number; 13% of their numbers are nowhere in the transcript.
    assert sum(score is not None for score in scores.values()) == 242
    assert mean_numeric_precision(list(scores.values())) == pytest.approx(0.8679, abs=5e-5)
    assert (scores["ABM_q1_2021"], scores["ACM_q4_2021"], scores["AFL_q3_2020"], scores["ADM_q3_2021"]) == \
        (1.0, 0.83, 0.8, None)
