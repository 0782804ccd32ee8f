"""A persistent generation cache, so re-runs are free and crashed pipelines resume.

Keys hash the model identity, the prompt, the sampling parameters and the prompt's occurrence
number within the call (two identical prompts sampled in one call are two different samples).
Misses are generated in chunks and committed chunk by chunk: a killed run loses at most one chunk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from personalm.models.base import (
    Generation,
    ProgressCallback,
    Prompt,
    SamplingParams,
    TextModel,
    TokenScores,
    occurrences,
    prompt_key,
    stable_hash,
)
from personalm.paths import home

DEFAULT_CHUNK = 256


def default_cache_path() -> Path:
    return home() / "cache" / "generations.sqlite"


class GenerationCache:
    """SQLite (WAL) key-value store of Generation records."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, model_id TEXT, record TEXT)")
        self._db.commit()

    @staticmethod
    def key(model_id: str, prompt: Prompt, params: SamplingParams, occurrence: int) -> str:
        return stable_hash(model_id, prompt_key(prompt), params.to_dict(), occurrence)

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, record FROM generations WHERE key IN ({marks})", chunk)
                found.update({k: Generation(**json.loads(r)) for k, r in rows})
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[str, Generation]]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generations (key, model_id, record) VALUES (?, ?, ?)",
                [(k, model_id, json.dumps(g.to_dict(), ensure_ascii=False)) for k, g in items],
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedModel(TextModel):
    """Wraps any TextModel; generate() serves hits from the cache and stores misses."""

    def __init__(self, inner: TextModel, cache: GenerationCache, chunk_size: int = DEFAULT_CHUNK):
        self.inner = inner
        self.cache = cache
        self.chunk_size = chunk_size
        self.model_id = inner.model_id

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Generation]:
        params = params or SamplingParams()
        slots = [
            (prompt, occurrence, self.cache.key(self.model_id, prompt, params, occurrence))
            for prompt, (_, occurrence) in zip(prompts, occurrences(prompts), strict=True)
        ]
        results = self.cache.get_many([key for _, _, key in slots])
        if progress and results:
            progress(sum(key in results for _, _, key in slots))
        missing = [slot for slot in slots if slot[2] not in results]
        for chunk in self._chunks(missing):
            fresh = self._generate_missing(chunk, params, progress)
            self.cache.put_many(self.model_id, fresh)
            results.update(fresh)
        return [results[key] for _, _, key in slots]

    def _chunks(self, missing: list[tuple[Prompt, int, str]]) -> list[list[tuple[Prompt, int, str]]]:
        """About `chunk_size` slots each, never splitting one prompt's occurrences: occurrence k is
        produced by sending the prompt k+1 times, so a split would generate the first ones twice."""
        groups: dict[str, list[tuple[Prompt, int, str]]] = {}
        for slot in missing:
            groups.setdefault(prompt_key(slot[0]), []).append(slot)
        chunks: list[list[tuple[Prompt, int, str]]] = [[]]
        for group in groups.values():
            if chunks[-1] and len(chunks[-1]) + len(group) > self.chunk_size:
                chunks.append([])
            chunks[-1].extend(group)
        return [chunk for chunk in chunks if chunk]

    def _generate_missing(self, slots, params, progress) -> list[tuple[str, Generation]]:
        """Generate (prompt, occurrence) pairs the cache lacks, exactly as an uncached call would.

        Models seed a sample from (seed, prompt, occurrence within the call), so occurrence k is
        produced by sending the prompt k+1 times; greedy output is the same for every occurrence.
        """
        need: dict[str, tuple[Prompt, int]] = {}
        for prompt, occurrence, _ in slots:
            pk = prompt_key(prompt)
            top = 0 if params.greedy else occurrence
            need[pk] = (prompt, max(top, need.get(pk, (prompt, 0))[1]))
        call: list[Prompt] = []
        position: dict[tuple[str, int], int] = {}
        for pk, (prompt, top) in need.items():
            for occurrence in range(top + 1):
                position[(pk, occurrence)] = len(call)
                call.append(prompt)
        generations = self.inner.generate(call, params, progress)
        return [
            (key, generations[position[(prompt_key(prompt), 0 if params.greedy else occurrence)]])
            for prompt, occurrence, key in slots
        ]

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        return self.inner.score(contexts, continuations)

    def info(self) -> dict:
        return self.inner.info() | {"cache": str(self.cache.path)}

    def close(self) -> None:
        self.inner.close()
        self.cache.close()
