"""The served models: one base model loaded once, and any number of LoRA adapters on top.

Adapters live side by side in one peft model (`load_adapter` / `delete_adapter`), so serving
ten adapters costs one base model plus ten small sets of LoRA weights. `base` names the model
without any adapter. A lock serialises generation with loading and unloading, because peft
changes the model's modules in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loratune.errors import AdapterExists, LoratuneError, ServeError
from loratune.inference.engine import run_to_end
from loratune.inference.jobs import Job
from loratune.inference.mixed_lora import MixedLoraForward
from loratune.models import builtin
from loratune.models.load import load_model
from loratune.models.lora import read_adapter_meta, resolve_adapter_dir
from loratune.models.precision import (
    autocast_context,
    bf16_generation,
    cast_linear_weights,
)
from loratune.serve.cpu_threads import release_openmp_threads
from loratune.serve.prompts import (
    PromptProfile,
    base_profile,
    context_limit,
    profile_from_meta,
)
from loratune.serve.schemas import ADAPTER_NAME_PATTERN

log = logging.getLogger("loratune.serve")

BASE_NAME = "base"
"""The model name that means "no adapter"."""

BASE_ADAPTER = "__base__"
"""peft's row name for "no adapter" in a mixed-adapter batch."""

RESERVED_NAMES = {BASE_NAME, BASE_ADAPTER}


@dataclass
class AdapterEntry:
    name: str
    adapter_dir: Path
    meta: dict[str, Any]
    profile: PromptProfile
    created: int


def parse_adapter_spec(spec: str) -> tuple[str, str]:
    """`NAME=RUN_DIR` -> (name, run_dir); a malformed spec is a ServeError naming it."""
    import re

    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ServeError(f"--adapter {spec!r}: expected NAME=RUN_DIR, e.g. --adapter sql=runs/sql1")
    if not re.match(ADAPTER_NAME_PATTERN, name) or name in RESERVED_NAMES:
        raise ServeError(
            f"--adapter {spec!r}: adapter names use letters, digits, '-' and '_' (at most 64) "
            f"and cannot be {BASE_NAME!r}"
        )
    return name, path


def _adapter_files(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(adapter dir, loratune meta, peft adapter_config) for a run or adapter directory."""

    adapter_dir = resolve_adapter_dir(path)
    try:
        peft_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        meta = read_adapter_meta(adapter_dir)
    except (OSError, ValueError) as exc:
        raise ServeError(f"{adapter_dir}: unreadable adapter files: {exc}") from None
    return adapter_dir, meta, peft_config


def _local_dir(source: str | None) -> str | None:
    """The directory a base-model source resolves to on this machine, if it does."""
    if not source:
        return None
    if source in builtin.CATALOG:
        cached = builtin.cached_model_path(source)
        return str(Path(cached).resolve()) if cached is not None else None
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else None


def _base_identities(*sources: str | None) -> set[str]:
    """Comparable names for a base model: the source strings and the directories they resolve to."""
    names = {str(source) for source in sources if source}
    return names | {d for d in map(_local_dir, sources) if d}


def adapter_base(meta: dict[str, Any], peft_config: dict[str, Any]) -> str | None:
    """The base model an adapter was trained on, as it recorded it."""
    return meta.get("base_model") or peft_config.get("base_model_name_or_path")


class ModelRegistry:
    """The base model plus named adapters; generation runs through `forward_for` under `lock`.

    Where bf16 is native, the Linear weights (the base's and every adapter's) are stored in bf16
    once at load and the model runs under bf16 autocast: the same numbers evaluation computes
    (`models.precision.cast_linear_weights` says why), without re-casting every weight at every token.
    """

    def __init__(self, loaded: Any, *, max_context: int | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.model.eval()
        self.bf16 = bf16_generation(self.model)
        if self.bf16:
            cast_linear_weights(self.model)  # the fp32 originals are not kept: serving never trains
        self.tokenizer = loaded.tokenizer
        self.model_type: str = loaded.model_type
        self.base_source: str = loaded.source
        self.base_profile = base_profile(self.tokenizer, self.model_type)
        self.context = context_limit(self.model, self.tokenizer, max_context)
        self.adapters: dict[str, AdapterEntry] = {}
        self.created = int(time.time())
        self.lock = threading.RLock()
        self._base_ids = _base_identities(loaded.source, loaded.path)
        self._mixed = MixedLoraForward()

    # ------------------------------------------------------------ names

    def names(self) -> list[str]:
        return [BASE_NAME, *self.adapters]

    def resolve_name(self, model: str) -> str | None:
        """The served name for a request's `model` (the base's own source also means `base`)."""
        if model in self.adapters or model == BASE_NAME:
            return model
        if model in (self.base_source, self.loaded.path):
            return BASE_NAME
        return None

    def profile(self, name: str) -> PromptProfile:
        return self.base_profile if name == BASE_NAME else self.adapters[name].profile

    # ------------------------------------------------------------ loading

    def check_base(self, name: str, meta: dict[str, Any], peft_config: dict[str, Any]) -> None:
        """An adapter must have been trained on this server's base model.

        A recorded base that exists here and is another model is an error. One that is not on
        this machine (moved, or trained elsewhere) is trusted with a warning: peft still refuses
        weights whose shapes do not fit.
        """
        sources = (meta.get("base_model"), meta.get("base_path"), peft_config.get("base_model_name_or_path"))
        recorded = _base_identities(*sources)
        other_base = bool(recorded) and not recorded & self._base_ids
        if other_base and any(_local_dir(source) for source in sources):
            raise ServeError(
                f"adapter {name!r} was trained on {adapter_base(meta, peft_config)!r} but this server's base "
                f"model is {self.base_source!r}; serve it from its own base (loratune serve --base ...)"
            )
        adapter_type = meta.get("model_type") or meta.get("kind")  # `kind` in adapters before 0.2
        if adapter_type and adapter_type != self.model_type:
            raise ServeError(f"adapter {name!r} is for a {adapter_type} model but the base is {self.model_type}")
        if other_base:
            log.warning("adapter %r records base model %r, which is not on this machine; serving it on %r",
                        name, adapter_base(meta, peft_config), self.base_source)

    def load_adapter(self, name: str, path: str | Path) -> AdapterEntry:
        """Load the adapter at `path` (run or adapter directory) under `name`."""
        from peft import PeftModel

        if name in RESERVED_NAMES:
            raise ServeError(f"{name!r} is reserved for the base model; choose another adapter name")
        adapter_dir, meta, peft_config = _adapter_files(path)
        self.check_base(name, meta, peft_config)
        with self.lock:
            if name in self.adapters:
                raise AdapterExists(f"an adapter named {name!r} is already loaded; unload it first")
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(adapter_dir), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
            except Exception as exc:  # peft raises ValueError/KeyError/RuntimeError on mismatches
                self._forget_partial(name)
                raise ServeError(f"adapter {name!r} ({adapter_dir}) does not fit the base model: {exc}") from None
            self.model.eval()
            if self.bf16:
                cast_linear_weights(self.model)  # the new adapter's LoRA layers
            self._mixed.install(self.model)  # rows of several adapters in one batch (inference/mixed_lora.py)
            entry = AdapterEntry(
                name, adapter_dir, meta, profile_from_meta(meta, self.tokenizer, self.model_type), int(time.time())
            )
            self.adapters[name] = entry
        release_openmp_threads()  # this thread's CPU threads go back to the decoding worker
        return entry

    def _forget_partial(self, name: str) -> None:
        """peft adds an adapter's layers before loading its weights; drop them when loading failed."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel) and name in self.model.peft_config:
            try:
                self.model.delete_adapter(name)
            except Exception:  # noqa: BLE001 - best effort; the zero-initialised layers change nothing
                log.warning("could not remove the partly loaded adapter %r", name)

    def unload_adapter(self, name: str) -> None:
        """Remove an adapter; removing the last one gives back the plain base model."""
        with self.lock:
            if name not in self.adapters:
                raise ServeError(f"no adapter named {name!r} is loaded")
            if len(self.adapters) == 1:
                # peft cannot run a PeftModel with no adapter left, so unwrap it instead.
                self.model = self.model.unload()
                self.model.eval()
            else:
                self.model.delete_adapter(name)
            del self.adapters[name]
        release_openmp_threads()

    # ------------------------------------------------------------ generation

    def mixed_batching(self) -> bool:
        """Whether peft can run several adapters in one batch (`adapter_names`); DoRA cannot."""
        from peft import PeftModel, PeftType

        if not isinstance(self.model, PeftModel):
            return True
        return all(
            config.peft_type == PeftType.LORA and not getattr(config, "use_dora", False)
            for config in self.model.peft_config.values()
        )

    def serves(self, name: str) -> bool:
        return name == BASE_NAME or name in self.adapters

    @contextlib.contextmanager
    def forward_for(self, names: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """The model set up to run row i through adapter `names[i]`, and the extra forward kwargs.

        Call under `lock`. One adapter for all rows (the common case, and the only one without
        mixed batching) activates it and runs the plain forward pass; several adapters, or base rows
        alone, go through `adapter_names` (`__base__` for no adapter), which `inference/mixed_lora.py`
        runs (base rows alone: the base layers only, without peft's `disable_adapter`, which toggles
        every layer on entry and exit: a step of 8 base rows went from 1.27x to 0.86x the time of 8
        rows on one adapter).
        """
        from peft import PeftModel

        model, extra = self.model, {}
        active: contextlib.AbstractContextManager = contextlib.nullcontext()
        if isinstance(model, PeftModel):
            unique = set(names)
            if unique == {BASE_NAME} and not self.mixed_batching():
                active = model.disable_adapter()
            elif len(unique) == 1 and unique != {BASE_NAME}:
                if model.active_adapter != names[0]:
                    model.set_adapter(names[0])
            else:
                extra["adapter_names"] = [BASE_ADAPTER if name == BASE_NAME else name for name in names]
        with torch.inference_mode(), active, autocast_context(model):
            yield model, extra

    def run_jobs(self, jobs: list[Job]) -> None:
        """Generate `jobs` together to the end (the terminal chat; the server's worker keeps a
        long-lived decode engine instead, see `inference/engine.py`)."""
        run_to_end(self, jobs)


def open_registry(base: str | None, adapter_specs: list[str], *, max_context: int | None = None) -> ModelRegistry:
    """Load the base model once and every `NAME=RUN_DIR` adapter on it (startup of serve/chat).

    Without `base`, the adapters' recorded base model is used; adapters recorded on different
    bases are a ServeError, since one server holds one base.
    """

    specs = [parse_adapter_spec(spec) for spec in adapter_specs]
    seen: set[str] = set()
    found: list[tuple[str, Path, dict[str, Any], dict[str, Any]]] = []
    for name, path in specs:
        if name in seen:
            raise ServeError(f"--adapter {name}=...: the name {name!r} is given twice")
        seen.add(name)
        try:
            found.append((name, *_adapter_files(path)))
        except LoratuneError as exc:
            raise ServeError(f"--adapter {name}={path}: {exc}") from None

    if base is None:
        bases = {name: adapter_base(meta, cfg) for name, _, meta, cfg in found}
        if not found:
            raise ServeError("nothing to serve: pass --base MODEL and/or --adapter NAME=RUN_DIR")
        missing = [name for name, b in bases.items() if not b]
        if missing:
            raise ServeError(f"adapter {missing[0]!r} does not record its base model; pass --base MODEL")
        first_name, first = next(iter(bases.items()))
        for name, other in bases.items():
            if not _base_identities(other) & _base_identities(first):
                raise ServeError(
                    f"adapters {first_name!r} and {name!r} were trained on different base models "
                    f"({first!r} and {other!r}); one server serves one base, so start one server per base"
                )
        base = first
    registry = ModelRegistry(load_model(base), max_context=max_context)
    for name, adapter_dir, _, _ in found:
        registry.load_adapter(name, adapter_dir)
    release_openmp_threads()  # loading ran parallel kernels on this thread; decoding may run on another
    return registry
