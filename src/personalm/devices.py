"""Which torch device a model runs on: `--device` / `PERSONALM_DEVICE`, auto = CUDA, then MPS, then CPU.

One resolver for every part that runs torch (the local model, the embedder, the trainer, PerContrast
scoring, the critic), so one setting moves all of them. The CPU stays the tuned path (the Llama
decode kernel, oneDNN-packed frozen layers for training, fp32); on a GPU the same commands run
transformers' own generate and plain PEFT layers, under bf16 autocast where the GPU supports it.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext

import torch

from personalm.errors import PersonalmError

DEVICE_ENV = "PERSONALM_DEVICE"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_NAME = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")


def check_device_name(name: str) -> str:
    """The name, lower-cased, if it is one `resolve_device` understands (no hardware check)."""
    name = name.strip().lower()
    if not _NAME.fullmatch(name):
        raise PersonalmError(f"device {name!r}: expected {DEVICE_CHOICES} (option --device or {DEVICE_ENV})")
    return name


def resolve_device(name: str | None = None) -> torch.device:
    """The device for `name` (None: $PERSONALM_DEVICE, else auto). A device that is named but not
    present is a user error, not a silent fall-back to the CPU."""
    name = check_device_name(name or os.environ.get(DEVICE_ENV) or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise PersonalmError(f"device {name!r}: no CUDA GPU is visible to torch {torch.__version__}")
        if device.index is not None and device.index >= count:
            raise PersonalmError(f"device {name!r}: only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps" and not _mps_available():
        raise PersonalmError(f"device {name!r}: Apple's MPS backend is not available here")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA GPU that has it, else None (fp32, as on the CPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast where `autocast_dtype` says so, otherwise nothing."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def describe(device: torch.device) -> dict[str, str]:
    """What `models info` prints: the device and the compute dtype used on it."""
    dtype = autocast_dtype(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": str(device), "device_name": name, "compute_dtype": "bfloat16" if dtype else "float32"}
