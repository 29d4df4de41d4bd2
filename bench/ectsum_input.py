"""What should a small model read of an earnings call? Measured without a model, on ECTSum rows.

For each input choice (the sentences `loratune.ectsum.select` picks, the transcript's first words,
the whole transcript) at budgets of 256, 512 and 1,024 words, two ceilings on what a summary
written from that input can hold:
- numbers: the share of the reference summary's distinct numbers (ECTSum's extraction,
  `loratune.ectsum.numeric`) that appear in the input, averaged over the rows whose reference has one;
- ROUGE-1 recall of the reference against the input (rouge-score, Porter stemmer), averaged.
Also the input's mean length in words and in SmolLM2 tokens (--no-tokens skips the tokenizer). Prints a markdown table.

    .venv/bin/python bench/ectsum_input.py [--data FILE] [--rows N] [--no-tokens]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from rouge_score import rouge_scorer

from loratune.ectsum.numeric import extract_numbers
from loratune.ectsum.select import lead_words, select_sentences

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ectsum" / "val.jsonl"
BUDGETS = (256, 512, 1024)


def choices() -> list[tuple[str, int | None, Callable[[str], str]]]:
    """(name, budget in words, document -> input) for every input measured."""
    found: list[tuple[str, int | None, Callable[[str], str]]] = []
    for budget in BUDGETS:
        found.append(("selected", budget, lambda doc, b=budget: select_sentences(doc, b)))
        found.append(("lead", budget, lambda doc, b=budget: lead_words(doc, b)))
    found.append(("whole", None, lambda doc: doc))
    return found


def measure(rows: list[dict], make_input: Callable[[str], str], tokenizer=None) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    number_shares, recalls, words, tokens = [], [], [], []
    for row in rows:
        text = make_input(row["document"])
        reference_numbers = extract_numbers(row["summary"])
        if reference_numbers:
            number_shares.append(len(reference_numbers & extract_numbers(text)) / len(reference_numbers))
        recalls.append(scorer.score(row["summary"], text)["rouge1"].recall)  # (target, prediction)
        words.append(len(text.split()))
        if tokenizer is not None:
            tokens.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return {"numbers": _mean(number_shares), "rouge1_recall": _mean(recalls), "words": _mean(words),
            "tokens": _mean(tokens), "rows_with_numbers": len(number_shares)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="ECTSum JSONL rows (document, summary)")
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    parser.add_argument("--tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="count SmolLM2 tokens too (loads its tokenizer; --no-tokens skips it)")
    args = parser.parse_args()
    with open(args.data, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()][: args.rows]
    tokenizer = None
    if args.tokens:
        from loratune.models.load import inspect_model
        tokenizer = inspect_model("smollm2-135m-instruct").tokenizer
    started = time.perf_counter()
    print(f"{len(rows)} rows of {args.data}\n")
    print("| input | budget (words) | reference numbers in input | ROUGE-1 recall | words | tokens |")
    print("|---|---|---|---|---|---|")
    for name, budget, make_input in choices():
        found = measure(rows, make_input, tokenizer)
        tokens = f"{found['tokens']:.0f}" if tokenizer is not None else "-"
        print(f"| {name} | {budget or 'all'} | {found['numbers']:.3f} | {found['rouge1_recall']:.3f} "
              f"| {found['words']:.0f} | {tokens} |")
    print(f"\n{time.perf_counter() - started:.0f}s; numbers averaged over {found['rows_with_numbers']} rows "
          "whose reference holds a number")


if __name__ == "__main__":
    main()
