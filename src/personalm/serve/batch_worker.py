"""Dynamic batching for the server: one worker thread per local model steps a ContinuousBatcher.

Prefill comes first: a request that arrives while others decode is prefilled before the next
decode step and its first token sent at once (time to first token), then it joins the decode
steps (sharing their forward passes); each step's tokens go back to the asyncio side through
per-request queues. A request whose client
went away is cancelled between two steps, so it stops consuming compute at once. A request that
fails (the batcher reports it in an error event) fails alone: the others keep streaming.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from personalm.models.base import SamplingParams
from personalm.models.batching import ContinuousBatcher, DecodeRequest, StepEvent
from personalm.models.llama_kernel import LlamaKernel
from personalm.models.local import LocalModel


@dataclass(eq=False)
class Ticket:
    """One submitted request as the asyncio side sees it."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)


class GenerationError(RuntimeError):
    """A request could not be generated (it failed in the batch worker, or its soup could not be merged)."""


class BatchWorker:
    """The thread that batches one model's requests; owns a KV cache of `slots` sequences of
    `max_len` tokens next to the model's own one."""

    def __init__(self, model: LocalModel, slots: int = 32, max_len: int = 1024):
        self.model = model
        self.max_len = min(max_len, model.context_length)
        kernel = LlamaKernel(model.kernel_weights(), model.slots_for(self.max_len, slots), self.max_len)
        self.batcher = ContinuousBatcher(kernel, model.eos_ids, model.decode_ids, refill_at=1)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._tickets: dict[int, Ticket] = {}
        self._handles: dict[Ticket, int] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batch-worker-{model.name}", daemon=True)
        self._thread.start()

    async def stream(self, prompt_ids: list[int], params: SamplingParams, generator=None) -> AsyncIterator[StepEvent]:
        """Yield this request's events (token ids so far, finish reason on the last one).

        Closing the iterator early (client gone) cancels the request in the worker.
        """
        ticket = Ticket(asyncio.get_running_loop())
        self._inbox.put(("submit", ticket, DecodeRequest(prompt_ids, generator, params)))
        finished = False
        try:
            while True:
                event = await ticket.events.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise GenerationError(str(event)) from event
                if event.error is not None:
                    finished = True
                    raise GenerationError(event.error)
                yield event
                if event.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self._inbox.put(("cancel", ticket, None))

    def weights_edited(self, modules) -> None:
        """Re-pack the kernel's copy of the weights of `modules`, edited in place (a soup merge).
        Only while no request is in flight: the caller guarantees the worker is idle."""
        self.batcher.kernel.weights.refresh(self.model.model, modules)
        self.batcher.forget_prefix()

    def close(self) -> None:
        self._closed = True
        self._inbox.put(("close", None, None))
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._closed:
            block = not self.batcher.busy
            try:
                self._apply(self._inbox.get(block=block))
                while True:
                    self._apply(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if self._closed or not self.batcher.busy:
                continue
            # Prefill first: queued prompts are admitted (and their first tokens sent) pass by pass
            # before the next decode, so new requests never wait behind long answers.
            phase = self.batcher.admit if self.batcher.can_admit else self.batcher.decode
            try:
                events = phase()
            except Exception as err:  # noqa: BLE001 - every waiting client must hear about it
                self._fail_all(err)
                continue
            for event in events:
                self._deliver(event)

    def _apply(self, command: tuple) -> None:
        kind, ticket, request = command
        if kind == "submit":
            try:
                handle = self.batcher.submit(request)
            except ValueError as err:
                ticket.loop.call_soon_threadsafe(ticket.events.put_nowait, err)
                return
            self._tickets[handle], self._handles[ticket] = ticket, handle
        elif kind == "cancel" and ticket in self._handles:
            for event in self.batcher.cancel({self._handles[ticket]}):
                self._forget(event.handle)

    def _deliver(self, event: StepEvent) -> None:
        ticket = self._tickets.get(event.handle)
        if ticket is None:
            return
        ticket.loop.call_soon_threadsafe(ticket.events.put_nowait, event)
        if event.finish_reason is not None:
            self._forget(event.handle)

    def _forget(self, handle: int) -> None:
        ticket = self._tickets.pop(handle, None)
        if ticket is not None:
            self._handles.pop(ticket, None)

    def _fail_all(self, err: Exception) -> None:
        """Drop every request and tell the clients: the batcher failed outside any one request's
        error handling, so its state is unknown."""
        self.batcher.cancel(set(self._tickets))
        for ticket in list(self._tickets.values()):
            ticket.loop.call_soon_threadsafe(ticket.events.put_nowait, err)
        self._tickets.clear()
        self._handles.clear()
