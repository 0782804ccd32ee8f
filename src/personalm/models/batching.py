"""Continuous batching over the Llama kernel: keep every slot busy until the queue is empty.

One step-based engine serves both callers. `run` pushes a whole batch through it (prompts queued
longest first, the prefix all prompts share computed once); the server (`serve/`) submits requests
as they arrive, calls `step` in its engine thread and streams each step's tokens. Finished or
cancelled rows leave at once and their slots are refilled with a batched prefill, so a long answer
never holds a half-empty batch hostage. Each request carries its own sampling parameters.

A request that fails ends alone: a prefill that fails is retried one prompt at a time, so only the
prompt that fails by itself gets an error event (finish reason "error"); a decode step that fails
ends the rows it was decoding, and queued requests still run.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from personalm.models.base import ProgressCallback, SamplingParams, apply_stop
from personalm.models.llama_kernel import LlamaKernel
from personalm.models.sampling import choose_tokens

PREFILL_TOKEN_BUDGET = 8192
MIN_SHARED_PREFIX = 8


@dataclass
class DecodeRequest:
    prompt_ids: list[int]
    generator: torch.Generator | None
    params: SamplingParams


@dataclass
class DecodeResult:
    token_ids: list[int]
    finish_reason: str


@dataclass
class _Row:
    handle: int
    request: DecodeRequest
    generated: list[int] = field(default_factory=list)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt_ids

    @property
    def position(self) -> int:
        """Position of the newest token (the one fed to the next decode step)."""
        return len(self.prompt) + len(self.generated) - 1


@dataclass
class StepEvent:
    """A row that got a token this step; `finish_reason` is set when the row has left ("error", with
    `error` saying why, when it failed)."""

    handle: int
    token_ids: list[int]
    finish_reason: str | None
    error: str | None = None


class ContinuousBatcher:
    """Runs decode requests through one LlamaKernel with `kernel.slots` concurrent sequences."""

    def __init__(
        self,
        kernel: LlamaKernel,
        eos_ids: set[int],
        decode_text: Callable[[list[int]], str],
        refill_at: int | None = None,
        max_wait_s: float | None = None,
    ):
        """Queued prompts are prefilled together once `refill_at` slots are free (default: a quarter),
        since one prefill of many prompts costs little more than one of a single prompt: every weight
        is read from memory once either way. A server also sets `max_wait_s`, the longest a queued
        request waits for company before it is admitted alone (time to first token)."""
        self.kernel = kernel
        self.refill_at = refill_at or max(1, kernel.slots // 4)
        self.max_wait_s = max_wait_s
        self.eos_ids = eos_ids
        self.decode_text = decode_text
        self.prefix: list | None = None
        self.prefix_len = 0
        self.queue: deque[_Row] = deque()
        self.active: list[_Row] = []
        self._handles = itertools.count()

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.active)

    def submit(self, request: DecodeRequest) -> int:
        """Queue a request; its handle names it in the events `step` returns."""
        if not request.prompt_ids:
            raise ValueError("empty prompt: no token to continue from")
        if len(request.prompt_ids) >= self.kernel.max_len:
            raise ValueError(f"prompt of {len(request.prompt_ids)} tokens does not fit {self.kernel.max_len}")
        row = _Row(next(self._handles), request)
        self.queue.append(row)
        return row.handle

    def cancel(self, handles: set[int]) -> list[StepEvent]:
        """Drop queued or running requests (e.g. abandoned by their client); frees their slots now."""
        events = []
        for row in [r for r in self.queue if r.handle in handles]:
            self.queue.remove(row)
            events.append(StepEvent(row.handle, list(row.generated), "cancelled"))
        for slot in reversed(range(len(self.active))):
            row = self.active[slot]
            if row.handle in handles:
                events.append(StepEvent(row.handle, list(row.generated), "cancelled"))
                self._free(slot)
        return events

    def step(self) -> list[StepEvent]:
        """Admit queued requests when enough slots are free, then decode one token for every row."""
        events: list[StepEvent] = []
        slots = self.kernel.slots
        count = len(self.active)
        if self.queue and count < slots and (slots - count >= self.refill_at or not count or self._waited_enough()):
            self._admit(slots - count, events)
        if count:
            # Rows admitted just now sit after the decoding ones and got their token from prefill.
            decoding = self.active[:count]
            tokens = torch.tensor([row.generated[-1] for row in decoding])
            positions = torch.tensor([row.position for row in decoding])
            try:
                chosen = self._choose(self.kernel.decode(tokens, positions), decoding)
            except Exception as err:  # noqa: BLE001 - the rows of this forward pass end; the others go on
                events.extend(self._fail({row.handle for row in decoding}, err))
            else:
                for row, token in zip(decoding, chosen, strict=True):
                    row.generated.append(token)
                events.extend(StepEvent(row.handle, list(row.generated), None) for row in decoding)
        self._retire(events)
        return events

    def run(
        self,
        requests: Sequence[DecodeRequest],
        progress: ProgressCallback | None = None,
    ) -> list[DecodeResult]:
        """Decode a whole batch; results in request order."""
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids), reverse=True)
        self._cache_shared_prefix([r.prompt_ids for r in requests])
        index_of = {self.submit(requests[i]): i for i in order}
        results: list[DecodeResult | None] = [None] * len(requests)
        try:
            while self.busy:
                for event in self.step():
                    if event.error is not None:
                        self.cancel(set(index_of))
                        raise RuntimeError(f"generation failed: {event.error}")
                    if event.finish_reason is not None:
                        results[index_of[event.handle]] = DecodeResult(event.token_ids, event.finish_reason)
                        if progress:
                            progress(1)
        finally:
            self.prefix, self.prefix_len = None, 0
        return [r for r in results if r is not None]

    def _waited_enough(self) -> bool:
        return self.max_wait_s is not None and time.monotonic() - self.queue[0].queued_at >= self.max_wait_s

    def _admit(self, free: int, events: list[StepEvent]) -> None:
        """Prefill up to `free` queued prompts into the slots after the active ones."""
        batch: list[_Row] = []
        while self.queue and len(batch) < free:
            prompt = self.queue[0].prompt
            longest = max([len(prompt)] + [len(r.prompt) for r in batch])
            if batch and longest * (len(batch) + 1) > PREFILL_TOKEN_BUDGET:
                break
            batch.append(self.queue.popleft())
        try:
            self._prefill(batch)
        except Exception:  # noqa: BLE001 - find the prompt that fails alone; the others are admitted
            for row in batch:
                try:
                    self._prefill([row])
                except Exception as err:  # noqa: BLE001
                    events.append(_failure(row, err))
        events.extend(StepEvent(row.handle, list(row.generated), None) for row in batch if row.generated)

    def _prefill(self, rows: list[_Row]) -> None:
        """Prefill `rows` into the slots after the active ones; they join the active rows only
        when the prefill and their first token succeeded."""
        first = len(self.active)
        if self.prefix is not None:
            self.kernel.load_prefix(self.prefix, first, len(rows))
        offset = self.prefix_len
        logits = self.kernel.prefill(first, [row.prompt[offset:] for row in rows], offset)
        for row, token in zip(rows, self._choose(logits, rows), strict=True):
            row.generated.append(token)
        self.active.extend(rows)

    def _fail(self, handles: set[int], err: Exception) -> list[StepEvent]:
        """End these rows with an error event each, freeing their slots."""
        rows = {row.handle: row for row in [*self.queue, *self.active] if row.handle in handles}
        self.cancel(handles)
        return [_failure(row, err) for row in rows.values()]

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Next tokens, choosing together the rows that share sampling settings."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            p = row.request.params
            groups.setdefault((p.temperature, p.top_p, p.top_k), []).append(i)
        chosen = [0] * len(rows)
        for members in groups.values():
            params = rows[members[0]].request.params
            picks = choose_tokens(logits[members], params, [rows[i].request.generator for i in members])
            for i, token in zip(members, picks.tolist(), strict=True):
                chosen[i] = token
        return chosen

    def _cache_shared_prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the longest common token prefix once (leaving every prompt one token of its own)."""
        self.prefix, self.prefix_len = None, 0
        if len(prompts) < 2 or self.active:
            return
        shared = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for prompt in prompts[1:]:
            shared = next((i for i in range(shared) if prompt[i] != first[i]), shared)
        if shared >= MIN_SHARED_PREFIX:
            self.kernel.prefill(0, [first[:shared]])
            self.prefix, self.prefix_len = self.kernel.save_prefix(0, shared), shared

    def _finish_reason(self, row: _Row) -> str | None:
        params = row.request.params
        if row.generated[-1] in self.eos_ids:
            return "stop"
        if params.stop and apply_stop(self.decode_text(row.generated), params.stop)[1]:
            return "stop"
        if len(row.generated) >= params.max_tokens or row.position + 1 >= self.kernel.max_len:
            return "length"
        return None

    def _retire(self, events: list[StepEvent]) -> None:
        """Mark finished rows in this step's events and free their slots."""
        by_handle = {e.handle: e for e in events}
        slot = 0
        while slot < len(self.active):
            row = self.active[slot]
            reason = self._finish_reason(row)
            if reason is None:
                slot += 1
                continue
            ids = row.generated[:-1] if row.generated[-1] in self.eos_ids else row.generated
            event = by_handle[row.handle]
            event.token_ids, event.finish_reason = ids, reason
            self._free(slot)

    def _free(self, slot: int) -> None:
        """Move the last active row into the freed slot so active rows stay contiguous."""
        last = self.active.pop()
        if slot < len(self.active):
            self.kernel.move_slot(len(self.active), slot, last.position + 1)
            self.active[slot] = last


def _failure(row: _Row, err: Exception) -> StepEvent:
    return StepEvent(row.handle, list(row.generated), "error", f"{type(err).__name__}: {err}")
