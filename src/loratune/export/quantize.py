"""4-bit and k-quant GGUFs with llama.cpp's own quantizer: `llama_model_quantize` in the prebuilt
`libllama` of the llama.cpp runtime (`export/llama_runtime.py`), called through ctypes on a GGUF that
loratune wrote in f32. The quantizer chooses per tensor as `llama-quantize` does (Q4_K_M keeps some
attention-v and ffn-down matrices in Q6_K, falls back where a row is not a multiple of 256 values).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf

from loratune.errors import ExportError
from loratune.export.llama_runtime import libllama_path, require_runtime

# --outtype -> llama.cpp's llama_ftype (gguf-py's LlamaFileType carries the same numbers).
QUANTIZED_OUTTYPES: dict[str, gguf.LlamaFileType] = {
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M,
}


class _QuantizeParams(ctypes.Structure):
    """llama_model_quantize_params: it starts with `int32 nthread; enum llama_ftype ftype;`, and the
    fields after them (tensor types, flags, pointers) keep llama.cpp's defaults. The struct is
    returned by value through a caller-provided buffer (as any struct over 16 bytes on x86-64), so a
    buffer larger than the real struct is safe whatever fields a llama.cpp release adds."""

    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int32), ("rest", ctypes.c_uint8 * 504)]


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def quantize_gguf(source: str | Path, output: str | Path, outtype: str, *, threads: int = 0) -> None:
    """Write `output`, the GGUF `source` (f32 or f16) quantized to `outtype` by llama.cpp.
    `threads` 0 uses every core. llama.cpp's log is kept and its last lines end up in the error."""
    if outtype not in QUANTIZED_OUTTYPES:
        raise ExportError(f"--outtype {outtype!r}: llama.cpp's quantizer takes {', '.join(QUANTIZED_OUTTYPES)}")
    require_runtime()
    lib = ctypes.CDLL(str(libllama_path()))
    log: list[str] = []
    callback = _LOG_CALLBACK(lambda level, text, data: log.append(text.decode("utf-8", "replace")))
    lib.llama_log_set(callback, None)  # llama.cpp would otherwise print every tensor to stderr
    lib.llama_backend_init()
    lib.llama_model_quantize_default_params.restype = _QuantizeParams
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_QuantizeParams)]
    lib.llama_model_quantize.restype = ctypes.c_uint32
    params = lib.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = int(QUANTIZED_OUTTYPES[outtype])
    try:
        code = lib.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params))
    finally:
        lib.llama_log_set(None, None)
    if code != 0:
        Path(output).unlink(missing_ok=True)
        detail = " ".join("".join(log).strip().splitlines()[-2:]) or f"code {code}"
        raise ExportError(f"{source}: llama.cpp could not quantize it to {outtype}: {detail}")
