"""Continuous batching over the Llama kernel: keep every slot busy until the queue is empty.

One step-based engine serves both callers. `run` pushes a whole batch through it (prompts queued
longest first); the server (`serve/`) submits requests
as they arrive, calls `step` in its engine thread and streams each step's tokens. Finished or
cancelled rows leave at once and their slots are refilled with a batched prefill, so a long answer
never holds a half-empty batch hostage. Each request carries its own sampling parameters.

Prompts usually open alike (a chat template's system prompt, an avatar's profile), so the batcher
keeps the KV cache of one shared prefix, learned from the prompts it admits, and prefills only what
follows it: that cuts a third or more of the prefill work of a typical chat request (time to first
token). Prompts of unlike lengths are prefilled in separate passes, shortest first, where padding
them to one length would cost more than another pass, so in a burst of arrivals the short ones
start streaming while the long ones are prefilled.

A request that fails ends alone: a prefill that fails is retried one prompt at a time, so only the
prompt that fails by itself gets an error event (finish reason "error"); a decode step that fails
ends the rows it was decoding, and queued requests still run.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from personalm.models.base import ProgressCallback, SamplingParams, apply_stop
from personalm.models.llama_kernel import LlamaKernel
from personalm.models.sampling import choose_tokens

PREFILL_TOKEN_BUDGET = 8192
MIN_SHARED_PREFIX = 8
# One prefill pass of the embedded model costs about as much as 40 more prompt tokens (on a 2-core
# CPU: 74 ms for one 40-token prompt, 37 ms for each more), so a batch is split by length only where
# padding would cost more than another pass.
PASS_COST_TOKENS = 40


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
    ):
        """Queued prompts are prefilled together once `refill_at` slots are free (default: a quarter),
        since one prefill of many prompts costs little more than one of a single prompt: every weight
        is read from memory once either way. A server sets 1: a new request is prefilled at once."""
        self.kernel = kernel
        self.refill_at = refill_at or max(1, kernel.slots // 4)
        self.eos_ids = eos_ids
        self.decode_text = decode_text
        self.prefix: _Prefix | None = None
        self._last_uncovered: list[int] | None = None
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
        """Admit queued requests when enough slots are free, then decode one token for every row
        that was decoding before (the admitted ones got their first token from prefill)."""
        decoding = len(self.active)
        return self.admit() + self.decode(decoding)

    def admit(self) -> list[StepEvent]:
        """Prefill queued requests when `can_admit`; the events carry their first tokens. A server
        sends these before the next decode."""
        events: list[StepEvent] = []
        if self.can_admit:
            self._admit(self.kernel.slots - len(self.active), events)
        self._retire(events)
        return events

    @property
    def can_admit(self) -> bool:
        """Whether `admit` would prefill now: prompts are queued and enough slots are free (or nothing
        is decoding)."""
        free = self.kernel.slots - len(self.active)
        return bool(self.queue) and free > 0 and (free >= self.refill_at or not self.active)

    def decode(self, rows: int | None = None) -> list[StepEvent]:
        """One token for each of the first `rows` active rows (default: all of them)."""
        events: list[StepEvent] = []
        count = len(self.active) if rows is None else rows
        if count:
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
        index_of = {self.submit(requests[i]): i for i in order}
        results: list[DecodeResult | None] = [None] * len(requests)
        while self.busy:
            for event in self.step():
                if event.error is not None:
                    self.cancel(set(index_of))
                    raise RuntimeError(f"generation failed: {event.error}")
                if event.finish_reason is not None:
                    results[index_of[event.handle]] = DecodeResult(event.token_ids, event.finish_reason)
                    if progress:
                        progress(1)
        return [r for r in results if r is not None]

    def forget_prefix(self) -> None:
        """Drop the cached prefix (its KV is stale once the model's weights were edited)."""
        self.prefix, self._last_uncovered = None, None

    def _admit(self, free: int, events: list[StepEvent]) -> None:
        """Prefill queued prompts into the slots after the active ones: of the first `free` (at most
        PREFILL_TOKEN_BUDGET padded tokens past the cached prefix), the group of the shortest that one
        forward pass should take; the others stay queued first for the next call."""
        batch: list[_Row] = []
        longest = 0
        while self.queue and len(batch) < free:
            longest = max(longest, self._tail_len(self.queue[0].prompt))
            if batch and longest * (len(batch) + 1) > PREFILL_TOKEN_BUDGET:
                break
            batch.append(self.queue.popleft())
        self._learn_prefix([row.prompt for row in batch])
        covered: list[_Row] = []
        plain: list[_Row] = []
        for row in batch:
            (covered if self._covers(row.prompt) else plain).append(row)
        choices = []  # (longest tail, rows of the first pass, prefix) for each kind that is queued
        for rows, prefix in ((covered, self.prefix), (plain, None)):
            if rows:
                tails = [len(row.prompt) - (len(prefix.ids) if prefix else 0) for row in rows]
                first = length_groups(tails)[0]
                choices.append((max(tails[i] for i in first), [rows[i] for i in first], prefix))
        _, group, prefix = min(choices, key=lambda choice: choice[0])
        chosen = {row.handle for row in group}
        self.queue.extendleft(reversed([row for row in batch if row.handle not in chosen]))
        try:
            self._prefill(group, prefix)
        except Exception:  # noqa: BLE001 - find the prompt that fails alone; the others are admitted
            for row in group:
                try:
                    self._prefill([row], prefix)
                except Exception as err:  # noqa: BLE001
                    events.append(_failure(row, err))
        events.extend(StepEvent(row.handle, list(row.generated), None) for row in group if row.generated)

    def _prefill(self, rows: list[_Row], prefix: _Prefix | None) -> None:
        """Prefill `rows` into the slots after the active ones (after `prefix`'s cache when given);
        they join the active rows only when the prefill and their first token succeeded."""
        first = len(self.active)
        offset = 0
        if prefix is not None:
            self.kernel.load_prefix(prefix.cache, first, len(rows))
            offset = len(prefix.ids)
        logits = self.kernel.prefill(first, [row.prompt[offset:] for row in rows], offset)
        for row, token in zip(rows, self._choose(logits, rows), strict=True):
            row.generated.append(token)
        self.active.extend(rows)

    def _covers(self, prompt: list[int]) -> bool:
        """Whether the cached prefix starts `prompt` and leaves it a token of its own."""
        ids = self.prefix.ids if self.prefix else None
        return ids is not None and len(prompt) > len(ids) and prompt[: len(ids)] == ids

    def _tail_len(self, prompt: list[int]) -> int:
        return len(prompt) - len(self.prefix.ids) if self._covers(prompt) else len(prompt)

    def _learn_prefix(self, prompts: list[list[int]]) -> None:
        """When prompts the cached prefix does not cover share a long enough start among themselves
        (or with the last uncovered prompt before them), prefill that start once into a free slot
        and cache it instead, if it would cover at least as many of these prompts as the old one."""
        uncovered = [p for p in prompts if not self._covers(p)]
        if not uncovered:
            return
        others = uncovered if len(uncovered) > 1 else uncovered + [self._last_uncovered or []]
        self._last_uncovered = uncovered[-1]
        shared = _shared_start(others)
        if shared < MIN_SHARED_PREFIX or len(uncovered) < len(prompts) - len(uncovered):
            return
        ids = others[0][:shared]
        try:
            self.kernel.prefill(len(self.active), [ids])
        except Exception:  # noqa: BLE001 - no cached prefix then; the rows' own prefill reports errors
            return
        self.prefix = _Prefix(ids, self.kernel.save_prefix(len(self.active), shared))

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


@dataclass
class _Prefix:
    """The token ids of a cached prompt start and their per-layer (K, V) cache."""

    ids: list[int]
    cache: list[tuple[torch.Tensor, torch.Tensor]]


def length_groups(lengths: list[int], pass_cost: int = PASS_COST_TOKENS) -> list[list[int]]:
    """Indices of `lengths` split into prefill passes, shortest first: each pass pads its prompts to
    its longest and costs `pass_cost` tokens more (every weight is read once per pass), and the
    split minimises the total (prompts sorted by length, cut into runs by dynamic programming)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = [0] * (len(order) + 1)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        best[end], cut[end] = min(
            (best[start] + pass_cost + (end - start) * lengths[order[end - 1]], start) for start in range(end)
        )
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def _shared_start(prompts: list[list[int]]) -> int:
    """Length of the start all `prompts` share, leaving each at least one token of its own."""
    shared = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for prompt in prompts[1:]:
        shared = next((i for i in range(shared) if prompt[i] != first[i]), shared)
    return max(shared, 0)


def _failure(row: _Row, err: Exception) -> StepEvent:
    return StepEvent(row.handle, list(row.generated), "error", f"{type(err).__name__}: {err}")
