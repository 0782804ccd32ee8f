"""What this machine can do (the fp32 matmul peak every benchmark reports its fraction of) and
which package versions ran: recorded in every results file."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time

import torch

from personalm.models.packed_linear import PackedLinear


def fp32_matmul_peak_gflops(size: int = 1536, repeats: int = 12) -> float:
    """Best-of-3 GFLOP/s of a square fp32 matmul with all threads (the practical compute ceiling).

    Both of PyTorch's CPU GEMM libraries are tried (MKL via `torch.mm`, oneDNN on a prepacked
    weight) and the faster one counts, so code using either never reports above 100%.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    packed = PackedLinear(b, size)
    best = float("inf")
    for matmul in (lambda: torch.mm(a, b), lambda: packed(a)):
        matmul()
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                matmul()
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def machine() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where absent)."""
    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found
