"""Everything the server can answer with, by model id: base models and saved LoRA adapters.

Models load on first use (an adapter is merged into its own copy of the base) and each gets one
engine thread, so requests to the same model batch together.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalm.adapters import list_adapters, validate
from personalm.errors import PersonalmError
from personalm.models.llama_kernel import supports
from personalm.models.local import LocalModel
from personalm.models.registry import DEFAULT_MODEL, resolve_local
from personalm.paths import home
from personalm.serve.batch_worker import BatchWorker


@dataclass
class Entry:
    id: str
    kind: str
    base: str
    adapter: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class UnknownModel(LookupError):
    pass


def saved_adapters() -> dict[str, Path]:
    """Adapters saved under PERSONALM_HOME/adapters/NAME (PEFT format)."""
    return list_adapters(home() / "adapters")


class Catalog:
    def __init__(
        self,
        base_models: list[str] | None = None,
        adapters: dict[str, Path] | None = None,
        slots: int = 32,
        max_len: int = 1024,
    ):
        self.slots, self.max_len = slots, max_len
        self.entries: dict[str, Entry] = {}
        for name in base_models or [DEFAULT_MODEL]:
            if resolve_local(name) is None:
                raise PersonalmError(f"unknown model '{name}' (expected a local model name or directory)")
            self.entries[name] = Entry(name, "base", name)
        for name, path in (saved_adapters() | (adapters or {})).items():
            validate(path)  # a broken adapter fails the start, not a request
            self.entries[name] = Entry(name, "adapter", next(iter(self.entries)), Path(path))
        self._loaded: dict[str, tuple[LocalModel, BatchWorker | None]] = {}
        self._voices: dict[Path, tuple[LocalModel, BatchWorker | None]] = {}
        self._bases: dict[str, LocalModel] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> Entry:
        if model_id not in self.entries:
            raise UnknownModel(model_id)
        return self.entries[model_id]

    def attach(self, model_id: str, model: LocalModel) -> None:
        """Serve an already loaded model under a catalog id (no second copy in memory)."""
        self.get(model_id)
        with self._lock:
            engine = BatchWorker(model, self.slots, self.max_len) if supports(model.model) else None
            self._loaded[model_id] = (model, engine)

    def load(self, model_id: str) -> tuple[LocalModel, BatchWorker | None]:
        """The model and its engine (None for architectures the batching kernel does not support)."""
        entry = self.get(model_id)
        with self._lock:
            if model_id not in self._loaded:
                model = LocalModel(resolve_local(entry.base), adapter=entry.adapter, name=entry.id)
                engine = BatchWorker(model, self.slots, self.max_len) if supports(model.model) else None
                self._loaded[model_id] = (model, engine)
            return self._loaded[model_id]

    def load_voice(self, base: str, adapter: Path, name: str) -> tuple[LocalModel, BatchWorker | None]:
        """An avatar's voice adapter version merged into its own copy of its base, loaded on first use.
        Kept apart from `entries`: no model id reaches it but the avatar chat's, after its key check.
        A published version's folder never changes, so its path identifies it."""
        with self._lock:
            if adapter not in self._voices:
                path = resolve_local(base)
                if path is None:
                    raise PersonalmError(f"the adapter's base model '{base}' is not available on this server")
                model = LocalModel(path, adapter=adapter, name=name)
                engine = BatchWorker(model, self.slots, self.max_len) if supports(model.model) else None
                self._voices[adapter] = (model, engine)
            return self._voices[adapter]

    def voice_base(self, base: str) -> LocalModel:
        """The base model voice adapters were trained from, for proxy-tuned decoding and the voice
        likelihood: the served model itself when the catalog serves that base (no second copy),
        else a copy without an engine (one per base, loaded on first use)."""
        entry = self.entries.get(base)
        if entry is not None and entry.adapter is None:
            return self.load(base)[0]
        with self._lock:
            if base not in self._bases:
                path = resolve_local(base)
                if path is None:
                    raise PersonalmError(f"the adapter's base model '{base}' is not available on this server")
                self._bases[base] = LocalModel(path, name=f"{base}@voice-base")
            return self._bases[base]

    def close(self) -> None:
        for _, engine in [*self._loaded.values(), *self._voices.values()]:
            if engine is not None:
                engine.close()
        self._loaded.clear()
        self._voices.clear()
        self._bases.clear()
