"""serve/cpu_threads.py: releasing a thread's OpenMP teams keeps the numbers and the threads usable."""

import threading

import torch

from loratune.serve.cpu_threads import _pause_functions, release_openmp_threads


def test_the_runtime_torch_loaded_is_found():
    torch.ones(1 << 16).add_(1)  # a parallel kernel: the runtime is loaded and this thread has a team
    paths = [f for f in _pause_functions()]
    assert paths, "no OpenMP runtime with omp_pause_resource_all found in this process"
    assert release_openmp_threads() is True


def test_kernels_after_a_release_compute_the_same_on_any_thread():
    torch.manual_seed(0)
    a, b = torch.randn(256, 512), torch.randn(512, 384)
    expected = (a.double() @ b.double()).float()
    before = a @ b
    assert release_openmp_threads()
    after_on_this_thread = a @ b  # the team is re-created on demand
    results = {}
    worker = threading.Thread(target=lambda: results.update(worker=a @ b, released=release_openmp_threads()))
    worker.start()
    worker.join()
    for got in (before, after_on_this_thread, results["worker"]):
        assert torch.allclose(got, expected, atol=1e-3)
    assert torch.equal(before, after_on_this_thread) and torch.equal(before, results["worker"])
    assert results["released"] is True
