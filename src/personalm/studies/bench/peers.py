"""The peers our local runners are measured against, shared by the benchmarks.

Hugging Face `generate` called one prompt at a time is how the Persona Hub reference scripts'
per-persona loop runs on a local model; it uses the very same fp32 weights as our engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from personalm.models.base import Prompt, SamplingParams
from personalm.models.local import LocalModel


def hf_one_at_a_time(
    model: LocalModel,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[str], int, float]:
    """(texts, completion tokens, seconds) of HF `generate` over `prompts`, one after another."""
    sampling = {} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p}
    if not params.greedy and params.top_k:
        sampling["top_k"] = params.top_k
    texts, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            torch.manual_seed(params.seed + i)
            ids = torch.tensor([model.encode_prompt(prompt)])
            out = model.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_tokens,
                do_sample=not params.greedy,
                eos_token_id=sorted(model.eos_ids),
                pad_token_id=model.tokenizer.pad_token_id,
                **sampling,
            )
            new = [t for t in out[0, ids.shape[1] :].tolist() if t not in model.eos_ids]
            tokens += len(new)
            texts.append(model.tokenizer.decode(new, skip_special_tokens=True))
            log(f"  hf one-at-a-time {i + 1}/{len(prompts)}")
    return texts, tokens, time.perf_counter() - start
