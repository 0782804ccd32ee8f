"""Soups as model ids: `soup` merges the pole adapters by the request's `preference_weights`
(the exact merge, base + Σ_k w_k·s_k·B_k·A_k); `pmorl` is the Prompted-MORL adapter, which learned
the preferences from its system prompt.

The soup runs on its own copy of the base model, since merging edits weights in place and the
other model ids must not see it. That copy holds one weight vector at a time, so requests are
grouped by weights: those asking for the weights in place join the running batch of its engine;
a request for other weights waits until every request admitted before it has finished, then the
weights change (the base weights saved before the previous merge are copied back bit for bit, the
new soup is added, and only the projections the two merges touched are re-packed for the kernel;
its KV cache stays). Waiting requests are let
in first come first served by weight vector, so a stream of requests for one weighting cannot
starve another. The merged factors are built off the event loop and cached per weight vector (least recently
used evicted).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from personalm.adapters import (
    Adapter,
    LoraFactors,
    check_shapes,
    exact_factors,
    is_adapter_dir,
    load_adapter,
    soup_applied,
    validate,
)
from personalm.errors import PersonalmError
from personalm.models.llama_kernel import supports
from personalm.models.local import LocalModel
from personalm.models.registry import resolve_local
from personalm.serve.batch_worker import BatchWorker, GenerationError
from personalm.serve.catalog import Catalog, Entry
from personalm.soups.collect import PMORL
from personalm.soups.merge import cache_key, check_named_weights
from personalm.soups.preferences import Preferences

SOUP = "soup"
FACTOR_CACHE_SIZE = 32


class WeightGate:
    """Admits requests for one weight vector at a time, first come first served between vectors.

    `switch(key, payload)` runs with no request inside, before the first request for a new key."""

    def __init__(self, switch):
        self._switch = switch
        self._cond = asyncio.Condition()
        self._queue: list[tuple[int, str]] = []
        self._tickets = itertools.count()
        self.current: str | None = None
        self.inside = 0

    def _may_enter(self, ticket: int, key: str) -> bool:
        if any(k != key for t, k in self._queue if t < ticket):
            return False
        return self.current == key or self.inside == 0

    @asynccontextmanager
    async def hold(self, key: str, payload: Any) -> AsyncIterator[None]:
        ticket = next(self._tickets)
        async with self._cond:
            self._queue.append((ticket, key))
            try:
                await self._cond.wait_for(lambda: self._may_enter(ticket, key))
                if self.current != key:
                    self.current = None
                    switching = asyncio.ensure_future(self._switch(key, payload))
                    try:
                        await asyncio.shield(switching)
                    except asyncio.CancelledError:
                        await asyncio.wait({switching})  # never leave a half-done merge to the next request
                        raise
                    self.current = key
                self.inside += 1
            finally:
                self._queue.remove((ticket, key))
                self._cond.notify_all()
        try:
            yield
        finally:
            async with self._cond:
                self.inside -= 1
                self._cond.notify_all()


class SoupModels:
    """The `soup` and `pmorl` model ids over a folder written by `personalm soups train`
    (one adapter per pole, named like `expertise.elementary`, and optionally `pmorl`)."""

    def __init__(self, root: str | Path, base: str, prefs: Preferences | None = None, slots: int = 32,
                 max_len: int = 1024):  # fmt: skip
        self.root, self.base, self.prefs = Path(root), base, prefs or Preferences.default()
        self.slots, self.max_len = slots, max_len
        if not self.root.is_dir():
            raise PersonalmError("soups folder not found", source=str(self.root))
        self.adapters: dict[str, Adapter] = {
            p.key: load_adapter(self.root / p.key, p.key) for p in self.prefs.poles if is_adapter_dir(self.root / p.key)
        }
        self.pmorl = self.root / PMORL if is_adapter_dir(self.root / PMORL) else None
        if self.pmorl is not None:
            validate(self.pmorl)  # a broken adapter fails the start, not a request
        if not self.adapters and self.pmorl is None:
            known = ", ".join(p.key for p in self.prefs.poles)
            raise PersonalmError(f"no pole adapters ({known}) and no {PMORL} adapter", source=str(self.root))
        self._factors: OrderedDict[str, dict[str, LoraFactors]] = OrderedDict()
        self._model: LocalModel | None = None
        self._engine: BatchWorker | None = None
        self._merged = ExitStack()
        self._touched: set[str] = set()
        self._load_lock = threading.Lock()
        self._gate: WeightGate | None = None

    def register(self, catalog: Catalog) -> None:
        """Add `soup` (when pole adapters exist) and `pmorl` (when its adapter exists) to the catalog."""
        if self.adapters:
            catalog.entries[SOUP] = Entry(SOUP, "soup", self.base, None, self._card(list(self.adapters)))
        if self.pmorl is not None:
            poles = [p.key for p in self.prefs.poles]
            catalog.entries[PMORL] = Entry(PMORL, "pmorl", self.base, self.pmorl, self._card(poles))

    def _card(self, poles: list[str]) -> dict[str, Any]:
        dims: dict[str, list[str]] = {}
        for key in poles:
            dims.setdefault(self.prefs.pole(key).dimension, []).append(key)
        return {"preference_poles": poles, "preference_dimensions": dims}

    def weights(self, model_id: str, given: Mapping[str, float] | None) -> dict[str, float]:
        """The request's preference weights, checked against the poles `model_id` knows."""
        if not given:
            raise PersonalmError(
                f"model '{model_id}' needs preference_weights, e.g. "
                '{"expertise.elementary": 0.5, "style.friendly": 0.5}'
            )
        known = list(self.adapters) if model_id == SOUP else [p.key for p in self.prefs.poles]
        return check_named_weights(given, known)

    def prompt(self, weights: Mapping[str, float]) -> str:
        """The combined preference prompt: per dimension, the pole with the largest positive weight
        (a text prompt cannot say "30% elementary"; the soup's merge uses the weights exactly)."""
        chosen = []
        for dim in self.prefs.dimensions:
            ranked = [(weights.get(p.key, 0.0), -i, p) for i, p in enumerate(dim.poles)]
            weight, _, pole = max(ranked, key=lambda r: r[:2])
            if weight > 0:
                chosen.append(pole)
        return self.prefs.combined_prompt(chosen)

    @staticmethod
    def with_system(messages: list[dict[str, str]], prompt: str) -> list[dict[str, str]]:
        """The preference prompt as the system message (before the client's own system text)."""
        if not prompt:
            return messages
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": f"{prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
        return [{"role": "system", "content": prompt}, *messages]

    def model(self) -> LocalModel:
        """The soup's own copy of the base (loaded on first use; its weights hold the current soup)."""
        with self._load_lock:
            if self._model is None:
                path = resolve_local(self.base)
                if path is None:
                    raise PersonalmError(f"unknown base model '{self.base}' for the soups")
                model = LocalModel(path, name=SOUP)
                self._check_shapes(model)
                self._model = model
            return self._model

    def _check_shapes(self, model: LocalModel) -> None:
        """Fail on an adapter trained on another model before any weight is touched."""
        for adapter in self.adapters.values():
            check_shapes(model.model, adapter.modules, str(adapter.path))

    @property
    def batched(self) -> bool:
        return supports(self.model().model)

    @property
    def budget(self) -> int:
        """Longest prompt + answer: the engine's length, or the context without the kernel."""
        model = self.model()
        return min(self.max_len, model.context_length) if self.batched else model.context_length

    def key(self, weights: Mapping[str, float]) -> str:
        """The identity of a weight vector's soup (cheap: no tensor is touched)."""
        return cache_key(self.adapters, weights, "exact", None)

    def factors(self, key: str, weights: Mapping[str, float]) -> dict[str, LoraFactors]:
        """The stacked exact factors of a weight vector, merged once and then reused."""
        if key in self._factors:
            self._factors.move_to_end(key)
        else:
            self._factors[key] = exact_factors(self.adapters, weights)
            while len(self._factors) > FACTOR_CACHE_SIZE:
                self._factors.popitem(last=False)
        return self._factors[key]

    @asynccontextmanager
    async def session(self, weights: Mapping[str, float]) -> AsyncIterator[BatchWorker | None]:
        """Hold the soup of `weights` while generating: yields its engine (None without the kernel)."""
        if self._gate is None:
            self._gate = WeightGate(self._switch)
        async with self._gate.hold(self.key(weights), weights):
            yield self._engine

    async def _switch(self, key: str, weights: Mapping[str, float]) -> None:
        try:
            await asyncio.to_thread(self._apply, key, weights)
        except Exception as err:  # noqa: BLE001 - the waiting client hears about it as an engine failure
            raise GenerationError(f"merging the soup failed: {err}") from err

    def _apply(self, key: str, weights: Mapping[str, float]) -> None:
        """Swap the merged soup (the engine is idle: the gate let no request in). Runs in a worker
        thread, one at a time: the factors are built here, off the event loop."""
        model = self.model()
        factors = self.factors(key, weights)
        touched = self._touched | set(factors)
        self._touched = set()
        self._merged.close()  # the base weights back, bit for bit
        self._merged.enter_context(soup_applied(model, factors, key))
        self._touched = set(factors)
        if self._engine is not None:
            try:
                self._engine.weights_edited(touched)  # re-pack only what the merges touched
                return
            except ValueError:  # a module the kernel does not pack one by one: build a new engine
                self._engine.close()
                self._engine = None
        if supports(model.model):
            self._engine = BatchWorker(model, self.slots, self.max_len)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._merged.close()
