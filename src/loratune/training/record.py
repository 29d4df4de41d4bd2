"""The last step of a training run: the adapter with what serving and evaluation need beside it,
and run_summary.json (the figures a report shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loratune import run_dir as run_files
from loratune.json_files import read_jsonl, write_json
from loratune.training.check import CheckedRun
from loratune.training.trainer import PaceClock


def save_adapter(checked: CheckedRun, model: Any, run_dir: Path) -> Path:
    """The adapter, its tokenizer, and loratune.json: what serving and evaluation need to use it."""
    cfg = checked.cfg
    adapter_dir = run_dir / run_files.ADAPTER
    model.save_pretrained(str(adapter_dir))
    checked.model.tokenizer.save_pretrained(str(adapter_dir))
    write_json(adapter_dir / "loratune.json", {
        "name": cfg.name,
        "task": cfg.task,
        "base_model": cfg.model,
        "base_path": checked.model.resolved.path,
        "model_type": checked.model.model_type,
        "use_chat_template": cfg.data.use_chat_template,
        "system_prompt": cfg.data.system_prompt,
        "max_source_tokens": cfg.data.max_source_tokens,
        "max_target_tokens": cfg.data.max_target_tokens,
        "init_adapter": cfg.lora.init_adapter,
    })
    return adapter_dir


def eval_loss_start(run_dir: Path) -> float | None:
    """The loss before training, as logged at step 0 (kept across resumes)."""
    for row in read_jsonl(run_dir / run_files.METRICS_LOG) if (run_dir / run_files.METRICS_LOG).is_file() else []:
        if row.get("step") == 0 and isinstance(row.get("eval_loss"), (int, float)):
            return float(row["eval_loss"])
    return None


def summarize(checked: CheckedRun, trainer: Any, fitted: dict[str, Any], lines: dict[str, str], run_dir: Path,
              world_size: int, compiled: bool = False) -> dict[str, Any]:

    cfg, wall = checked.cfg, fitted["wall"]
    clock = next((c for c in trainer.callback_handler.callbacks if isinstance(c, PaceClock)), None)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    return {
        "model": cfg.model,
        "task": cfg.task,
        "model_type": checked.model.model_type,
        **lines,
        "train_rows": len(checked.train_features),
        "eval_rows": checked.eval_rows,
        "eval_loss_rows": len(checked.eval_features),
        "steps": trainer.state.global_step,
        "max_minutes": cfg.train.max_minutes,
        "wall_time_s": round(wall, 1),
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "compiled": compiled,
        # The first step pays one-time costs (compiling, with train.compile); the pace after it:
        "first_step_s": clock.first_step_s() if clock else None,
        "tokens_per_s_after_first_step": clock.tokens_per_s_after_first_step() if clock else None,
        "eval_loss_start": eval_loss_start(run_dir),
        "eval_loss_end": fitted["final_eval"],
        "train_loss": fitted["output"].training_loss,
        "init_adapter": cfg.lora.init_adapter,
        "precision": checked.precision,
        "device": checked.device,
        # The rows per step training ran with: the configured size, or what `auto` found to fit.
        "batch_size": trainer.state.train_batch_size or trainer.args.per_device_train_batch_size,
        # train.batch_size: auto on CUDA: the probes that found it, and the Trainer's out-of-memory
        # restarts after them (each one a smaller batch; 0 when the probed size fitted).
        "batch_fit": fitted.get("batch_fit"),
        "oom_restarts": clock.begins - 1 if clock and clock.begins else None,
        "peak_gpu_memory_gb": (round(torch.cuda.max_memory_allocated() / 1e9, 2)
                               if checked.device == "cuda" else None),
        "world_size": world_size,
        "resumed": checked.resume,
    }
