"""ECTSum's numeric precision (Num-Prec): the share of the distinct numbers in a generated summary
that also appear in the source transcript or in the reference summary.

Written for loratune after ECTSum's own evaluation, rajdeep345/ECTSum at commit 6909f1f (GPL-3.0;
no line of it is copied here): `utils.py` `getPartiallyProcessedText` (the normalisation), its regex `pattern7` (the
number extraction) and `checkValues` (the score); `evaluate.py` / `evaluate_with_mask.py`
`evaluateExtAbs` (how texts are read and scores averaged). What that code does, and so what this
module does:

- every text is read line by line (a transcript holds one sentence a line, a summary one bullet a line);
- each line is normalised first, so that numbers that are not values do not count: "COVID-19" and
  "q1", "10-K", "2nd", "'21", phone numbers, times ("10:30"), the years 2010-2029, dates after a
  month name ("March 31"), slide numbers and conference-call passcodes become placeholders;
- the numbers are then the matches of `pattern7` (below): "1.10", "2,850", "3/4" or "25", compared
  as strings ("$1.10" gives "1.10", which is not "1.1"), "%" and "$" ignored;
- a summary's score is |numbers ∩ (transcript ∪ reference numbers)| / |numbers|, rounded to 2
  decimals as ECTSum rounds it;
- the aggregate is the mean of the per-summary scores over the summaries that hold a number at all:
  `checkValues` returns -1 for a summary without numbers, and `evaluate_with_mask.py` leaves those
  out (`if score1 != -1`). (`evaluate.py` tests the wrong variable there and keeps them as -1; we
  follow the intent, as `evaluate_with_mask.py` does.)
The normalisation's quirks are kept on purpose, to score as ECTSum scores: "August" is not among its
months, "1,234,567" gives "1,234" and "567", and "5-year" or "$1.5b" lose the number touching a letter.
Run beside ECTSum's code, this module finds the same numbers on every line of ECTSum's val and test
splits and gives the Num-Prec of the ECT-BPS results in its repository (tests/test_ectsum_numeric.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROUND_DIGITS = 2
"""ECTSum rounds each summary's score to 2 decimals before averaging."""

NUMBER = re.compile(r"(?<![A-Za-z])\d+\.\d+|(?<![A-Za-z])\d+,\d+|(?<![A-Za-z])\d+/\d+|(?<![A-Za-z])\d+")
"""ECTSum's `pattern7`: a decimal, a number with one comma group, a fraction, or an integer, not
directly after a letter."""

_PHONE_US = re.compile(r"(\+\d{1,2}\s)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}")
_PHONE_ANY = re.compile(r"\s*(?:\+?(\d{1,3}))?[-. (]*(\d{3})[-. )]*(\d{3})[-. ]*(\d{4})(?: *x(\d+))?\s*")
_LETTER_DIGITS = re.compile(r"[A-Za-z]\d+")  # q1, COVID19, fy21
_DIGITS_LETTER = re.compile(r"\d+[A-Za-z]|\d+-[A-Za-z]")  # 10-K, 2nd, 5-year
_SHORT_YEAR = re.compile(r"'\d+")  # '21
_CLOCK = re.compile(r"\d{1,2}:\d{2}")
_CLOCK_SECONDS = re.compile(r"\d{1,2}:\d{2}:\d{2}")
_COVID = ("Covid-19", "Covid 19", "Covid'19")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "September", "October", "November",
           "December")
_MONTHS_SHORT = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Sep", "Sept", "Oct", "Nov", "Dec")
_DIGIT = re.compile(r"\d")
_YEARS = frozenset(f"20{year}" for year in range(10, 30))


def _replace_all_matches(pattern: re.Pattern[str], text: str, placeholder: str) -> str:
    # ECTSum replaces the first match's text everywhere, then searches again, until none is left;
    # the order matters ("q1" replaced first turns "q12" into "[TXT-NUM]2"), so it is kept.
    while match := pattern.search(text):
        text = text.replace(match.group(0), placeholder)
    return text


def normalize_line(line: str) -> str:
    """One line with the numbers that are not values (dates, quarters, phone numbers, ...) replaced
    by placeholders, as ECTSum's `getPartiallyProcessedText` does."""
    text = line.strip()
    for name in _COVID:
        text = text.replace(name, "Covid").replace(name.lower(), "covid").replace(name.upper(), "COVID")
    while match := _PHONE_US.search(text):
        text = text.replace(match.group(0), "[PHONENUM]").replace("1-[PHONENUM]", "[PHONENUM]")
    text = _replace_all_matches(_PHONE_ANY, text, "[PHONENUM]")
    text = _replace_all_matches(_LETTER_DIGITS, text, "[TXT-NUM]")
    text = _replace_all_matches(_DIGITS_LETTER, text, "[NUM-TXT]")
    text = _replace_all_matches(_SHORT_YEAR, text, "[YEAR]")
    for year in range(10, 30):
        for prefix in ("fy", "FY", "Fy"):
            text = text.replace(f"{prefix}{year}", "financial year [YEAR]")
    text = _replace_all_matches(_CLOCK, text, "[TIME] ")
    text = _replace_all_matches(_CLOCK_SECONDS, text, "[TIME] ")
    text = re.sub(r"\s\s+", " ", text)
    for suffix in ("a.m.", "A.M.", "p.m.", "P.M."):
        text = text.replace(f"[TIME] {suffix}", "[TIME]")
    for number in NUMBER.findall(text):  # the numbers found before any of them is replaced
        if number in _YEARS:
            text = text.replace(number, "[YEAR]")
        for month in _MONTHS + _MONTHS_SHORT:
            for spelled in (month, month.lower(), month.upper()):
                text = text.replace(f"{spelled} {number}", "[DATE]")
        for word, placeholder in (("slide", "[SLIDE-NUM]"), ("Slide", "[SLIDE-NUM]"),
                                  ("passcode", "[PASSCODE]"), ("code", "[PASSCODE]")):
            text = text.replace(f"{word} {number}", placeholder)
    return " ".join("[PASSCODE]" if "[PASSCODE]" in word else word for word in text.split()).strip()


def text_lines(text: str) -> list[str]:
    # ECTSum reads files with readlines() in text mode: "\r\n" and "\r" end a line as "\n" does.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def extract_numbers(text: str) -> set[str]:
    """The distinct numbers of a text as ECTSum counts them: each line normalised, then `NUMBER`."""
    # Normalising only replaces (it never writes a digit), so a line without a digit has no number.
    return {number for line in text_lines(text) if _DIGIT.search(line)
            for number in NUMBER.findall(normalize_line(line))}


def numeric_precision(summary: str, document: str, reference: str) -> float | None:
    """Share of the summary's distinct numbers found in the document or the reference, rounded to 2
    decimals; None when the summary holds no number (ECTSum leaves such a summary out)."""
    found = extract_numbers(summary)
    if not found:
        return None
    supported = extract_numbers(document) | extract_numbers(reference)
    return round(len(found & supported) / len(found), ROUND_DIGITS)


def mean_numeric_precision(scores: Sequence[float | None]) -> float | None:
    """ECTSum's aggregate: the mean of the per-summary scores of the summaries that hold a number
    (None when none does)."""
    kept = [score for score in scores if score is not None]
    return sum(kept) / len(kept) if kept else None
