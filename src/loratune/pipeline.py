"""Multi-stage training: each stage continues the previous stage's adapter, then the forgetting matrix.

A pipeline file names an ordered list of stages, each an ordinary run config:

    name: pipeline-text2sql          # the pipeline's folder is output_dir/name
    output_dir: runs                 # every stage's run directory is output_dir/<stage name>
    stages:
      - stage1.yaml                  # a run config file, relative to this file
      - config: stage1.yaml          # a file with some keys replaced (merged key by key)
        name: stage2
        task: llama2-sql
      - {name: stage3, task: ..., data: {...}}   # an inline run config

Stage k+1 starts from stage k's adapter (`lora.init_adapter`) unless it names its own (a path, or
null for a fresh adapter). The whole file is checked before anything trains, so a typo in the last
stage costs seconds, not the first stage's training. A rerun skips stages whose run directory
already holds an adapter trained from the same resolved config, and resumes one killed mid-training
from its checkpoint, so a pipeline killed during its evaluation does not retrain.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from loratune.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    parse_override,
    read_yaml,
)
from loratune.data import LOCAL_SUFFIXES, load_splits
from loratune.errors import (
    AdapterError,
    ConfigError,
    DataError,
    LoratuneError,
    RunDirError,
)
from loratune.evaluation.forgetting import write_forgetting
from loratune.json_files import write_json
from loratune.models.lora import resolve_adapter_dir
from loratune.reporting.plots import draw_forgetting
from loratune.tasks import get_task
from loratune.training.run import train_run

Log = Callable[[str], None]
PIPELINE_KEYS = ("name", "output_dir", "stages")
RESERVED_NAMES = ("base",)
"""`base` labels the base model's row in the forgetting matrix, so no stage may take it."""
StageState = Literal["train", "resume", "done"]


@dataclass
class Stage:
    """One stage: its resolved run config and where it came from (for error messages)."""

    cfg: RunConfig
    where: str
    """e.g. `configs/pipeline-text2sql.yaml: stages[1]`"""
    chained: bool
    """True when `lora.init_adapter` was set to the previous stage's run directory by the pipeline."""

    @property
    def name(self) -> str:
        return self.cfg.name


@dataclass
class Pipeline:
    name: str
    output_dir: str
    stages: list[Stage]
    source: Path

    @property
    def folder(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- loading


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, key by key in nested mappings (so `data: {train: x}` keeps data.eval)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _stage_values(entry: Any, folder: Path, where: str) -> tuple[dict[str, Any], str]:
    """The raw values of one stage entry and a label naming the file they came from."""
    if isinstance(entry, str) or (isinstance(entry, dict) and "config" in entry):
        ref = entry if isinstance(entry, str) else entry["config"]
        if not isinstance(ref, str) or not ref.strip():
            raise ConfigError(f"{where}.config: expected a run config path, got {ref!r}")
        path = folder / ref
        if not path.is_file():
            nearby = ", ".join(sorted(p.name for p in folder.glob("*.yaml"))[:12])
            raise ConfigError(f"{where}: run config {ref!r} not found (looked for {path}; configs there: {nearby})")
        values = read_yaml(path)
        if isinstance(entry, dict):
            values = _merge(values, {k: v for k, v in entry.items() if k != "config"})
        return values, f"{where} ({path})"
    if isinstance(entry, dict):
        return copy.deepcopy(entry), where
    raise ConfigError(
        f"{where}: expected a run config path or a mapping of run config keys, got {entry!r}"
    )


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Read and validate a pipeline file: every stage config, unique names, one base model.

    `--set` overrides apply to every stage; `--set output_dir=DIR` also moves the pipeline's folder.
    Errors name the file, the stage (`stages[i]`) and the key.
    """
    path = Path(path)
    overrides = overrides or []
    values = read_yaml(path)
    unknown = [k for k in values if k not in PIPELINE_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown key '{unknown[0]}' (a pipeline file has {', '.join(PIPELINE_KEYS)}; "
            "run settings belong in a stage)"
        )
    name = values.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{path}: name: must be a plain directory name, got {name!r}")
    output_dir = values.get("output_dir", "runs")
    for text in overrides:  # parsed here too, so a malformed --set fails before any stage
        key, value = parse_override(text)
        if key == ["output_dir"]:
            output_dir = value
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"{path}: output_dir: expected a directory path, got {output_dir!r}")
    entries = values.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: stages: expected a list of run configs (paths or mappings), got {entries!r}")

    stages: list[Stage] = []
    for i, entry in enumerate(entries):
        where = f"{path}: stages[{i}]"
        raw, label = _stage_values(entry, path.parent, where)
        raw["output_dir"] = output_dir
        apply_overrides(raw, overrides)
        if raw.get("lora") is None:  # absent, or `lora:` with nothing under it
            raw["lora"] = {}
        # "Unless it names its own": a key present in the stage, even null (= a fresh adapter).
        chained = bool(stages) and isinstance(raw["lora"], dict) and "init_adapter" not in raw["lora"]
        if chained:
            raw["lora"]["init_adapter"] = str(stages[-1].cfg.run_dir)
        source = label + (" with --set overrides" if overrides else "")
        stages.append(Stage(config_from_dict(raw, source), where, chained))

    seen: dict[str, str] = {}
    for stage in stages:
        if stage.name in seen:
            raise ConfigError(f"{stage.where}: name: {stage.name!r} is also the name of {seen[stage.name]}; "
                              "each stage needs its own run directory")
        if stage.name in RESERVED_NAMES or stage.name == name:
            taken = "the base model's label" if stage.name in RESERVED_NAMES else "the pipeline's folder"
            raise ConfigError(f"{stage.where}: name: {stage.name!r} is {taken}; choose another stage name")
        seen[stage.name] = stage.where
        if stage.cfg.model != stages[0].cfg.model:
            raise ConfigError(
                f"{stage.where}: model: {stage.cfg.model!r} differs from stages[0]'s {stages[0].cfg.model!r}; "
                "a pipeline continues one base model's adapter"
            )
    return Pipeline(name=name, output_dir=output_dir, stages=stages, source=path)


# ---------------------------------------------------------------- checking (no writes)


def _is_local(source: str) -> bool:

    return Path(source).suffix.lower() in LOCAL_SUFFIXES or Path(source).exists()


def _restate(exc: LoratuneError, where: str) -> LoratuneError:
    """The same error type with the stage prepended, so the user knows which stage is at fault."""
    return type(exc)(f"{where}: {exc}")


def _stage_state(stage: Stage, overwrite: bool) -> StageState | None:
    """`done` (an adapter trained from this very config), `resume` (same config, a checkpoint, no
    adapter yet), `train` (nothing trained there), or None when the directory holds another run.

    Only an adapter or a checkpoint makes a directory an earlier run, as for `loratune train`: what a
    failed start leaves (a config, a log) is replaced."""
    run_dir = stage.cfg.run_dir
    has_adapter = (run_dir / "adapter" / "adapter_config.json").is_file()
    has_checkpoint = any((run_dir / "checkpoints").glob("checkpoint-*/adapter_config.json"))
    if overwrite or not (has_adapter or has_checkpoint):
        return "train"
    saved = run_dir / "config.yaml"
    if not saved.is_file() or yaml.safe_load(saved.read_text(encoding="utf-8")) != config_to_dict(stage.cfg):
        return None
    if has_adapter:
        return "done" if (run_dir / "run_summary.json").is_file() else None
    return "resume"


def check_pipeline(pipeline: Pipeline, *, overwrite: bool = False) -> list[StageState]:
    """Everything that can fail before training, checked without writing: data files and their
    columns, adapters a stage starts from, and run directories in the way. Returns what each
    stage will do."""

    stage_dirs = [str(s.cfg.run_dir) for s in pipeline.stages]
    for i, stage in enumerate(pipeline.stages):
        data = stage.cfg.data
        if all(_is_local(s) for s in (data.train, data.eval) if s):  # hub datasets load at training
            try:
                load_splits(data, get_task(stage.cfg.task), stage.cfg.train.seed)
            except DataError as exc:
                raise _restate(exc, f"{stage.where} ({stage.name})") from None
        init = stage.cfg.lora.init_adapter
        if init and not stage.chained:
            if init in stage_dirs[i:]:
                raise ConfigError(f"{stage.where}: lora.init_adapter: {init} is this or a later stage's run directory")
            if init not in stage_dirs[:i]:
                try:
                    resolve_adapter_dir(init)
                except AdapterError as exc:
                    raise _restate(exc, f"{stage.where}: lora.init_adapter") from None

    states: list[StageState] = []
    for stage in pipeline.stages:
        state = _stage_state(stage, overwrite)
        # Once a stage (re)trains, every later stage starts from a new adapter and must retrain.
        if states and states[-1] != "done" and state in ("done", "resume"):
            state = None
        if state is None:
            raise RunDirError(
                f"{stage.where}: {stage.cfg.run_dir} already holds a run that this pipeline cannot reuse "
                "(another config, or an earlier stage retrains); rerun with --overwrite, or change "
                "output_dir (--set output_dir=DIR)"
            )
        states.append(state)
    return states


# ---------------------------------------------------------------- running


def run_pipeline(
    path: str | Path,
    overrides: list[str] | None = None,
    *,
    overwrite: bool = False,
    limit: int | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Check the whole pipeline, train its stages in order, then write the forgetting matrix
    (`forgetting.json`, `forgetting.png`, `forgetting.md`) in `output_dir/<pipeline name>/`."""

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be at least 1, got {limit}")
    pipeline = load_pipeline(path, overrides)
    states = check_pipeline(pipeline, overwrite=overwrite)
    log(f"Pipeline {pipeline.name}: {' -> '.join(s.name for s in pipeline.stages)}")

    for k, (stage, state) in enumerate(zip(pipeline.stages, states), start=1):
        start = stage.cfg.lora.init_adapter or "a new adapter"
        if state == "done":
            log(f"[stage {k}/{len(states)}] {stage.name}: already trained with this config in {stage.cfg.run_dir}; kept")
            continue
        log(f"[stage {k}/{len(states)}] {stage.name}: {'resuming' if state == 'resume' else 'training'}, from {start}")
        # overwrite=True on a directory without an adapter or checkpoint only clears a failed start.
        train_run(stage.cfg, resume=state == "resume", overwrite=state == "train", log=log)

    folder = pipeline.folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "pipeline.json", {
        "name": pipeline.name,
        "source": str(pipeline.source),
        "overrides": list(overrides or []),
        "stages": [
            {"name": s.name, "run_dir": str(s.cfg.run_dir), "task": s.cfg.task, "init_adapter": s.cfg.lora.init_adapter}
            for s in pipeline.stages
        ],
    })
    result = write_forgetting(folder, [s.cfg for s in pipeline.stages], limit=limit, log=log)
    log(f"Forgetting plot: {draw_forgetting(folder / 'forgetting.png', result)}")
    return result
