"""Figures: valid PNGs from a realistic Trainer log, epoch boundaries, smoothing, missing files."""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from loratune.errors import RunDirError
from loratune.reporting.plots import (
    _moving_average,
    epoch_boundaries,
    plot_losses,
    plot_metrics,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_log(run: Path, epochs: int = 3, steps: int = 60) -> None:
    """60 steps over 3 epochs of noisy falling loss, eval each epoch, the Trainer's last line."""
    rng = random.Random(1)
    per_epoch = steps // epochs
    lines = []
    for step in range(1, steps + 1):
        lines.append({"loss": 2.5 * math.exp(-step / 25) + 0.6 + rng.uniform(-0.15, 0.15),
                      "learning_rate": 1e-3, "step": step, "epoch": round(step / per_epoch, 2)})
        if step % per_epoch == 0:
            lines.append({"eval_loss": 2.0 - step / 100, "step": step, "epoch": step / per_epoch})
    lines.append({"train_runtime": 12.0, "train_loss": 1.3, "step": steps, "epoch": float(epochs)})
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")


def test_plot_losses_writes_readable_pngs(tmp_path: Path) -> None:
    write_log(tmp_path)
    (tmp_path / "run_summary.json").write_text(json.dumps({"eval_loss_start": 2.6}), encoding="utf-8")
    paths = plot_losses(tmp_path)
    assert paths == [tmp_path / "plots" / "train_loss.png", tmp_path / "plots" / "eval_loss.png"]
    for path in paths:
        width, height = png_size(path)
        assert width >= 600 and height >= 300
        assert path.stat().st_size > 10_000  # curves, labels and grid, not a blank canvas


def test_plot_losses_without_a_log(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n", encoding="utf-8")
    assert plot_losses(tmp_path) == []
    assert not (tmp_path / "plots").exists()


def test_plot_losses_train_only(tmp_path: Path) -> None:
    tmp_path.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"loss": 3.0 - i / 10, "step": i * 5, "epoch": i / 4}) + "\n" for i in range(1, 6)),
        encoding="utf-8")
    assert [p.name for p in plot_losses(tmp_path)] == ["train_loss.png"]


def test_plot_functions_reject_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="gone: run directory not found"):
        plot_losses(tmp_path / "gone")
    with pytest.raises(RunDirError, match="gone: run directory not found"):
        plot_metrics(tmp_path / "gone")


def test_plot_metrics(tmp_path: Path) -> None:
    assert plot_metrics(tmp_path) is None  # not evaluated
    metrics = {"n": 12, "base": {"rouge1": 0.2, "rougeL": 0.1, "exact_match": 0.0, "execution_accuracy_real_db": None},
               "lora": {"rouge1": 0.5, "rougeL": 0.4, "exact_match": 0.25, "execution_accuracy_real_db": None}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    path = plot_metrics(tmp_path)
    assert path == tmp_path / "plots" / "metrics.png"
    width, height = png_size(path)
    assert width >= 600 and height >= 300 and path.stat().st_size > 10_000


def test_epoch_boundaries_from_logged_epochs() -> None:
    # Logged every 5 steps, 20 steps per epoch, epochs rounded as the Trainer logs them.
    steps = list(range(5, 51, 5))
    epochs = [round(s / 20, 2) for s in steps]
    assert epoch_boundaries(steps, epochs) == [(1, 20.0), (2, 40.0)]  # 2.5 epochs: two ends inside
    assert epoch_boundaries([10, 20], [0.5, 1.0]) == []  # the end of the only epoch is no boundary
    # Unequal epochs interpolate: epoch 1 ends between step 30 (0.9) and step 40 (1.1).
    assert epoch_boundaries([30, 40, 60], [0.9, 1.1, 1.5]) == [(1, pytest.approx(35.0))]


def test_moving_average_is_centred() -> None:
    ramp = np.arange(10.0)
    assert _moving_average(ramp, 5).tolist() == ramp.tolist()  # no lag on a straight line
    assert _moving_average(np.array([1.0, 5, 1, 5, 1]), 3).tolist() == pytest.approx([1, 7 / 3, 11 / 3, 7 / 3, 1])
