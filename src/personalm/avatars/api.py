"""The Python API of avatars (the CLI and the server use it): ingest, search, list, delete and
remember, each scoped to one avatar of one store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from personalm.avatars.chunking import Chunking
from personalm.avatars.ingest import IngestReport, TextEmbedder, ingest, memory_key
from personalm.avatars.retrieval import PLAIN_RRF, Fusion, Hit, Recall, hybrid_search
from personalm.avatars.store import KINDS, Memory, MemoryStore, NewMemory, check_avatar, check_kinds, open_store

DEFAULT_DIMENSION = 384  # all-MiniLM-L6-v2


class AvatarMemory:
    """Memories of avatars in one store. The embedder loads on first use (MiniLM by default)."""

    def __init__(self, store: MemoryStore | str | Path | None = None, embedder: TextEmbedder | None = None):
        self._embedder = embedder
        if isinstance(store, MemoryStore):
            self.store = store
        else:
            self.store = open_store(store, dimension=embedder.dimension if embedder else DEFAULT_DIMENSION)

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            from personalm.models.embedder import Embedder

            self._embedder = Embedder()
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    def ingest(
        self,
        avatar: str,
        paths: Sequence[str | Path],
        speakers: Sequence[str] = (),
        chunking: Chunking = Chunking(),
        progress: Callable[[int], None] | None = None,
    ) -> IngestReport:
        return ingest(self.store, self.embed, avatar, paths, speakers, chunking, progress)

    def search(
        self, avatar: str, query: str, k: int = 5, kinds: Sequence[str] = KINDS, recency: float = 0.0
    ) -> list[Hit]:
        """Hybrid keyword + dense search within one avatar's memories."""
        check_avatar(avatar)
        return hybrid_search(self.store, avatar, query, self.embed([query])[0], k, check_kinds(kinds), recency=recency)

    def recall(
        self,
        avatar: str,
        query: str,
        exemplars: int = 3,
        facts: int = 5,
        recency: float = 0.0,
        fusion: Fusion = PLAIN_RRF,
    ) -> Recall:
        """Style exemplars (verbatim utterances) and facts for a conversation, retrieved apart."""
        check_avatar(avatar)
        vector = self.embed([query])[0]
        search = {"recency": recency, "fusion": fusion}
        return Recall(
            exemplars=hybrid_search(self.store, avatar, query, vector, exemplars, ("utterance",), **search),
            facts=hybrid_search(self.store, avatar, query, vector, facts, ("fact",), **search),
        )

    def remember(self, avatar: str, text: str, kind: str = "fact", ts: float | None = None) -> int | None:
        """Store one memory told directly; returns its id, or None when it was already stored."""
        check_kinds([kind])
        vector = self.embed([text])[0]
        ids = self.store.add(avatar, [NewMemory(kind, text.strip(), memory_key(kind, text), vector, ts=ts)])
        return ids[0] if ids else None

    def list(self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0) -> list[Memory]:
        return self.store.list(avatar, kind, limit, offset)

    def count(self, avatar: str, kind: str | None = None) -> int:
        return self.store.count(avatar, kind)

    def delete(self, avatar: str, ids: Sequence[int]) -> int:
        return self.store.delete(avatar, ids)

    def delete_avatar(self, avatar: str) -> int:
        return self.store.delete_avatar(avatar)

    def names(self) -> list[str]:
        return self.store.avatar_names()

    def close(self) -> None:
        self.store.close()
