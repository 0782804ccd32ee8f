"""Serve fixtures: tiny random LoRA pole adapters laid out as `personalm soups train` writes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

TARGETS = ("q_proj", "v_proj")


def random_adapter(model, out: Path, seed: int, rank: int = 4, scale: float = 0.2) -> Path:
    """A PEFT LoRA adapter with random A and B (B is zero in a fresh adapter, which would change nothing)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            rows, cols = module.weight.shape
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) / cols**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(rows, rank, generator=generator) * scale
    out.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS), task_type="CAUSAL_LM").save_pretrained(out)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def build_soups_folder(model, root: Path, poles: list[str], pmorl: bool = True) -> Path:
    """One adapter per pole (and `pmorl`), each from its own seed."""
    names = [*poles, "pmorl"] if pmorl else poles
    for seed, name in enumerate(names, start=1):
        random_adapter(model, root / name, seed)
    return root


@pytest.fixture(scope="session")
def soups_folder() -> Callable[..., Path]:
    """Writes a soups folder: `soups_folder(model, root, poles)` (module-scoped servers use it too)."""
    return build_soups_folder
