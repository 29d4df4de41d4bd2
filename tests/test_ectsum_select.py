"""What the model reads of an earnings call: sentences scored by figures, results words and position,
kept in document order within a word budget; the `ectsum` and `ectsum-lead` tasks built on them.
Real rows are read from ../shared/data/ectsum (GPL-3.0, never copied into the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import shared_file

from loratune.config import DataSettings
from loratune.data import load_splits
from loratune.ectsum.numeric import extract_numbers
from loratune.ectsum.select import BUDGET_WORDS, lead_words, select_sentences, sentence_score, split_sentences
from loratune.tasks import TASKS, get_task
from loratune.tasks.ectsum import ECTSUM, ECTSUM_LEAD, INSTRUCTION

CALL = "\n".join([
    "Thank you, operator, and good morning everyone.",
    "I am joined today by our chief financial officer and our head of investor relations.",
    "Revenue grew 5% to $1.2 billion.",
    "Our teams worked hard through a difficult winter in every region.",
    "For the full year we expect EPS of $2.10 to $2.30.",
])


def test_sentences_are_lines_or_end_with_a_stop() -> None:
    assert split_sentences("Sales rose. Margins fell!\n\nWhy? Costs.") == ["Sales rose.", "Margins fell!", "Why?", "Costs."]
    assert split_sentences("EPS was $1.10. It rose 3.5%.") == ["EPS was $1.10.", "It rose 3.5%."]


def test_a_sentence_scores_its_figures_words_and_position() -> None:
    # numbers 5 and 1.2 (2) + "$1" and "5%" (2) + revenue, grew, billion (3) + position 2 * (1 - 0/4)
    assert sentence_score("Revenue grew 5% to $1.2 billion.", 0, 4) == 9.0
    # nothing but position 2 * (1 - 1/4), less 4 for the call's boilerplate
    assert sentence_score("Thank you, operator, and good morning.", 1, 4) == -2.5


def test_years_and_codes_are_not_figures() -> None:
    assert sentence_score("In 2021 we filed our 10-K for q1.", 0, 1) == sentence_score("In the year we filed our form.", 0, 1)


def test_the_figures_are_kept_in_document_order() -> None:
    assert select_sentences(CALL, 20) == "Revenue grew 5% to $1.2 billion.\nFor the full year we expect EPS of $2.10 to $2.30."


def test_a_sentence_over_the_budget_is_passed_over_for_a_shorter_one() -> None:
    # The two figure sentences (17 words) fit 18; no other sentence fits the one word left.
    assert select_sentences(CALL, 18).count("\n") == 1
    # With 26, 9 words are left: the 15-word introduction ranks above the greeting but does not fit;
    # the greeting (7 words) does.
    chosen = select_sentences(CALL, 26)
    assert chosen.splitlines() == ["Thank you, operator, and good morning everyone.", "Revenue grew 5% to $1.2 billion.",
                                   "For the full year we expect EPS of $2.10 to $2.30."]


def test_one_sentence_longer_than_the_budget_gives_its_first_words() -> None:
    assert select_sentences("Revenue rose 5% in the quarter on strong demand.", 3) == "Revenue rose 5%"
    assert select_sentences("", 10) == ""


def test_the_lead_is_the_first_words_with_their_line_breaks() -> None:
    assert lead_words("a b c\n\nd e f\ng", 4) == "a b c\nd"
    assert lead_words("a b", 10) == "a b"


def test_the_tasks_are_registered_with_the_ectsum_family() -> None:
    assert TASKS["ectsum"] is ECTSUM and TASKS["ectsum-lead"] is ECTSUM_LEAD
    assert get_task("ectsum").family == get_task("ectsum-lead").family == "ectsum"
    assert ECTSUM.columns == ("document", "summary")


def test_the_prompt_holds_the_chosen_text_and_the_target_is_the_summary_unchanged() -> None:
    row = {"document": CALL, "summary": "revenue $1.2 billion.\nsees fy eps $2.10 to $2.30. "}
    assert ECTSUM.prompt(row) == f"{INSTRUCTION}\nTranscript:\n{select_sentences(CALL, BUDGET_WORDS)}\nSummary:"
    assert ECTSUM_LEAD.prompt(row) == f"{INSTRUCTION}\nTranscript:\n{lead_words(CALL, BUDGET_WORDS)}\nSummary:"
    assert ECTSUM.target(row) == ECTSUM_LEAD.target(row) == row["summary"]
    assert ECTSUM.row_from_message("  Revenue rose 5%.\n") == {"document": "Revenue rose 5%."}


def val_path() -> Path:
    return shared_file("ectsum/val.jsonl", "the ECTSum val split")


def test_real_rows_load_and_keep_their_summary_as_the_target() -> None:
    path = val_path()
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, held_out = load_splits(DataSettings(train=str(path), eval=str(path)), ECTSUM, seed=0)
    assert len(train) == len(held_out) == 249
    assert [ECTSUM.target(row) for row in held_out] == [row["summary"] for row in raw]


def test_on_val_the_selection_keeps_far_more_of_the_summary_numbers_than_the_lead() -> None:
    rows = [json.loads(line) for line in val_path().read_text(encoding="utf-8").splitlines() if line.strip()]

    def kept(read) -> float:  # share of the reference's numbers found in the input, over rows with numbers
        shares = []
        for row in rows:
            wanted = extract_numbers(row["summary"])
            text = read(row["document"])
            assert len(text.split()) <= BUDGET_WORDS
            if wanted:
                shares.append(len(wanted & extract_numbers(text)) / len(wanted))
        return sum(shares) / len(shares)

    # bench/ectsum_input.py prints these with ROUGE-1 recall, at 256, 512 and 1,024 words.
    assert kept(lambda document: select_sentences(document, BUDGET_WORDS)) == pytest.approx(0.799, abs=5e-4)
    assert kept(lambda document: lead_words(document, BUDGET_WORDS)) == pytest.approx(0.294, abs=5e-4)
