"""The run report: what was trained, how the loss moved, and whether the adapter beats the base.

A run directory (`runs/<name>/`) holds files written by training and evaluation:
config.yaml, metrics.jsonl (Trainer logs), run_summary.json, data_stats.json, metrics.json and
predictions.jsonl. This module reads whichever exist, draws the curves (see `plots.py`) and writes
report.md plus a self-contained report.html. A missing file becomes a sentence in the report, so a
run that has trained but not been evaluated still gets one.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from loratune.errors import LoratuneError
from loratune.evaluation.tables import (
    Table,
    format_metrics_tables,
    format_number,
    md_table,
    metrics_tables,
)
from loratune.reporting.plots import plot_losses, plot_metrics
from loratune.run_dir import RunFiles, load_run

__all__ = ["RunFiles", "load_run", "format_metrics_tables", "plot_losses", "plot_metrics", "write_report",
           "compare_runs"]

SAMPLE_COUNT = 10


# ---------------------------------------------------------------- the report's content

Block = tuple[Any, ...]


def _shorten(text: str, limit: int) -> str:
    """Keep the head and the tail of a long text, cut at spaces: prompts put the instruction or
    schema first and the question last, and both matter for reading a prediction."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    head, tail = text[:keep], text[-keep:]
    head = head.rsplit(None, 1)[0] if any(c.isspace() for c in head[keep // 2 :]) else head
    tail = tail.split(None, 1)[-1] if any(c.isspace() for c in tail[: keep // 2]) else tail
    omitted = len(text) - len(head) - len(tail)
    return f"{head.rstrip()}\n… [{omitted:,} characters omitted] …\n{tail.lstrip()}"


def _as_text(value: Any) -> str:
    """A prediction-file field as text; chat prompts (lists of messages) become `role: content`."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in value
        )
    return str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _missing(run: RunFiles, name: str, why: str) -> Block:
    return ("p", f"Not available: {run.path / name} not found ({why}).")


def _settings_line(config: dict[str, Any]) -> str:
    lora, train, data = config.get("lora") or {}, config.get("train") or {}, config.get("data") or {}
    targets = lora.get("target_modules")
    return (
        f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"target modules={', '.join(targets) if targets else 'per-architecture default'}; "
        f"epochs={train.get('epochs')}, max steps={train.get('max_steps')}, lr={train.get('lr')} "
        f"({train.get('scheduler')}), batch size={train.get('batch_size')} × grad accum {train.get('grad_accum')}, "
        f"seed={train.get('seed')}; max tokens source/target={data.get('max_source_tokens')}/"
        f"{data.get('max_target_tokens')} ({data.get('length_policy')})"
    )


def _data_table(stats: dict[str, Any]) -> Table:
    def lengths(d: dict[str, Any] | None) -> str:
        d = d or {}
        return " / ".join("n/a" if d.get(k) is None else f"{d[k]:,.0f}" for k in ("min", "mean", "p50", "p95", "max"))

    header = ["Split", "Rows", "Truncated", "Dropped", "Source tokens (min / mean / p50 / p95 / max)",
              "Target tokens (min / mean / p50 / p95 / max)"]
    rows = []
    for split in ("train", "eval"):
        s = stats.get(split)
        if isinstance(s, dict):
            rows.append([split, f"{s.get('rows', 'n/a')}", f"{s.get('truncated', 'n/a')}", f"{s.get('dropped', 'n/a')}",
                         lengths(s.get("source_tokens")), lengths(s.get("target_tokens"))])
    return header, rows


def _training_items(summary: dict[str, Any]) -> list[str]:
    items = [str(summary[k]) for k in ("trainable_line", "memory_line") if summary.get(k)]
    if summary.get("wall_time_s") is not None:
        speed = f", {summary['tokens_per_s']:,.1f} tokens/s" if summary.get("tokens_per_s") is not None else ""
        tokens = f" over {summary['train_tokens']:,} training tokens" if summary.get("train_tokens") is not None else ""
        items.append(f"Wall time {_duration(summary['wall_time_s'])}{speed}{tokens}")
    start, end = summary.get("eval_loss_start"), summary.get("eval_loss_end")
    if start is not None or end is not None:
        change = f" ({(end - start) / start:+.1%})" if start and end is not None else ""
        items.append(f"Eval loss {format_number(start)} → {format_number(end)}{change}")
    items.append(f"Precision: {summary.get('precision', 'n/a')}; "
                 f"started from adapter: {summary.get('init_adapter') or 'none (fresh LoRA weights)'}")
    return items


def _samples_table(predictions: list[dict[str, Any]]) -> Table:
    rows = []
    for i, row in enumerate(predictions[:SAMPLE_COUNT], start=1):
        prompt = row.get("prompt", row.get("input", row.get("question")))
        rows.append([str(i), _shorten(_as_text(prompt), 700)]
                    + [_shorten(_as_text(row.get(k)), 600) for k in ("reference", "base", "lora")])
    return ["#", "Prompt", "Reference", "Base", "LoRA"], rows


def report_blocks(run: RunFiles, images: dict[str, Path]) -> list[Block]:
    """The report as a list of blocks (heading, paragraph, list, table, image), rendered to both
    markdown and HTML so the two files always say the same thing."""
    summary, config, metrics = run.summary or {}, run.config or {}, run.metrics or {}
    model = summary.get("model") or metrics.get("model") or config.get("model") or "unknown"
    task = summary.get("task") or metrics.get("task") or config.get("task") or "unknown"
    model_type = summary.get("model_type") or summary.get("kind")  # `kind` in runs before 0.2
    shown_type = f" ({model_type})" if model_type else ""
    blocks: list[Block] = [("h1", f"LoRA run report: {run.name}"), ("p", f"Model: {model}{shown_type}. Task: {task}.")]
    if config:
        blocks.append(("p", "Settings: " + _settings_line(config)))

    blocks.append(("h2", "Data"))
    if run.data_stats:
        blocks.append(("table", _data_table(run.data_stats)))
    else:
        blocks.append(_missing(run, "data_stats.json", "written when training tokenizes the data"))

    blocks.append(("h2", "Training"))
    if run.summary:
        blocks.append(("list", _training_items(summary)))
    else:
        blocks.append(_missing(run, "run_summary.json", "written when training finishes"))
    for name, alt in (("train_loss.png", "Training loss"), ("eval_loss.png", "Evaluation loss")):
        if name in images:
            blocks.append(("img", images[name], alt))
    if run.log is None:
        blocks.append(_missing(run, "metrics.jsonl", "the Trainer log; no loss curves without it"))

    blocks.append(("h2", "Base vs LoRA"))
    if run.metrics:
        rouge, others, rouge_ci = metrics_tables(run.metrics)
        if run.metrics.get("n") is not None:
            blocks.append(("p", f"Held-out examples: {run.metrics['n']}. Intervals: paired bootstrap, 95%."))
        blocks += [("table", rouge), ("p", rouge_ci), ("table", others)]
        if "metrics.png" in images:
            blocks.append(("img", images["metrics.png"], "Base vs LoRA metrics"))
        if "accuracy_vs_time.png" in images:
            blocks.append(("p", "Execution accuracy of the checkpoints saved along the run (a fixed subset of "
                                "the held-out rows, scored after training): what more minutes would buy."))
            blocks.append(("img", images["accuracy_vs_time.png"], "Accuracy against training minutes"))
    else:
        blocks.append(_missing(run, "metrics.json", "the run has not been evaluated yet"))

    blocks.append(("h2", "Sample predictions"))
    if run.predictions:
        blocks.append(("samples", _samples_table(run.predictions)))
    else:
        blocks.append(_missing(run, "predictions.jsonl", "written by evaluation"))
    return blocks


def render_markdown(blocks: list[Block], run_dir: Path) -> str:
    """Markdown with images linked relative to the run directory (report.md sits there)."""
    out = []
    for block in blocks:
        tag = block[0]
        if tag in ("h1", "h2"):
            out.append(("#" if tag == "h1" else "##") + " " + html.escape(block[1], quote=False))
        elif tag == "p":
            out.append(html.escape(block[1], quote=False))
        elif tag == "list":
            out.append("\n".join("- " + html.escape(item, quote=False) for item in block[1]))
        elif tag in ("table", "samples"):
            out.append(md_table(*block[1]))
        elif tag == "img":
            out.append(f"![{block[2]}]({block[1].relative_to(run_dir).as_posix()})")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.samples td { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .8em;
                   max-width: 22em; overflow-wrap: anywhere; }
img { max-width: 100%; display: block; margin: .8em 0; }
"""


def _html_table(table: Table, css_class: str = "") -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)

    def cell(c: str) -> str:
        numeric = css_class != "samples" and c[:1] != "" and c[:1] in "+-0123456789"
        attr = ' class="num"' if numeric else ""
        return f"<td{attr}>{html.escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(blocks: list[Block], title: str) -> str:
    """One HTML file with inline CSS and images as base64 data URIs; every text is escaped."""
    out = []
    for block in blocks:
        tag = block[0]
        if tag in ("h1", "h2", "p"):
            out.append(f"<{tag}>{html.escape(block[1])}</{tag}>")
        elif tag == "list":
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block[1]) + "</ul>")
        elif tag in ("table", "samples"):
            out.append(_html_table(block[1], "samples" if tag == "samples" else ""))
        elif tag == "img":
            data = base64.b64encode(block[1].read_bytes()).decode("ascii")
            out.append(f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} — LoRA run report</title><style>{_CSS}</style></head>\n"
        f"<body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


# ---------------------------------------------------------------- entry points


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md and a self-contained report.html (images inlined) into the run directory:
    model, data, parameters, speed, loss curves, metric tables with intervals, sample predictions."""
    run = load_run(run_dir)
    images = {p.name: p for p in plot_losses(run.path)}
    metrics_png = plot_metrics(run.path)
    if metrics_png is not None:
        images[metrics_png.name] = metrics_png
    progress_png = run.path / "plots" / "accuracy_vs_time.png"  # drawn by plots.plot_accuracy_vs_time
    if progress_png.is_file():
        images[progress_png.name] = progress_png
    blocks = report_blocks(run, images)
    md_path, html_path = run.path / "report.md", run.path / "report.html"
    md_path.write_text(render_markdown(blocks, run.path), encoding="utf-8")
    html_path.write_text(render_html(blocks, run.name), encoding="utf-8")
    return md_path, html_path


def _pair(metrics: dict[str, Any], key: str) -> str:
    """`LoRA / Base (+diff)` for one metric of one run."""
    lora, base = (metrics.get("lora") or {}).get(key), (metrics.get("base") or {}).get(key)
    if lora is None and base is None:
        return "n/a"
    diff = f" ({lora - base:+.4f})" if lora is not None and base is not None else ""
    return f"{format_number(lora)} / {format_number(base)}{diff}"


def compare_runs(run_dirs: list[Path]) -> str:
    """One markdown table across runs: model, task, rows, LoRA / Base for ROUGE-L, exact match
    (and execution accuracy when any run has it), final eval loss. A directory that is not a run
    raises LoratuneError naming it."""
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise LoratuneError("compare: no run directories given; pass one or more directories under runs/")
    with_exec = any(((r.metrics or {}).get(s) or {}).get("execution_accuracy") is not None
                    for r in runs for s in ("base", "lora"))
    header = ["Run", "Model", "Task", "Train rows", "Eval examples", "ROUGE-L (LoRA / Base)",
              "Exact match (LoRA / Base)"]
    header += ["Execution accuracy (LoRA / Base)"] if with_exec else []
    header += ["Eval loss end"]
    rows = []
    for run in runs:
        summary, config, metrics = run.summary or {}, run.config or {}, run.metrics or {}
        train_rows = summary.get("train_rows", ((run.data_stats or {}).get("train") or {}).get("rows"))
        row = [run.name, str(summary.get("model") or metrics.get("model") or config.get("model") or "n/a"),
               str(summary.get("task") or metrics.get("task") or config.get("task") or "n/a"),
               "n/a" if train_rows is None else f"{train_rows:,}",
               "n/a" if metrics.get("n") is None else str(metrics["n"]),
               _pair(metrics, "rougeL"), _pair(metrics, "exact_match")]
        row += [_pair(metrics, "execution_accuracy")] if with_exec else []
        row += [format_number(summary.get("eval_loss_end"))]
        rows.append(row)
    return md_table(header, rows) + "\n"
