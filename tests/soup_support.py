"""Tiny random LoRA adapters: on the embedded model, laid out like `personalm soups train` writes them,
and PEFT-made ones on a tiny random Llama for the merge math."""

from __future__ import annotations

import copy
from pathlib import Path

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


def soups_folder(model, root: Path, poles: list[str], pmorl: bool = True) -> Path:
    """One adapter per pole (and `pmorl`), each from its own seed."""
    names = [*poles, "pmorl"] if pmorl else poles
    for seed, name in enumerate(names, start=1):
        random_adapter(model, root / name, seed)
    return root


def tiny_base() -> torch.nn.Module:
    """A two-layer random Llama: every linear kind of the real model, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def peft_adapter(base, out: Path, seed: int, rank: int, alpha: int, **options) -> Path:
    """An adapter on every linear layer of `base`, saved by PEFT itself, with random A and B."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False, **options)
    model = get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(out)
    return out
