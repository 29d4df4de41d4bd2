"""Keep one OpenMP thread team on the CPU while the server's worker thread decodes.

PyTorch's CPU kernels run on OpenMP (libgomp in the Linux wheels), which keeps one team of
threads per Python thread that ever ran a parallel kernel. Loading the model on the main thread
and decoding on the worker thread leaves two teams: four threads on a 2-core machine. libgomp then
sees more threads than cores and cuts the time its threads spin between kernels ("throttled"
spinning), so the decoding team falls asleep between the hundreds of small kernels of every
decode step and pays a wake-up for each. Measured on SmolLM2-135M, batch 1, 2 cores: the same
decode loop gave 15.1 tok/s on the main thread and 8.3 tok/s on a second thread; 16.1 tok/s on
the second thread once the main thread's team was released (`bench/serve_speed.py`, docs/serving.md).

`release_openmp_threads()` frees the calling thread's team (OpenMP 5's `omp_pause_resource_all`),
so the thread that loads weights can hand the CPU to the worker whole. The team is re-created
the next time that thread runs a parallel kernel, so calling it is always safe.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Callable

# The OpenMP runtimes PyTorch builds link against: GNU (Linux wheels), Intel and LLVM (conda, macOS).
_RUNTIMES = ("libgomp", "libiomp5", "libomp")
_OMP_PAUSE_SOFT = 1


def _pause_functions() -> tuple[Callable[[int], int], ...]:
    """`omp_pause_resource_all` of every OpenMP runtime this process loaded (none where there is
    none, or it predates OpenMP 5). The libraries are found in /proc/self/maps, so the copies
    loaded are the ones paused: there can be several (sentencepiece's wheel bundles its own
    libgomp beside torch's), and each keeps its own thread teams. Read at every call (a few ms):
    a library imported later brings its runtime then."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        return ()
    paths = []
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if any(Path(path).name.startswith(name) for name in _RUNTIMES) and path not in paths:
            paths.append(path)
    functions = []
    for path in paths:
        try:
            function: Any = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_int]
        function.restype = ctypes.c_int
        functions.append(function)
    return tuple(functions)


def release_openmp_threads() -> bool:
    """Free the calling thread's OpenMP teams; True when a runtime was found and released them."""
    import torch  # noqa: F401 - the runtime is loaded with torch; look for it only once torch is in

    results = [pause(_OMP_PAUSE_SOFT) == 0 for pause in _pause_functions()]
    return bool(results) and all(results)
