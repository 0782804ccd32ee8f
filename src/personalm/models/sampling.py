"""Next-token choice for a batch of rows, each with its own random stream.

Every row owns a generator seeded from (seed, prompt, occurrence), so a sampled output depends on
its prompt and seed only, never on which other prompts shared the batch: caches stay valid and a
resumed run reproduces the rows it lost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from personalm.models.base import SamplingParams, stable_hash


def row_seed(seed: int, prompt_key: str, occurrence: int) -> int:
    """The seed of one sample: the run's seed, the prompt and how many identical prompts came before."""
    return int(stable_hash(seed, prompt_key, occurrence)[:15], 16)


def row_generator(seed: int, prompt_key: str, occurrence: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(row_seed(seed, prompt_key, occurrence))
    return generator


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Temperature, top-k and nucleus (top-p) filtering, vectorized over rows."""
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # Drop a token once the mass before it already covers top_p (the best token always stays).
        drop = probs.cumsum(dim=-1) - probs > params.top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


def choose_tokens(logits: Tensor, params: SamplingParams, generators: list[torch.Generator | None]) -> Tensor:
    """Greedy, or inverse-CDF sampling: one uniform draw per row from the row's own generator, then
    one vectorized search over the batch (a `multinomial` call per row cost ~2 ms of every step)."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float(), params).softmax(dim=-1)
    draws = torch.cat([torch.rand(1, generator=g) for g in generators])
    cdf = probs.cumsum(dim=-1)
    # side="right": the first token whose cumulative mass exceeds the draw, so zero-mass tokens never win.
    picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return picks.clamp_(max=probs.shape[-1] - 1)
