"""The one precision policy: which precision this machine computes in (bf16 where it is native,
else fp32), how a LoRA model is fitted to it for training, and how generation runs in it.

bf16 is native on CUDA GPUs that say so and on CPUs with AVX-512 BF16 or AMX; elsewhere it is
emulated, ~100x slower than fp32 (a 2048² matmul on an AVX2-only CPU: ~2 against ~150-180 GFLOP/s),
so loratune trains, evaluates and serves in fp32 there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from loratune.config import RunConfig
from loratune.errors import ConfigError

PRECISION_ENV = "LORATUNE_PRECISION"
CPUINFO = "/proc/cpuinfo"

ONEDNN_ISA_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""oneDNN (torch's CPU bf16 matmuls) never uses instructions above the ISA these name (the first set wins)."""
ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})
"""oneDNN ISA caps below AVX512_CORE_BF16 (its names, upper case): under one of them bf16 is emulated,
even on a CPU whose flags list avx512_bf16 or amx_bf16. (AVX2_VNNI_2 has bf16 dot products, but
/proc/cpuinfo's flags do not count those CPUs as native either.) Other values (DEFAULT, ALL, the
AVX512_CORE_BF16, AVX10 and AMX levels) leave the hardware's answer."""


def bf16_supported(device: str | torch.device | None = None) -> bool:
    """Whether `device` computes in bfloat16 natively (so bf16 training is fast, not emulated).

    CUDA asks torch; CPU needs AVX-512 BF16 or AMX (read from /proc/cpuinfo, else oneDNN) and no
    oneDNN ISA cap below them (`onednn_isa_cap`).
    `LORATUNE_PRECISION=fp32|bf16` forces the answer, so the bf16 path can be exercised (emulated,
    slowly) on a CPU without native bf16, and the fp32 path on one with it: the test suite runs both.
    """
    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ConfigError(f"{PRECISION_ENV}={forced!r}: use fp32 or bf16, or unset it")
        return forced == "bf16"
    device_type = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    if onednn_isa_cap() in ISAS_WITHOUT_BF16:
        return False
    try:
        with open(CPUINFO) as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def onednn_isa_cap() -> str | None:
    """The ISA cap set for oneDNN (`ONEDNN_MAX_CPU_ISA`, or its older name `DNNL_MAX_CPU_ISA`), upper case.

    Why it matters: a user who caps oneDNN at AVX2 (containers pinned for reproducible numbers, or to
    try what an AVX2-only CPU does, as docs/benchmarks.md does) gets emulated bf16 on a CPU whose
    flags say bf16 is native: measured on an AMD EPYC with AVX-512 BF16, a 2048² bf16 matmul under
    `ONEDNN_MAX_CPU_ISA=AVX2` ran at ~2 GFLOP/s against 176 in fp32."""
    for name in ONEDNN_ISA_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value.upper()
    return None


def weights_dtype_for(setting: str) -> torch.dtype:
    """The dtype to load base weights in, for `train.weights_dtype`.

    `auto` loads fp32: under bf16 autocast, `prepare_for_precision` then stores the frozen
    projection weights in bf16 (autocast rounds them so anyway) and keeps embeddings, norms and the
    residual stream fp32. Loading *every* weight in bf16 (`bf16`, the original recipe) made CPU
    training slower: a bf16 residual stream, and a bf16 tied vocabulary projection that matmul
    copies once per row (bench/train_levers.py).
    """
    return torch.bfloat16 if setting == "bf16" else torch.float32


def resolve_precision(cfg: RunConfig, model_type: str, device: str) -> str:
    """`auto` -> bf16 where the hardware supports it (CPU included), else fp32. Never fp16 for T5."""

    precision = cfg.train.precision
    if precision == "fp16" and model_type == "seq2seq":
        raise ConfigError("train.precision: fp16 overflows in T5 models; use bf16, fp32 or auto")
    if precision == "fp16" and device != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; use bf16, fp32 or auto")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise ConfigError(f"train.precision: bf16 is not supported on this {device}; use fp32 or auto")
    return precision


def prepare_for_precision(model: Any, precision: str) -> int:
    """Fit a LoRA model to the precision it trains in; returns how many frozen weights went to bf16.

    With `precision == "bf16"` (bf16 autocast) two copies per adapted layer and step go away:
    - autocast does not cache casts of frozen weights, so every matmul re-cast its fp32 weight to
      bf16 on every forward. We store the frozen projection weights in bf16 once: autocast would
      have rounded them exactly so, so the numbers do not change. Embeddings (tied to the vocabulary
      projection in many small models) and norms stay fp32, and with them the residual stream:
      storing *those* in bf16 made training slower on CPU, not faster (bench/train_levers.py);
    - peft casts each adapted layer's input to the adapter's dtype (fp32), which autocast undoes
      at once (the LoRA matmul runs in bf16 anyway); we skip that cast. The model must then run under
      bf16 autocast, as the Trainer's `bf16=True` does.
    Adapter weights stay fp32 in every case, so the optimizer's state is fp32 too. Other precisions
    change nothing.
    """
    import torch

    for module in model.modules():
        if hasattr(module, "lora_A"):
            for param in [*module.lora_A.parameters(), *module.lora_B.parameters()]:
                param.data = param.data.float()
    if precision != "bf16":
        return 0
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    stored = 0
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
        if (isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
                and id(module.weight) not in embeddings and module.weight.dtype == torch.float32):
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(torch.bfloat16)
            stored += 1
    return stored


def bf16_generation(model: Any) -> bool:
    """Whether generation with `model` computes its matmuls in bf16: fp32 weights on a device with
    native bf16 (`LORATUNE_PRECISION` forces the answer), the same choice training makes."""

    # The embedding's dtype is the residual stream's: fp32 there means an fp32 model, whatever
    # `cast_linear_weights` did to its Linear layers.
    embedding = model.get_input_embeddings().weight
    return embedding.dtype == torch.float32 and bf16_supported(embedding.device.type)


def autocast_context(model: Any) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it: ~4x faster matmuls on a CPU with AMX or AVX-512 BF16.

    Norms, softmax and the residual stream stay in fp32 (autocast keeps them there); only the
    matmuls run in bf16. See `cast_linear_weights` for why the weights are cast beforehand.
    """
    if bf16_generation(model):
        return torch.autocast(device_type=model.get_input_embeddings().weight.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cast_linear_weights(model: Any) -> list[tuple[torch.nn.Module, str, torch.nn.Parameter]]:
    """Store every fp32 `nn.Linear` weight and bias of `model` (LoRA's own layers included) in bf16.

    Under bf16 autocast each matmul casts its fp32 weight to bf16 on every call, so batch-1
    decoding re-reads and re-writes every weight at every token (the issue measured 14.5 tok/s
    against 26.5 with bf16 weights). Autocast leaves an already-bf16 weight alone, and its cast
    rounds exactly as `.to(bfloat16)` does, so answers are bit-for-bit those of plain autocast.
    Only Linear layers change: embeddings, norms and the residual stream keep fp32. A tied
    `lm_head` gets its own bf16 copy (the embedding keeps the fp32 original). Returns what was
    replaced, for `restore_weights`.
    """
    replaced = []
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.nn.Parameter) and tensor.dtype == torch.float32:
                replaced.append((module, name, tensor))
                setattr(module, name, torch.nn.Parameter(tensor.detach().to(torch.bfloat16), requires_grad=False))
    return replaced


def restore_weights(replaced: list[tuple[torch.nn.Module, str, torch.nn.Parameter]]) -> None:
    for module, name, original in replaced:
        setattr(module, name, original)


@contextlib.contextmanager
def generation_precision(model: Any) -> Iterator[None]:
    """Generate in the precision the hardware is fast at, leaving the caller's model as it was.

    Where bf16 is native: bf16 copies of the Linear weights for the duration (one cast per call,
    not per token; ~half the fp32 model's size in extra memory) under autocast. Elsewhere: fp32.
    """
    replaced = cast_linear_weights(model) if bf16_generation(model) else []
    try:
        with autocast_context(model):
            yield
    finally:
        restore_weights(replaced)
