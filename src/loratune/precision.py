"""Which precision this machine computes in: bf16 where it is native, else fp32.

bf16 is native on CUDA GPUs that say so and on CPUs with AVX-512 BF16 or AMX; elsewhere it is
emulated, ~100x slower than fp32 (a 2048² matmul on an AVX2-only CPU: ~2 against ~150-180 GFLOP/s),
so loratune trains, evaluates and serves in fp32 there.
"""

from __future__ import annotations

import os

import torch

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
    try what an AVX2-only CPU does, as the README's benchmarks do) gets emulated bf16 on a CPU whose
    flags say bf16 is native: measured on an AMD EPYC with AVX-512 BF16, a 2048² bf16 matmul under
    `ONEDNN_MAX_CPU_ISA=AVX2` ran at ~2 GFLOP/s against 176 in fp32."""
    for name in ONEDNN_ISA_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value.upper()
    return None


def weights_dtype_for(setting: str) -> torch.dtype:
    """The dtype to load base weights in, for `train.weights_dtype`.

    `auto` loads fp32: under bf16 autocast, `lora.prepare_for_precision` then stores the frozen
    projection weights in bf16 (autocast rounds them so anyway) and keeps embeddings, norms and the
    residual stream fp32. Loading *every* weight in bf16 (`bf16`, the original recipe) made CPU
    training slower: a bf16 residual stream, and a bf16 tied vocabulary projection that matmul
    copies once per row (bench/train_levers.py).
    """
    return torch.bfloat16 if setting == "bf16" else torch.float32
