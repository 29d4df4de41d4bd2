"""The precision a machine computes in: its CPU flags, oneDNN's ISA cap, and the forcing switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import loratune.models.precision
from loratune.models.precision import bf16_supported, onednn_isa_cap, weights_dtype_for


@pytest.fixture(autouse=True)
def no_isa_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite may itself run under a cap (docs/benchmarks.md: an AVX2-only CPU emulated); each test sets its own."""
    for name in loratune.models.precision.ONEDNN_ISA_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LORATUNE_PRECISION", raising=False)


def fake_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(loratune.models.precision, "CPUINFO", str(cpuinfo))


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 fma", False),                    # AVX2 only: bf16 would be emulated
    ("fpu avx2 avx512f avx512_bf16", True),          # AVX-512 BF16
    ("fpu avx2 avx512f amx_tile amx_bf16", True),    # AMX
])
def test_bf16_supported_reads_the_cpu_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags, native) -> None:
    fake_cpuinfo(tmp_path, monkeypatch, flags)
    assert bf16_supported("cpu") is native
    assert bf16_supported("meta") is False


def test_precision_switch_forces_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from loratune.errors import ConfigError

    monkeypatch.setenv("LORATUNE_PRECISION", "bf16")
    assert bf16_supported("cpu") is True
    monkeypatch.setenv("LORATUNE_PRECISION", "fp32")
    assert bf16_supported("cpu") is False
    monkeypatch.setenv("LORATUNE_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="LORATUNE_PRECISION='fp16': use fp32 or bf16"):
        bf16_supported("cpu")


@pytest.mark.parametrize("name, cap, native", [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", False),             # what an AVX2-only CPU runs: bf16 emulated
    ("ONEDNN_MAX_CPU_ISA", "avx512_core", False),      # oneDNN takes either case
    ("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI", False),   # the older name of the variable
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),  # caps at or above bf16 leave the flags' answer
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
    ("ONEDNN_MAX_CPU_ISA", "ALL", True),
])
def test_a_onednn_isa_cap_below_bf16_means_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name, cap, native) -> None:
    fake_cpuinfo(tmp_path, monkeypatch, "fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16")
    assert bf16_supported("cpu") is True
    monkeypatch.setenv(name, cap)
    assert onednn_isa_cap() == cap.upper()
    assert bf16_supported("cpu") is native


def test_the_newer_cap_name_wins_and_forcing_still_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpuinfo(tmp_path, monkeypatch, "fpu avx2 avx512f avx512_bf16")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert bf16_supported("cpu") is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert bf16_supported("cpu") is False
    monkeypatch.setenv("LORATUNE_PRECISION", "bf16")  # the test suite's switch beats the cap
    assert bf16_supported("cpu") is True


def test_weights_load_in_fp32_unless_bf16_is_asked() -> None:
    assert weights_dtype_for("auto") is torch.float32
    assert weights_dtype_for("fp32") is torch.float32
    assert weights_dtype_for("bf16") is torch.bfloat16
