"""Run provenance, recorded in every results file: which package versions ran, on what machine
(and the fp32 matmul peak every benchmark reports its fraction of), under what load, with which
seeds and settings, from which command, and when."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from datetime import datetime

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
    """What a timing was taken on: the CPU model and the vector units a kernel may pick (these VMs
    come as Intel with AMX or AMD without, and the same code runs at different speeds on each)."""
    cpu = _first_cpu()
    flags = cpu.get("flags", "").split()
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu.get("model name", ""),
        "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "python": platform.python_version(),
    }


def _first_cpu() -> dict[str, str]:
    """The fields of /proc/cpuinfo's first processor, read once ({} where there is none, e.g. not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where absent)."""
    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none): times taken on a shared machine under
    load are pessimistic, so every timed result says how loaded the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def timestamp(seconds: float | None = None) -> str:
    """Local time with its UTC offset, to the second (now when `seconds` is None)."""
    return datetime.fromtimestamp(time.time() if seconds is None else seconds).astimezone().isoformat("T", "seconds")


def run_record(settings: dict, seeds: dict, started: float, load_at_start: float) -> dict[str, object]:
    """How one run came about: its command line and settings, its seeds, when it started and ended
    (`started` from time.time()) and the load average at both ends."""
    return {
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        "settings": settings,
        "seeds": seeds,
        "started": timestamp(started),
        "ended": timestamp(),
        "seconds": round(time.time() - started, 1),
        "load_average_1min": {"start": load_at_start, "end": load_average()},
    }
