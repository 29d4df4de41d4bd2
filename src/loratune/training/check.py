"""The first step of a training run: every check that needs no model weights (about a second;
nothing loaded, nothing written), so a failed start leaves nothing that blocks the retry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loratune import run_dir as run_files
from loratune.config import RunConfig
from loratune.data import load_splits, tokenize_rows
from loratune.errors import ConfigError
from loratune.models.load import ModelInfo, inspect_model
from loratune.models.lora import resolve_adapter_dir
from loratune.models.precision import resolve_precision
from loratune.tasks import Task, get_task
from loratune.training.compilation import check_compile_possible


@dataclass
class CheckedRun:
    """What `check_run` established: everything training needs except the weights."""

    cfg: RunConfig
    task: Task
    model: ModelInfo
    device: str
    precision: str
    train_features: list[dict[str, Any]]
    eval_features: list[dict[str, Any]]
    eval_rows: int
    """Held-out rows before `train.eval_loss_rows` cut them for the loss."""
    data_stats: dict[str, Any]
    resume: bool
    overwrite: bool


def check_run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> CheckedRun:
    """Every check that needs no model weights, in the order a user fixes things; writes nothing."""

    task = get_task(cfg.task)
    run_files.check_run_dir(cfg.run_dir, resume=resume, overwrite=overwrite)
    if cfg.lora.init_adapter:
        resolve_adapter_dir(cfg.lora.init_adapter)
    train_rows, eval_rows = load_splits(cfg.data, task, cfg.train.seed)
    model = inspect_model(cfg.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg, model.model_type, device)
    check_compile_possible(cfg, device)
    train_features, train_stats = tokenize_rows(train_rows, task, model.tokenizer, model.model_type, cfg.data)
    eval_features, eval_stats = tokenize_rows(eval_rows, task, model.tokenizer, model.model_type, cfg.data)
    if not train_features:
        raise ConfigError(f"{cfg.data.train}: every training row was dropped by the length limits (data.*)")
    if not eval_features:
        raise ConfigError("data.eval: every eval row was dropped by the length limits (data.*)")
    n_eval = len(eval_features)
    if cfg.train.eval_loss_rows and cfg.train.eval_loss_rows < n_eval:
        eval_features = eval_features[: cfg.train.eval_loss_rows]
    return CheckedRun(
        cfg=cfg, task=task, model=model, device=device, precision=precision,
        train_features=train_features, eval_features=eval_features, eval_rows=n_eval,
        data_stats={"train": train_stats.as_dict(), "eval": eval_stats.as_dict()},
        resume=resume, overwrite=overwrite,
    )
