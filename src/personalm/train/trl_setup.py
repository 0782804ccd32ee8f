"""What every TRL trainer we run shares, so the TRL peers and the TRL-based trainers are set up
alike: fp32 on CPU (bf16 has no fast path on CPUs without AVX-512 BF16), no activation
checkpointing (a 135M model fits; recomputing only costs time), no checkpoint files, no loggers,
and LoRA on every linear layer, the adapter shape our own trainer uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def cpu_args(output_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments for any TRL `*Config` (SFTConfig, DPOConfig)."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        "dataloader_num_workers": 0,
    }


def lora_all_linear(rank: int, alpha: float, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def load_fp32(path: str | Path) -> tuple[Any, Any]:
    """(tokenizer with a pad token, fp32 model) from a local model directory, offline."""
    from personalm.models.hf import transformers_offline

    transformers = transformers_offline()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
