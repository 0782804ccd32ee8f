"""transformers as personalm runs it (offline, no progress-bar noise) and what local backends share:
prompt rendering and logits at chosen positions."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import torch

from personalm.errors import PersonalmError
from personalm.models.base import Prompt


def transformers_offline() -> ModuleType:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def encode_prompt(tokenizer: Any, prompt: Prompt, name: str) -> list[int]:
    """Token ids of a prompt: a string as is, a chat through the model's chat template with the
    assistant turn opened (every backend that tokenizes locally renders prompts this one way)."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    if tokenizer.chat_template is None:
        raise PersonalmError(f"model {name} has no chat template; give plain-text prompts")
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def logits_at(model, input_ids, attention_mask, positions, position_ids=None):
    """`model(...).logits[positions]` (`positions`: bool, batch x seq, rows in row-major order; or a
    (rows, columns) pair of index tensors, which may repeat a position) without computing the rest:
    the body runs on every position, the output head (a vocabulary-wide matmul per token) only where
    a logit is wanted. Models whose head does more than a linear map (logit soft-capping) take the
    full forward. `attention_mask` may be a custom 4D mask, then with explicit `position_ids`.
    Inputs move to the model's device and run under its autocast (bf16 on a GPU that has it); the
    logits come back on that device."""
    from personalm.devices import autocast

    device = next(model.parameters()).device
    if device.type != "cpu":
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = position_ids.to(device) if position_ids is not None else None
        positions = (
            positions.to(device) if isinstance(positions, torch.Tensor) else tuple(p.to(device) for p in positions)
        )
    with autocast(device):
        return _logits_at(model, input_ids, attention_mask, positions, position_ids)


def _logits_at(model, input_ids, attention_mask, positions, position_ids):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if body is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return model(**inputs).logits[positions]
    return head(body(**inputs).last_hidden_state[positions])
