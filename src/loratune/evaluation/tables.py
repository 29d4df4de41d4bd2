"""The metric tables of base vs LoRA: the ROUGE table of the FLAN-T5 recipe (LoRA and Base rows, 4
decimals), then exact match / BLEU / chrF / SQL metrics with LoRA − Base and its 95% interval.

Evaluation prints them and the report embeds them, so both show the same numbers the same way.
"""

from __future__ import annotations

import html
from typing import Any

from loratune.evaluation.metrics import METRIC_LABELS, ROUGE_TYPES, SQL_METRICS

ROUGE_COLUMNS = tuple((key, METRIC_LABELS[key]) for key in ROUGE_TYPES)
ALWAYS_ROWS = tuple((key, METRIC_LABELS[key]) for key in ("exact_match", "bleu", "chrf"))
SQL_ROWS = tuple((key, METRIC_LABELS[key]) for key in SQL_METRICS)
TATQA_ROWS = tuple((key, METRIC_LABELS[key]) for key in ("tatqa_em", "tatqa_f1", "tatqa_scale"))
ECTSUM_ROWS = tuple((key, METRIC_LABELS[key]) for key in ("num_precision",))
Table = tuple[list[str], list[list[str]]]


def format_number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def format_interval(metrics: dict[str, Any], key: str) -> str:
    """`+0.0500 [+0.0100, +0.0900]` from `intervals`, the bare difference when no interval."""
    iv = (metrics.get("intervals") or {}).get(key)
    if iv and iv.get("diff") is not None:
        if iv.get("low") is not None and iv.get("high") is not None:
            return f"{iv['diff']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}]"
        return f"{iv['diff']:+.4f}"
    base, lora = (metrics.get("base") or {}).get(key), (metrics.get("lora") or {}).get(key)
    return "n/a" if base is None or lora is None else f"{lora - base:+.4f}"


def metrics_tables(metrics: dict[str, Any]) -> tuple[Table, Table, str]:
    """(ROUGE table, other-metrics table, one line of ROUGE intervals) as header + rows."""
    base, lora = metrics.get("base") or {}, metrics.get("lora") or {}
    rouge_header = [""] + [label for _, label in ROUGE_COLUMNS]
    rouge_rows = [
        ["LoRA Model"] + [format_number(lora.get(key)) for key, _ in ROUGE_COLUMNS],
        ["Base Model"] + [format_number(base.get(key)) for key, _ in ROUGE_COLUMNS],
    ]
    rouge_ci = "LoRA − Base [95% CI]: " + "; ".join(
        f"{label} {format_interval(metrics, key)}" for key, label in ROUGE_COLUMNS
    )
    rows = [[label, format_number(lora.get(key)), format_number(base.get(key)), format_interval(metrics, key)] for key, label in ALWAYS_ROWS]
    for key, label in SQL_ROWS + TATQA_ROWS + ECTSUM_ROWS:  # task metrics only where the task produced them
        if lora.get(key) is not None or base.get(key) is not None:
            rows.append([label, format_number(lora.get(key)), format_number(base.get(key)), format_interval(metrics, key)])
    return (rouge_header, rouge_rows), (["Metric", "LoRA", "Base", "LoRA − Base [95% CI]"], rows), rouge_ci


def md_cell(text: str) -> str:
    # Escape HTML too: markdown viewers render raw tags, and predictions are untrusted text.
    text = html.escape(str(text), quote=False).replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    # An empty header cell renders as `||`, the shape of the original's ROUGE table.
    lines = ["|" + "|".join(f" {md_cell(c)} " if c else "" for c in header) + "|"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_metrics_tables(metrics: dict[str, Any]) -> str:
    """Markdown: the original's ROUGE table (LoRA and Base rows, 4 decimals), its intervals, then
    exact match / BLEU / chrF / SQL metrics with LoRA − Base and the 95% bootstrap interval."""
    rouge, others, rouge_ci = metrics_tables(metrics)
    parts = [md_table(*rouge), "", rouge_ci, "", md_table(*others)]
    breakdown = tatqa_breakdown(metrics)
    if breakdown:
        parts += ["", md_table(*breakdown)]
    if metrics.get("n") is not None:
        parts.insert(0, f"Held-out examples: {metrics['n']}\n")
    return "\n".join(parts) + "\n"


def tatqa_breakdown(metrics: dict[str, Any]) -> Table | None:
    """TAT-QA's official EM and F1 by answer type and by source, base and LoRA (None for other tasks)."""
    base, lora = (metrics.get("base") or {}).get("tatqa"), (metrics.get("lora") or {}).get("tatqa")
    if not base or not lora:
        return None
    rows = []
    for group in ("by_answer_type", "by_answer_from"):
        for name, scores in lora[group].items():
            before = base[group].get(name, {})
            rows.append([name, str(scores["count"]), format_number(before.get("em")), format_number(scores["em"]),
                         format_number(before.get("f1")), format_number(scores["f1"])])
    return ["TAT-QA group", "questions", "EM base", "EM LoRA", "F1 base", "F1 LoRA"], rows
