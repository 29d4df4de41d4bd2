"""Typed run configuration: YAML file + `--set key=value` overrides, validated, saved per run.

The dataclasses below are the whole schema. Loading walks them field by field, so an unknown key
or a value of the wrong type is reported with its dotted key and the file it came from, e.g.
`configs/x.yaml: lora.r: expected an integer, got 'sixteen'`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from loratune.errors import ConfigError
from loratune.tasks import TASKS

Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass
class DataSettings:
    """Where rows come from and how long they may be."""

    train: Optional[str] = None
    """Training rows: a local .json/.jsonl/.csv/.parquet file or a hub dataset name."""
    eval: Optional[str] = None
    """Held-out rows. When empty, `eval_fraction` of the training rows are split off (seeded)."""
    train_split: str = "train"
    """Split name when `train` is a hub dataset."""
    eval_split: Optional[str] = None
    """Split name when `eval` is a hub dataset."""
    eval_fraction: float = 0.1
    """Fraction held out when no eval file is given (the original used 90/10)."""
    max_train_rows: Optional[int] = None
    """Use at most this many training rows (after shuffling with the seed)."""
    max_eval_rows: Optional[int] = None
    """Use at most this many held-out rows."""
    max_source_tokens: int = 512
    """Longest prompt in tokens (the original truncated at 512)."""
    max_target_tokens: int = 256
    """Longest target in tokens."""
    length_policy: Literal["truncate", "drop"] = "truncate"
    """`truncate` rows over the limits, or `drop` them."""
    drop_percentile: Optional[float] = None
    """Also drop rows whose total length is above this percentile (the original used 99.9)."""
    system_prompt: Optional[str] = None
    """System message for chat models; None keeps the chat template's own default."""
    use_chat_template: Optional[bool] = None
    """Render prompts through the tokenizer's chat template. None: yes when the model has one."""


@dataclass
class LoraSettings:
    """LoRA hyper-parameters, passed to peft's LoraConfig."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    """Dropout on each adapted layer's LoRA input. 0 by default: a non-zero rate materialises a
    masked copy of the input of every adapted projection, forward and backward (~1.2-1.3x slower
    training of SmolLM2 on CPU). The FLAN-T5 recipe configs keep the original 0.05."""
    target_modules: Optional[list[str]] = None
    """Module names to adapt. None picks per architecture (T5: q, v, o; Llama: attention + MLP)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    init_adapter: Optional[str] = None
    """Continue training from this adapter (a run directory or an adapter directory)."""


@dataclass
class TrainSettings:
    """The training run, on transformers' Trainer."""

    epochs: float = 1.0
    max_steps: int = -1
    """Optimizer steps; -1 means run `epochs` epochs."""
    lr: float = 3e-3
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: Union[int, Literal["auto"]] = 8
    """Rows per device step, or `auto` (CUDA: find the largest that fits)."""
    grad_accum: int = 1
    seed: int = 42
    precision: Precision = "auto"
    """`auto`: bf16 autocast where the hardware has it (CPU included), else fp32. T5 never fp16."""
    weights_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """Dtype the base weights are loaded in. `auto`: fp32, and under bf16 training the frozen
    projection weights are then stored in bf16 (autocast need not re-cast them every step) while
    embeddings, norms and the residual stream stay fp32. `bf16` loads every weight in bf16, as the
    original recipe did. LoRA weights and their optimizer state stay fp32 either way."""
    eval_steps: Optional[int] = None
    """Eval loss every N steps; None evaluates once per epoch."""
    eval_loss_rows: Optional[int] = None
    """Compute the eval loss on at most this many held-out rows (None: all). Generation-based
    evaluation (`eval.limit`) is separate."""
    logging_steps: int = 10
    save_steps: Optional[int] = None
    """Checkpoint every N steps (a multiple of eval_steps, so the best checkpoint can be kept);
    None checkpoints with each evaluation."""
    max_minutes: Optional[float] = None
    """Train for about this many minutes: the first steps are timed, then the number of steps is
    fixed so the run (evaluations included) ends within the budget, and the LR schedule is fitted
    to that length so it runs whole. `epochs` / `max_steps` stay upper bounds."""
    save_total_limit: int = 2
    keep_best: bool = True
    """End with the checkpoint of lowest eval loss (True) or the last one (False). Use False when the
    eval-loss rows are the rows the adapter is judged on, so no choice is made on them."""
    group_by_length: bool = True
    """Batch rows of similar length together, so dynamic padding wastes little."""
    pad_to_max_length: bool = False
    """Pad every row to the max lengths (the original recipe; slower). Default: dynamic padding."""
    pad_to_multiple_of: Union[int, Literal["auto"]] = "auto"
    """Round each batch's padded width up to a multiple of this (1: no rounding). `auto`: 32 on CPU
    under bf16, where every new width slowed the rest of a long run (data.pad_multiple), else 1."""
    completion_only_logits: bool = True
    """Causal LMs: project to the vocabulary only from the first answer position (same loss,
    less compute and memory). False uses the model's own loss over every position."""
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    """QLoRA: load base weights in 4 bit (CUDA + bitsandbytes only)."""
    num_threads: Optional[int] = None
    """CPU threads for torch; None keeps torch's default."""
    compile: Union[bool, Literal["auto"]] = "auto"
    """torch.compile each decoder layer for training (~1.6x per step on CPU, after ~45 s of
    compiling). `auto`: on for causal models on CPU in runs of >= 3 budgeted minutes or >= 150
    steps (loratune/training/compilation.py says why)."""


@dataclass
class GenerationSettings:
    """How evaluation generates. Greedy by default; the original used top_k=30 and
    repetition_penalty=1.2 with max_new_tokens=200."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: float = 1.0
    num_beams: int = 1


@dataclass
class SqlEvalSettings:
    databases: Optional[str] = None
    """Spider-style database directory (`<dir>/<db_id>/<db_id>.sqlite`) for real-database checks."""
    num_dbs: int = 8
    """Synthesized databases per query for test-suite execution accuracy."""
    timeout_s: float = 2.0
    """Per-query time limit."""


@dataclass
class EvalSettings:
    limit: Optional[int] = 200
    """Evaluate on at most this many held-out rows."""
    batch_size: int = 16
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    sql: SqlEvalSettings = field(default_factory=SqlEvalSettings)
    bootstrap_samples: int = 1000
    seed: int = 0
    progress_rows: Optional[int] = None
    """After training, score each saved checkpoint on this many eval rows by execution accuracy
    and draw plots/accuracy_vs_time.png (SQL tasks; None: off). Keep checkpoints with
    train.eval_steps and a train.save_total_limit that covers them."""


@dataclass
class RunConfig:
    """One LoRA run: which model, which task, which data, how to train and evaluate."""

    name: str = "run"
    model: str = "smollm2-135m-instruct"
    """Built-in name, hub id, local directory, or .gguf file."""
    task: str = "prompt-completion"
    output_dir: str = "runs"
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- loading and validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return "a list of " + _type_name(typing.get_args(tp)[0]) + "s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if isinstance(value, str):  # `--set lora.target_modules=q,v` is convenient on a shell
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, source, prefix=key + ".")
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    if not ok:
        raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _build(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in names]
    if unknown:
        known = ", ".join(sorted(prefix + n for n in names))
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known keys here: {known})")
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in values.items()}
    obj = cls(**kwargs)
    return obj


def validate(cfg: RunConfig, source: str) -> RunConfig:
    """Range checks that types alone cannot express. Each error names the key."""

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {why}")

    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise bad("name", f"must be a plain directory name, got {cfg.name!r}")
    checks = [
        ("lora.r", cfg.lora.r > 0, "must be positive"),
        ("lora.alpha", cfg.lora.alpha > 0, "must be positive"),
        ("lora.dropout", 0.0 <= cfg.lora.dropout < 1.0, "must be in [0, 1)"),
        ("train.lr", cfg.train.lr > 0, "must be positive"),
        ("train.epochs", cfg.train.epochs > 0, "must be positive"),
        ("train.max_steps", cfg.train.max_steps == -1 or cfg.train.max_steps > 0, "must be -1 or positive"),
        ("train.grad_accum", cfg.train.grad_accum >= 1, "must be at least 1"),
        ("train.warmup_ratio", 0.0 <= cfg.train.warmup_ratio < 1.0, "must be in [0, 1)"),
        ("train.logging_steps", cfg.train.logging_steps >= 1, "must be at least 1"),
        ("data.eval_fraction", 0.0 < cfg.data.eval_fraction < 1.0, "must be in (0, 1)"),
        ("data.max_source_tokens", cfg.data.max_source_tokens > 0, "must be positive"),
        ("data.max_target_tokens", cfg.data.max_target_tokens > 0, "must be positive"),
        ("eval.batch_size", cfg.eval.batch_size >= 1, "must be at least 1"),
        ("eval.generation.max_new_tokens", cfg.eval.generation.max_new_tokens >= 1, "must be at least 1"),
        ("eval.sql.num_dbs", cfg.eval.sql.num_dbs >= 1, "must be at least 1"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise bad(key, why)
    if cfg.train.max_minutes is not None and cfg.train.max_minutes <= 0:
        raise bad("train.max_minutes", "must be positive (or null for no time budget)")
    if cfg.train.save_steps is not None:
        if not cfg.train.eval_steps:
            raise bad("train.save_steps", "needs train.eval_steps (checkpoints are kept by their eval loss)")
        if cfg.train.save_steps < 1 or cfg.train.save_steps % cfg.train.eval_steps:
            raise bad("train.save_steps", f"must be a positive multiple of train.eval_steps ({cfg.train.eval_steps})")
    if isinstance(cfg.train.batch_size, int) and cfg.train.batch_size < 1:
        raise bad("train.batch_size", "must be at least 1 or 'auto'")
    if isinstance(cfg.train.pad_to_multiple_of, int) and cfg.train.pad_to_multiple_of < 1:
        raise bad("train.pad_to_multiple_of", "must be at least 1 or 'auto'")
    if cfg.data.drop_percentile is not None and not 0 < cfg.data.drop_percentile <= 100:
        raise bad("data.drop_percentile", "must be in (0, 100]")
    if cfg.train.eval_loss_rows is not None and cfg.train.eval_loss_rows < 1:
        raise bad("train.eval_loss_rows", "must be at least 1")
    for key in ("max_train_rows", "max_eval_rows"):
        value = getattr(cfg.data, key)
        if value is not None and value < 1:
            raise bad(f"data.{key}", "must be at least 1")
    if cfg.eval.limit is not None and cfg.eval.limit < 1:
        raise bad("eval.limit", "must be at least 1 (or null for all rows)")
    if cfg.eval.progress_rows is not None and cfg.eval.progress_rows < 1:
        raise bad("eval.progress_rows", "must be at least 1 (or null to skip accuracy against time)")

    if cfg.task not in TASKS:
        raise bad("task", f"unknown task {cfg.task!r}; choose one of: {', '.join(sorted(TASKS))}")
    return cfg


def config_from_dict(values: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Build and validate a RunConfig from plain values (as read from YAML)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    return validate(_build(RunConfig, values, source), source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], c), the value parsed as YAML (so 3e-3, true, null, [q, v] work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.max_steps=50")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), _fix_yaml_floats(value)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return values


def _fix_yaml_floats(node: Any) -> Any:
    # PyYAML follows YAML 1.1, where `3e-3` (no dot) is a string. Users mean a number.
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str):
        try:
            if "e" in node.lower() and any(ch.isdigit() for ch in node) and not node.isalpha():
                return float(node)
        except ValueError:
            return node
    return node


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A YAML mapping from `text`; errors name `source` (and the line, for syntax errors)."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(values, dict) and values is not None:
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    return _fix_yaml_floats(values or {})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line, for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config, apply `--set` overrides, validate. Errors name the key and file."""
    values = apply_overrides(read_yaml(path), overrides or [])
    source = str(path) + (" (with --set overrides)" if overrides else "")
    return config_from_dict(values, source)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every key, defaults included) as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
