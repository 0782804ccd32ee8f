"""The Python API of avatars (the CLI and the server use it): ingest, search, list, delete and
remember, each scoped to one avatar of one store; the history of a memory and the undo of its
last change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalm.avatars.chunking import Chunking
from personalm.avatars.ingest import IngestReport, TextEmbedder, ingest, memory_key
from personalm.avatars.retrieval import PLAIN_RRF, Fusion, Hit, Recall, hybrid_search
from personalm.avatars.store import KINDS, Memory, MemoryStore, NewMemory, check_avatar, check_kinds, open_store
from personalm.errors import PersonalmError

DEFAULT_DIMENSION = 384  # all-MiniLM-L6-v2
UNDO = "undo"


@dataclass
class Undone:
    """What an undo did: `action` retracted (an added memory taken back), reverted (an update
    taken back: the earlier text is current again, as a new version) or restored (a retraction
    taken back); `memory_id` the version whose change was undone, `current` the version current
    afterwards (None once retracted)."""

    action: str
    memory_id: int
    current: int | None


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
        self,
        avatar: str,
        query: str,
        k: int = 5,
        kinds: Sequence[str] = KINDS,
        recency: float = 0.0,
        as_of: float | None = None,
    ) -> list[Hit]:
        """Hybrid keyword + dense search within one avatar's memories (believed now, or at `as_of`)."""
        check_avatar(avatar)
        vector = self.embed([query])[0]
        return hybrid_search(self.store, avatar, query, vector, k, check_kinds(kinds), recency=recency, as_of=as_of)

    def recall(
        self,
        avatar: str,
        query: str,
        exemplars: int = 3,
        facts: int = 5,
        recency: float = 0.0,
        fusion: Fusion = PLAIN_RRF,
        as_of: float | None = None,
    ) -> Recall:
        """Style exemplars (verbatim utterances) and facts for a conversation, retrieved apart, and
        the closest fact taken back (so an answer does not bring it back)."""
        check_avatar(avatar)
        vector = self.embed([query])[0]
        search = {"recency": recency, "fusion": fusion, "as_of": as_of}
        return Recall(
            exemplars=hybrid_search(self.store, avatar, query, vector, exemplars, ("utterance",), **search),
            facts=hybrid_search(self.store, avatar, query, vector, facts, ("fact",), **search),
            taken_back=self.taken_back(avatar, vector, as_of),
        )

    def taken_back(self, avatar: str, vector: np.ndarray, as_of: float | None = None) -> Hit | None:
        """The retracted fact (by now, or by `as_of`) most similar to `vector`; None when none was.
        Retractions are few per avatar, so they are read and compared here, outside the index."""
        retracted = self.store.retracted(avatar, "fact", as_of)
        if not retracted:
            return None
        similarities = self.store.embeddings(avatar, [m.id for m in retracted]) @ vector
        best = int(np.argmax(similarities))
        return Hit(retracted[best], 0.0, float(similarities[best]))

    def remember(
        self, avatar: str, text: str, kind: str = "fact", ts: float | None = None, origin: str = "told"
    ) -> int | None:
        """Store one memory told directly; returns its id, or None when it is already current."""
        check_kinds([kind])
        vector = self.embed([text])[0]
        new = NewMemory(kind, text.strip(), memory_key(kind, text), vector, ts=ts, origin=origin, rule="told directly")
        ids = self.store.add(avatar, [new])
        return ids[0] if ids else None

    def list(
        self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0, as_of: float | None = None
    ) -> list[Memory]:
        return self.store.list(avatar, kind, limit, offset, as_of)

    def count(self, avatar: str, kind: str | None = None, as_of: float | None = None) -> int:
        return self.store.count(avatar, kind, as_of)

    def delete(self, avatar: str, ids: Sequence[int], origin: str = "told") -> int:
        """Retract memories: no longer believed, kept in their history."""
        return self.store.delete(avatar, ids, origin, "asked to delete")

    def history(self, avatar: str, memory_id: int) -> list[Memory]:
        return self.store.history(avatar, memory_id)

    def undo(self, avatar: str, memory_id: int | None = None, origin: str = "told") -> Undone:
        """Undo the last change of memory `memory_id` (None: the avatar's last change), as a new
        change: an add is retracted, an update is reverted (the earlier text becomes current
        again, as a new version), a retraction is restored. Undoing twice redoes."""
        head = self.store.head(avatar, memory_id)
        if head is None:
            raise PersonalmError(f"avatar '{avatar}' has no memory {memory_id}" if memory_id is not None
                                 else f"avatar '{avatar}' has no memories: nothing to undo")  # fmt: skip
        if head.ended_at is not None:  # the last change ended it: believe it again
            return Undone("restored", head.id, self.store.restore(avatar, head.id, origin, UNDO))
        before = self.store.get(avatar, [head.replaces])[0] if head.replaces is not None else None
        if before is not None and before.superseded_by == head.id:  # an update: its earlier text returns
            vector = self.store.embeddings(avatar, [before.id])[0]
            again = NewMemory(before.kind, before.text, before.key, vector, before.source, before.context, before.ts,
                              origin, UNDO)  # fmt: skip
            return Undone("reverted", head.id, self.store.update(avatar, head.id, again))
        self.store.delete(avatar, [head.id], origin, UNDO)
        return Undone("retracted", head.id, None)

    def delete_avatar(self, avatar: str) -> int:
        return self.store.delete_avatar(avatar)

    def names(self) -> list[str]:
        return self.store.avatar_names()

    def close(self) -> None:
        self.store.close()
