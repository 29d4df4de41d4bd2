"""`train.compile`: torch.compile each decoder layer for training, and only where it pays.

Why: on a CPU a training step of a small model is mostly not matmuls. A profile of SmolLM2-135M
under bf16 autocast (bench/train_levers.py) spends ~40% of the step in elementwise work between
them (RMSNorm, rotary, SiLU, LoRA scaling, autocast's casts), one small kernel at a time.
Inductor fuses those ops; loratune's step then runs at ~1.6x (bench/train_speed.py).

Why per layer ("regional" compilation) and not the whole model: every decoder layer runs the same
code, so one compiled graph serves all of them and compiling costs one layer's worth (~40 s on a
2-core CPU, cold), against ~335 s for the whole model (30 layers unrolled into one graph) for the
same speed. Two conditions keep it at one graph: no KV cache in training (`use_cache=False`; with a
cache each layer guards on its own cache slot and recompiles, and after 8 recompiles torch falls
back to uncompiled code), and evaluation during training runs uncompiled (`EagerEvaluation`), as
eval mode would need graphs of its own for a few seconds of forward passes. Two more keep it at one
graph per run rather than two or three: one attention implementation for the whole run
(`attention.run_attention`), and a first layer whose input requires a gradient like the others'
(`compile_layers`).

`auto` compiles where it was measured to pay: causal models on CPU, in one process, without
gradient checkpointing, in runs long enough to win back the compile time (`AUTO_MIN_MINUTES` of
budget, or `AUTO_MIN_STEPS` steps). Compiled code is cached on disk by torch (inductor's cache), so
a second run of the same model compiles faster; loratune keeps that cache beside its models, one
folder per vector ISA (`compile_cache_dir`), not in torch's default /tmp, which many systems empty at
every boot.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from pathlib import Path
from typing import Any

import torch

from loratune.errors import ConfigError
from loratune.models.builtin import cache_dir

AUTO_MIN_MINUTES = 3.0
"""`auto` compiles a time-budgeted run of at least this many minutes: at ~1.6x per step, the ~40-60 s of
a cold compile are won back after about two minutes of training."""
AUTO_MIN_STEPS = 150
"""...or a run of at least this many optimizer steps (SmolLM2-135M, 8 rows: ~1 s per step on 2 cores)."""


def planned_steps(cfg: Any, train_rows: int, world_size: int = 1) -> int | None:
    """Optimizer steps the config asks for (`max_steps`, else epochs over the rows); None if unknown."""
    t = cfg.train
    if t.max_steps and t.max_steps > 0:
        return t.max_steps
    if t.batch_size == "auto":
        return None
    per_step = t.batch_size * t.grad_accum * world_size
    return math.ceil(math.ceil(train_rows / per_step) * t.epochs)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor builds CPU kernels with (g++, clang++ or $CXX), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # torch raises a plain RuntimeError (or worse) when it finds none
        return None


def check_compile_possible(cfg: Any, device: str) -> None:
    """`train.compile: true` on a CPU without a C++ compiler fails at the first step, minutes in;
    fail before loading instead. (`auto` just stays off there.)"""

    if cfg.train.compile is True and device == "cpu" and cpp_compiler() is None:
        raise ConfigError("train.compile: true needs a C++ compiler on CPU (torch's inductor builds its "
                          "kernels with g++ or clang++, or $CXX); install one or set train.compile: auto")


def compile_decision(cfg: Any, *, model_type: str, device: str, train_rows: int, world_size: int = 1) -> tuple[bool, str]:
    """Whether to compile this run's decoder layers, and why (one line for the log)."""
    setting = cfg.train.compile
    if setting is True:
        if device != "cpu":  # honoured, but say what was measured (docs/gpu.md)
            return True, (f"train.compile: true (on {device} it measured slower than uncompiled training: "
                          "0.41x plain_hf on an H200; auto leaves GPUs uncompiled)")
        return True, "train.compile: true"
    if setting is False:
        return False, "train.compile: false"
    blockers = [
        (device != "cpu", f"device {device} (slower there, docs/gpu.md)"),
        (model_type != "causal", f"{model_type} model (measured on causal models only)"),
        (world_size > 1, f"{world_size} processes"),
        (cfg.train.gradient_checkpointing, "train.gradient_checkpointing"),
    ]
    for blocked, why in blockers:
        if blocked:
            return False, f"train.compile: auto -> off: {why}"
    minutes = cfg.train.max_minutes
    steps = planned_steps(cfg, train_rows, world_size)
    if minutes is not None:
        long_enough = minutes >= AUTO_MIN_MINUTES
        size = f"train.max_minutes={minutes:g} ({'>=' if long_enough else '<'} {AUTO_MIN_MINUTES:g})"
    else:
        long_enough = steps is not None and steps >= AUTO_MIN_STEPS
        size = f"{steps} steps ({'>=' if long_enough else '<'} {AUTO_MIN_STEPS})"
    if long_enough and cpp_compiler() is None:  # last: finding it imports inductor (~1 s)
        return False, "train.compile: auto -> off: no C++ compiler found (inductor builds CPU kernels with one)"
    return long_enough, f"train.compile: auto -> {'on' if long_enough else 'off'}: {size}"


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks (decoder layers; T5's encoder and decoder blocks)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


_INPUT_GRADS_ENABLED: weakref.WeakSet = weakref.WeakSet()
"""Models whose input-gradient hook `compile_layers` added (and `uncompile_layers` removes); a hook
that gradient checkpointing added stays."""


def compile_cache_dir() -> Path:
    """Where inductor caches compiled code for this process: `$TORCHINDUCTOR_CACHE_DIR` if the user
    set it, else `<loratune's cache>/torchinductor/<vector ISA>` (set here: torch reads the variable
    whenever it looks for its cache).

    torch's default is /tmp/torchinductor_<user>, and many systems empty /tmp at boot: then every
    first run after a restart compiles cold. SmolLM2-135M's first compiled step on a 2-core CPU:
    ~35-40 s cold against ~8-11 s warm (bench/compile_cost.py layers; docs/benchmarks.md). vLLM
    keeps its torch.compile cache under ~/.cache for the same reason.

    One folder per vector ISA (`vec_isa_name`), because ~/.cache may be shared by machines of
    different kinds (a home directory on NFS), and torch 2.13's cache is not safe across them: a
    cache written on an AVX-512 CPU, read where inductor generates AVX2 code, gave NaN losses from the
    first step (SmolLM2-135M, fp32; `ATEN_CPU_CAPABILITY=avx2` on an AVX-512 machine: its cached
    graphs were reused and their AVX-512 kernel source compiled for AVX2; docs/log.md, 2026-11-27,
    2-core AMD EPYC as AVX2-only, commit d349e3e)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir


    # torch writes its default into the variable the first time it looks (importing transformers
    # and peft does), so "set" means set to anything but that default. (Taking any value for the
    # user's choice left the cache in torch's /tmp default outside the tests: commit fad0b59.)
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return Path(current)
    ours = cache_dir() / "torchinductor" / vec_isa_name()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(ours)  # torch reads it at every use
    return ours


def vec_isa_name() -> str:
    """The vector ISA inductor generates CPU code for here, as a folder name: `avx512-avx512_vnni`,
    `avx2`, `amx...`, `invalid_vec_isa` (no vector code), ... (`ATEN_CPU_CAPABILITY` can lower it)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return "-".join(str(pick_vec_isa()).lower().split()) or "invalid_vec_isa"


def compile_layers(model: Any, *, fall_back: bool = False) -> int:
    """Compile each decoder layer in place (parameter names unchanged, so saving is unaffected).

    `dynamic=True`: batches differ in width and rows; one graph with symbolic sizes serves them all.
    `fall_back` (for `auto`): a layer that fails to compile runs uncompiled instead of failing the
    run (torch's `suppress_errors`). Returns how many layers were compiled.
    """
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"train.compile: found no decoder layers in {type(model).__name__}")
    if fall_back:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
    compile_cache_dir()
    set_use_cache(model, False)
    # The first layer's input is the frozen embeddings' output, which needs no gradient; dynamo
    # guards on that, so the first layer would be a graph of its own, compiled forward and backward
    # like the rest's: cold first step 54.5/52.3 s with two graphs, 38.6/37.1 s with one
    # (bench/compile_cost.py layers; 2-core AMD EPYC, 2026-11-26, commit ecd166a). Making that
    # output require a gradient (transformers' own hook, the one gradient checkpointing uses) costs
    # one unneeded activation gradient through the first layer's q/k/v (~0.2% of the FLOPs): steps
    # alternated in one process ran 1.010x (bf16) and 1.004x (fp32) the two-graph speed, i.e. no
    # measurable cost.
    if hasattr(model, "enable_input_require_grads") and not getattr(model, "_require_grads_hooks", None):
        model.enable_input_require_grads()
        _INPUT_GRADS_ENABLED.add(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def uncompile_layers(model: Any) -> None:
    """Back to plain modules (after training: generation must not trigger compilation)."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None  # what nn.Module.compile set; None restores the plain call
    if model in _INPUT_GRADS_ENABLED:
        model.disable_input_require_grads()
        _INPUT_GRADS_ENABLED.discard(model)
    set_use_cache(model, True)


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def set_use_cache(model: Any, value: bool) -> None:
    """Training needs no KV cache: building one costs a little, and under compilation it would
    make every layer recompile (see the module docstring)."""
    config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = value


class EagerEvaluation:
    """Mixed into the Trainers: evaluation runs the layers uncompiled (no eval-mode graphs to
    compile for a few forward passes); training keeps its compiled layers."""

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        with set_stance("force_eager") if set_stance else contextlib.nullcontext():
            return super().evaluate(*args, **kwargs)
