"""Continuous batching over the Llama kernel: keep every slot busy until the queue is empty.

Prompts are queued longest first; finished rows leave at once and their slots are refilled with a
batched prefill, so a long answer never holds a half-empty batch hostage. The prefix all prompts
share (system prompt, task template) is computed once and copied into each new slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from personalm.models.base import ProgressCallback, SamplingParams, apply_stop
from personalm.models.llama_kernel import LlamaKernel
from personalm.models.sampling import choose_tokens

PREFILL_TOKEN_BUDGET = 8192
MIN_SHARED_PREFIX = 8


@dataclass
class _Row:
    index: int
    prompt: list[int]
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)

    @property
    def position(self) -> int:
        """Position of the newest token (the one fed to the next decode step)."""
        return len(self.prompt) + len(self.generated) - 1


@dataclass
class DecodeRequest:
    prompt_ids: list[int]
    generator: torch.Generator | None


@dataclass
class DecodeResult:
    token_ids: list[int]
    finish_reason: str


class ContinuousBatcher:
    """Runs many decode requests through one LlamaKernel with `slots` concurrent sequences."""

    def __init__(
        self,
        kernel: LlamaKernel,
        eos_ids: set[int],
        decode_text: Callable[[list[int]], str],
    ):
        self.kernel = kernel
        self.eos_ids = eos_ids
        self.decode_text = decode_text
        self.prefix: list | None = None
        self.prefix_len = 0

    def run(
        self,
        requests: Sequence[DecodeRequest],
        params: SamplingParams,
        progress: ProgressCallback | None = None,
    ) -> list[DecodeResult]:
        queue = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids), reverse=True)
        queue.reverse()  # pop() from the end takes the longest prompt first
        results: list[DecodeResult | None] = [None] * len(requests)
        self._cache_shared_prefix([r.prompt_ids for r in requests])
        active: list[_Row] = []
        slots = self.kernel.slots
        refill_at = max(1, slots // 4)
        while queue or active:
            free = slots - len(active)
            if queue and (free >= refill_at or not active):
                self._admit(queue, requests, active, free, params, results, progress)
            if not active:
                continue
            tokens = torch.tensor([row.generated[-1] for row in active])
            positions = torch.tensor([row.position for row in active])
            logits = self.kernel.decode(tokens, positions)
            chosen = choose_tokens(logits, params, [row.generator for row in active]).tolist()
            for row, token in zip(active, chosen, strict=True):
                row.generated.append(token)
            self._retire(active, params, results, progress)
        return [r for r in results if r is not None]

    def _admit(self, queue, requests, active, free, params, results, progress) -> None:
        """Prefill up to `free` queued prompts into the slots after the active ones."""
        batch: list[_Row] = []
        while queue and len(batch) < free:
            index = queue[-1]
            prompt = requests[index].prompt_ids
            longest = max([len(prompt)] + [len(r.prompt) for r in batch])
            if batch and longest * (len(batch) + 1) > PREFILL_TOKEN_BUDGET:
                break
            queue.pop()
            batch.append(_Row(index, prompt, requests[index].generator))
        if self.prefix is not None:
            self.kernel.load_prefix(self.prefix, len(active), len(batch))
        offset = self.prefix_len
        logits = self.kernel.prefill(len(active), [row.prompt[offset:] for row in batch], offset)
        chosen = choose_tokens(logits, params, [row.generator for row in batch]).tolist()
        for row, token in zip(batch, chosen, strict=True):
            row.generated.append(token)
        active.extend(batch)
        self._retire(active, params, results, progress)

    def _cache_shared_prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the longest common token prefix once (leaving every prompt one token of its own)."""
        shared = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for prompt in prompts[1:]:
            shared = next((i for i in range(shared) if prompt[i] != first[i]), shared)
        self.prefix, self.prefix_len = None, 0
        if shared >= MIN_SHARED_PREFIX and len(prompts) > 1:
            self.kernel.prefill(0, [first[:shared]])
            self.prefix, self.prefix_len = self.kernel.save_prefix(0, shared), shared

    def _finish_reason(self, row: _Row, params: SamplingParams) -> str | None:
        if row.generated[-1] in self.eos_ids:
            return "stop"
        if params.stop and apply_stop(self.decode_text(row.generated), params.stop)[1]:
            return "stop"
        if len(row.generated) >= params.max_tokens or row.position + 1 >= self.kernel.max_len:
            return "length"
        return None

    def _retire(self, active, params, results, progress) -> None:
        """Drop finished rows; move the last active row into each freed slot."""
        slot = 0
        while slot < len(active):
            row = active[slot]
            reason = self._finish_reason(row, params)
            if reason is None:
                slot += 1
                continue
            ids = row.generated[:-1] if row.generated[-1] in self.eos_ids else row.generated
            results[row.index] = DecodeResult(ids, reason)
            if progress:
                progress(1)
            last = active.pop()
            if last is not row:
                self.kernel.move_slot(len(active), slot, last.position + 1)
                active[slot] = last
