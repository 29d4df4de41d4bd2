"""LoRA on top of a loaded model, through peft: choose targets, apply, continue, count, merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loratune.config import LoraSettings
from loratune.errors import AdapterError
from loratune.models.load import load_model

# Per-architecture defaults. T5 follows the original recipe (q, v, o); Llama-family models get
# every attention and MLP projection, which is what QLoRA-style recipes found to work best.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "v", "o"],
    "mt5": ["q", "v", "o"],
    "umt5": ["q", "v", "o"],
    # Llama-family: every attention and MLP projection, which is peft's "all-linear" (all Linear
    # layers but the vocabulary projection), named so the saved adapter config lists them.
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bart": ["q_proj", "v_proj", "out_proj"],
}


def default_target_modules(model: Any) -> list[str] | str:
    """The default LoRA targets for this architecture; unknown ones get every linear layer."""
    model_type = getattr(model.config, "model_type", "")
    return DEFAULT_TARGETS.get(model_type, "all-linear")


def build_lora_config(settings: LoraSettings, model: Any, model_type: str) -> Any:
    from peft import LoraConfig, TaskType

    targets = settings.target_modules or default_target_modules(model)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias=settings.bias,
        task_type=TaskType.SEQ_2_SEQ_LM if model_type == "seq2seq" else TaskType.CAUSAL_LM,
    )


def resolve_adapter_dir(path: str | Path) -> Path:
    """Accept a run directory (with `adapter/`) or an adapter directory itself."""
    path = Path(path)
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    if not path.exists():
        raise AdapterError(f"{path}: no such run or adapter directory (train it first with `loratune train CONFIG`)")
    raise AdapterError(
        f"{path}: no adapter here (expected {path}/adapter/adapter_config.json); "
        "train one with `loratune train CONFIG`, or point at a directory that holds adapter_config.json"
    )


def apply_lora(model: Any, model_type: str, settings: LoraSettings) -> Any:
    """Wrap `model` with new LoRA layers, or with an existing adapter kept trainable.

    Continuing from an adapter (`lora.init_adapter`) loads its weights with `is_trainable=True`,
    which is the piece the original two-stage SQL recipe needs: stage 2 starts where stage 1 ended.
    """
    from peft import PeftModel, get_peft_model

    if settings.init_adapter:
        adapter_dir = resolve_adapter_dir(settings.init_adapter)
        try:
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        except Exception as exc:  # peft raises ValueError/KeyError/RuntimeError for mismatches
            raise AdapterError(f"lora.init_adapter: {adapter_dir} does not fit this model: {exc}") from None
    else:
        try:
            peft_model = get_peft_model(model, build_lora_config(settings, model, model_type))
        except ValueError as exc:
            names = sorted({name.split(".")[-1] for name, _ in model.named_modules() if name})[:30]
            raise AdapterError(
                f"lora.target_modules: {exc} (module names in this model include: {', '.join(names)})"
            ) from None
    ensure_trainable(peft_model)
    return peft_model


def ensure_trainable(model: Any) -> None:
    """Training zero parameters would 'succeed' and change nothing; make it an error instead."""
    trainable, _ = count_parameters(model)
    if trainable == 0:
        raise AdapterError("LoRA would train zero parameters; check lora.target_modules and lora.init_adapter")


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, all) parameter counts, LoRA weights included in `all` as the original did.

    peft's own count for peft models (it counts 4-bit packed weights as their logical size)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_parameters_line(model: Any) -> str:
    """The original's line: `Trainable parameters 9,437,184 || All parameters 792,587,264 || ...`."""
    trainable, total = count_parameters(model)
    return (
        f"Trainable parameters {trainable:,} || All parameters {total:,} || "
        f"Trainable parameter percentage: {100 * trainable / total:.2f}%"
    )


def adapter_and_base(run_or_adapter: str | Path, base: str | None = None) -> tuple[Path, dict[str, Any], str]:
    """An adapter's directory, its loratune.json, and its base model (`base` overrides the recorded one)."""
    adapter_dir = resolve_adapter_dir(run_or_adapter)
    meta = read_adapter_meta(adapter_dir)
    base_source = base or meta.get("base_model")
    if not base_source:
        raise AdapterError(f"{adapter_dir}: the base model is unknown; pass --base MODEL")
    return adapter_dir, meta, base_source


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    """The loratune metadata saved beside an adapter (task, base model, prompt settings)."""
    meta_path = adapter_dir / "loratune.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text(encoding="utf-8"))
    return {}


def merge_adapter(run_or_adapter: str | Path, output: str | Path, *, base: str | None = None) -> Path:
    """Fold the adapter into the base weights and save a plain transformers model (safetensors).

    The merged model needs neither peft nor loratune to load, and gives the same logits as
    base + adapter (up to float rounding).
    """
    from peft import PeftModel


    adapter_dir, meta, base_source = adapter_and_base(run_or_adapter, base)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise AdapterError(f"{output}: already exists and is not empty; choose another --output")
    loaded = load_model(base_source)
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir))
    merged = model.merge_and_unload()
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(output))
    (output / "loratune.json").write_text(
        json.dumps({**meta, "merged_from": str(adapter_dir), "base_model": base_source}, indent=2), encoding="utf-8"
    )
    return output
