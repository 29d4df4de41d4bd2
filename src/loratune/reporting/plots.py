"""The report's figures: loss curves with epoch boundaries, base-vs-LoRA metric bars.

`plot_losses` and `plot_metrics` read the run files they need (through `json_files`, the
reader every module shares) and call the `draw_*` functions, which only draw plain numbers.
Figures are built with matplotlib's object API (`Figure`, no pyplot): PNGs render through Agg on
headless machines, and importing this module never changes the caller's global backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator, PercentFormatter
from matplotlib.transforms import blended_transform_factory

from loratune.evaluation.metrics import FORGETTING_METRIC_NAMES as METRIC_NAMES
from loratune.evaluation.metrics import METRIC_LABELS
from loratune.json_files import read_json_or_none, read_jsonl
from loratune.run_dir import METRICS, METRICS_LOG, SUMMARY, require_run_dir

BASE_COLOR = "#7f8fa6"
LORA_COLOR = "#e1701a"
CURVE_COLOR = "#1f5fa8"


def epoch_boundaries(steps: Sequence[float], epochs: Sequence[float]) -> list[tuple[int, float]]:
    """Steps at which each whole epoch ended, interpolated from logged (step, epoch) pairs.

    Trainer logs carry a fractional epoch with every step, so the step where epoch k ends is
    found by linear interpolation. Only boundaries inside the logged range are returned (the
    end of the last epoch is the end of the plot, not a boundary).
    """
    pairs = sorted({(float(s), float(e)) for s, e in zip(steps, epochs)})
    if not pairs or pairs[0][0] > 0:
        pairs.insert(0, (0.0, 0.0))  # training starts at step 0, epoch 0
    xs = np.array([p[0] for p in pairs])
    ys = np.maximum.accumulate(np.array([p[1] for p in pairs]))  # epochs never go backwards
    out = []
    k = 1
    while k < ys[-1] - 1e-6:
        out.append((k, float(np.interp(k, ys, xs))))
        k += 1
    return out


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over up to `window` points. Near the ends the window shrinks symmetrically
    (down to the raw value at the first and last point), so a falling curve is not drawn with
    the lag a trailing mean would add."""
    half = window // 2
    csum = np.cumsum(np.insert(values, 0, 0.0))
    i = np.arange(values.size)
    h = np.minimum(half, np.minimum(i, values.size - 1 - i))
    return (csum[i + h + 1] - csum[i - h]) / (2 * h + 1)


def _mark_epochs(ax: Axes, boundaries: list[tuple[int, float]], x_end: float) -> None:
    """Dashed vertical lines at epoch ends, each span labelled `epoch k` along the top."""
    if not boundaries:
        return
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    starts = [0.0] + [step for _, step in boundaries]
    ends = [step for _, step in boundaries] + [x_end]
    for _, step in boundaries:
        ax.axvline(step, color="0.45", linestyle="--", linewidth=1.0, zorder=1)
    for k, (lo, hi) in enumerate(zip(starts, ends), start=1):
        if hi > lo:
            ax.text((lo + hi) / 2, 0.985, f"epoch {k}", transform=trans, ha="center", va="top",
                    fontsize=9, color="0.35")


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.subplots()
    ax.set_title(title, fontsize=13)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def draw_train_loss(
    path: Path, steps: Sequence[int], losses: Sequence[float], boundaries: list[tuple[int, float]]
) -> Path:
    """Training loss per logged step; with 20+ points a centred moving average is drawn over the
    raw (noisy) values so the trend reads at a glance."""
    x = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    fig, ax = _new_axes("Training loss", "loss")
    if y.size >= 20:
        window = max(3, y.size // 10) | 1  # odd, so the window is centred on its point
        ax.plot(x, y, color=CURVE_COLOR, alpha=0.3, linewidth=1.0, marker=".", markersize=3, label="logged")
        ax.plot(x, _moving_average(y, window), color=CURVE_COLOR, linewidth=2.0,
                label=f"moving average ({window} logs)")
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.92), fontsize=9)
    else:
        ax.plot(x, y, color=CURVE_COLOR, linewidth=2.0, marker="o", markersize=4)
    _mark_epochs(ax, boundaries, float(x.max()))
    _pad_top(ax)
    ax.set_xlim(left=0)
    return _save(fig, path)


def draw_eval_loss(
    path: Path,
    steps: Sequence[int],
    losses: Sequence[float],
    boundaries: list[tuple[int, float]],
    before_training: float | None = None,
) -> Path:
    """Held-out loss at each evaluation, the value before training drawn at step 0 when known,
    first and last values written on the plot."""
    x = [float(s) for s in steps]
    y = [float(v) for v in losses]
    prepended = before_training is not None and (not x or min(x) > 0)
    if prepended:
        x.insert(0, 0.0)
        y.insert(0, float(before_training))
    fig, ax = _new_axes("Evaluation loss (held-out split)", "eval loss")
    ax.plot(x, y, color=LORA_COLOR, linewidth=2.0, marker="o", markersize=5)
    for i in sorted({0, len(x) - 1}):  # to the right of the point, clear of the line into it
        note = " (before training)" if i == 0 and prepended else ""
        ax.annotate(f"{y[i]:.4f}{note}", (x[i], y[i]), textcoords="offset points", xytext=(7, 4 if i == 0 else 0),
                    ha="left", va="bottom" if i == 0 else "center", fontsize=9)
    _mark_epochs(ax, boundaries, max(x))
    _pad_top(ax)
    ax.set_xlim(left=-max(x) * 0.02 - 0.5, right=max(x) * 1.12 + 1)
    return _save(fig, path)


def _pad_top(ax: Axes) -> None:
    # Leave room above the data for the epoch labels and the value annotations.
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + (hi - lo) * 0.15)


def draw_metric_bars(
    path: Path, labels: Sequence[str], base: Sequence[float], lora: Sequence[float], title: str
) -> Path:
    """Grouped bars, base beside LoRA for each metric (all on 0..1), values written on top."""
    x = np.arange(len(labels))
    width = 0.38
    fig = Figure(figsize=(min(11.0, max(6.0, 0.9 * len(labels) + 2)), 5.0), dpi=110)
    ax = fig.subplots()
    bars_base = ax.bar(x - width / 2, base, width, label="Base model", color=BASE_COLOR)
    bars_lora = ax.bar(x + width / 2, lora, width, label="LoRA model", color=LORA_COLOR)
    for bars in (bars_base, bars_lora):
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    tilt = len(labels) > 6  # long names such as "Execution accuracy (real DB)" collide when flat
    ax.set_xticks(x, labels, rotation=25 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor" if tilt else "default")
    ax.set_ylabel("score (0 to 1, higher is better)")
    ax.set_title(title, fontsize=13, pad=26)
    top = max([*base, *lora, 0.05])
    ax.set_ylim(0, min(1.1, top * 1.2 + 0.02))
    # Above the axes, so a tall bar on either side never hides under it.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=9, frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


# ---------------------------------------------------------------- from a run directory


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path)) if path.is_file() else []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_losses(run_dir: str | Path) -> list[Path]:
    """Draw plots/train_loss.png and plots/eval_loss.png from the Trainer log (metrics.jsonl)
    against the optimizer step, epoch boundaries marked; the eval curve starts with
    run_summary.json's `eval_loss_start` when there is one. Returns the files written."""
    path = require_run_dir(run_dir)
    log = [r for r in _rows(path / METRICS_LOG) if _is_number(r.get("step"))]
    timeline = [(r["step"], r["epoch"]) for r in log if _is_number(r.get("epoch"))]
    bounds = epoch_boundaries([s for s, _ in timeline], [e for _, e in timeline]) if timeline else []
    out = []
    train = [(r["step"], r["loss"]) for r in log if _is_number(r.get("loss"))]
    if train:
        steps, losses = zip(*train)
        out.append(draw_train_loss(path / "plots" / "train_loss.png", steps, losses, bounds))
    evals = [(r["step"], r["eval_loss"]) for r in log if _is_number(r.get("eval_loss"))]
    start = (read_json_or_none(path / SUMMARY) or {}).get("eval_loss_start")
    if evals:  # the loss before training alone is one point, not a curve
        steps, losses = zip(*evals)
        out.append(draw_eval_loss(path / "plots" / "eval_loss.png", steps, losses, bounds, start))
    return out


def plot_metrics(run_dir: str | Path) -> Path | None:
    """Draw plots/metrics.png: base vs LoRA bars for every metric in metrics.json that both
    have a value for. None when the run has not been evaluated."""
    path = require_run_dir(run_dir)
    metrics = read_json_or_none(path / METRICS) or {}
    base, lora = metrics.get("base") or {}, metrics.get("lora") or {}
    keys = [k for k in METRIC_LABELS if _is_number(base.get(k)) and _is_number(lora.get(k))]
    if not keys:
        return None
    n = metrics.get("n")
    title = "Base vs LoRA" + (f" on {n} held-out examples" if n is not None else "")
    return draw_metric_bars(path / "plots" / "metrics.png", [METRIC_LABELS[k] for k in keys],
                            [float(base[k]) for k in keys], [float(lora[k]) for k in keys], title)


_METRIC_NAMES = {
    "execution_accuracy_real_db": "execution accuracy (real databases)",
    "execution_accuracy": "execution accuracy (synthesized databases)",
}


def draw_accuracy_vs_time(
    path: Path, minutes: Sequence[float], accuracy: Sequence[float], base: float, *, metric: str, rows: int
) -> Path:
    """Execution accuracy of each checkpoint against training minutes, the base model as a
    dashed line; each point labelled with its value."""

    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.subplots()
    x = [0.0, *minutes]
    y = [base, *accuracy]  # before training the adapter is a no-op: the base model's score
    ax.plot(x, y, color=LORA_COLOR, linewidth=2.0, marker="o", markersize=5, label="LoRA checkpoints")
    ax.axhline(base, color=BASE_COLOR, linestyle="--", linewidth=1.5, label=f"base model ({base:.1%})")
    for xi, yi in zip(minutes, accuracy):
        ax.annotate(f"{yi:.0%}", (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_title(f"Accuracy against training time ({rows} held-out rows)", fontsize=13)
    ax.set_xlabel("training minutes")
    ax.set_ylabel(_METRIC_NAMES.get(metric, metric))
    ax.set_xlim(left=0, right=max(x) * 1.05 + 0.1)
    # at least 0 to 20%, so a one-row difference on a small subset does not fill the plot
    top = min(1.0, max(0.2, max(y) * 1.25 + 0.05))
    ax.set_ylim(0, top)
    ax.yaxis.set_major_locator(MultipleLocator(0.05 if top <= 0.3 else 0.1))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)  # the curve rises to the right, so this corner is free
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def draw_forgetting(path: Path, result: dict[str, Any]) -> Path:
    """A heatmap (0..1) with each score written in its cell."""
    import numpy as np
    values = np.asarray(result["scores"], dtype=float)
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(2.2 + 1.9 * n_cols, 1.4 + 0.6 * n_rows), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n_cols), [f"{s}\n({METRIC_NAMES[result['metric'][s]]})" for s in result["eval_sets"]],
                  fontsize=9)
    ax.set_yticks(range(n_rows), result["adapters"], fontsize=9)
    ax.set_xlabel("eval set")
    ax.set_ylabel("adapter")
    ax.set_title("Forgetting matrix: each adapter on each stage's eval set", fontsize=11)
    for r in range(n_rows):
        for c in range(n_cols):
            ax.text(c, r, f"{values[r, c]:.3f}", ha="center", va="center", fontsize=10,
                    color="black" if values[r, c] > 0.6 else "white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_accuracy_vs_time(run_dir: str | Path, progress: dict[str, Any]) -> Path:
    """plots/accuracy_vs_time.png of a run from what `evaluation.over_time.evaluate_progress` returned."""
    points = progress["points"]
    return draw_accuracy_vs_time(
        Path(run_dir) / "plots" / "accuracy_vs_time.png",
        [p["minutes"] for p in points], [p["accuracy"] for p in points], progress["base"]["accuracy"],
        metric=progress["metric"], rows=progress["rows"],
    )
