"""How many CPU threads PyTorch may use inside a Triton Python-backend stub that computes on the GPU.

Each stub is a process of its own, and PyTorch's intra-op pool starts one thread per core in each: on a 16-core
machine with five GPU stubs that is 80 threads contending with the services for the host, while the host's part of
a GPU model is only launching kernels and copying. `make bench-gpu BENCH_ARGS=--torch-threads` sets it (0:
PyTorch's default).
"""

import os

import torch

TORCH_THREADS_ENV = "GPU_BENCH_TORCH_THREADS"


def limit_cpu_threads(cuda: bool) -> int:
    """On a GPU, PyTorch's CPU pool is cut to GPU_BENCH_TORCH_THREADS (0, the default: as PyTorch sets it).
    Returns the count in force."""
    threads = int(os.environ.get(TORCH_THREADS_ENV) or "0")
    if cuda and threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
