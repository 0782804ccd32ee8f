"""Hybrid retrieval: keyword (FTS) and dense lists fused by reciprocal rank, optionally with a
recency list; style exemplars (the person's verbatim words) come back apart from facts.

Reciprocal-rank fusion (score = Σ w_i / (k + rank_i)) needs no score calibration between BM25
and cosine, which is why it is the usual choice for hybrid search. The library default is plain
RRF (weights 1 and 1, k 60); a caller that has measured better weights on its own validation data
(the PrefEval experiment does) passes its own `Fusion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from personalm.avatars.store import KINDS, Memory, MemoryStore
from personalm.errors import PersonalmError

RRF_K = 60


@dataclass(frozen=True)
class Fusion:
    """Weights of the keyword and dense lists and the rank offset k of reciprocal-rank fusion:
    a memory's score is Σ w_i / (k + rank_i) over the lists it appears in. Only the ratio of the
    weights matters for the order; k sets how much the first ranks dominate the later ones."""

    keyword: float = 1.0
    dense: float = 1.0
    k: int = RRF_K

    def __post_init__(self) -> None:
        if self.keyword < 0 or self.dense < 0 or self.keyword + self.dense <= 0 or self.k < 0:
            raise PersonalmError(f"fusion {self}: weights must be >= 0 (not both 0) and k >= 0")

    @property
    def label(self) -> str:
        return f"keyword {self.keyword:g} / dense {self.dense:g}, k {self.k}"


PLAIN_RRF = Fusion()


SIMILARITY_TIE = 1e-4  # cosine differences below this are float error, not a closer memory


@dataclass
class Hit:
    """A retrieved memory, its fused score and its cosine similarity to the query."""

    memory: Memory
    score: float
    similarity: float


@dataclass
class Recall:
    """What the answer composer gets: exemplars of how the person speaks, facts about them."""

    exemplars: list[Hit] = field(default_factory=list)
    facts: list[Hit] = field(default_factory=list)
    taken_back: Hit | None = None  # the retracted fact closest to the query, if any

    @property
    def support(self) -> float:
        """Best similarity of any retrieved memory: low means memory does not cover the query."""
        return max((h.similarity for h in self.exemplars + self.facts), default=0.0)

    @property
    def forgotten(self) -> bool:
        """The query is closer to a fact the user took back than to anything still believed: the
        answer must not come from the model, which would make the fact up again. A tie (within
        float error: a restored fact is a current copy with the same vector) goes to what is believed."""
        return self.taken_back is not None and self.taken_back.similarity > self.support + SIMILARITY_TIE


def rrf(ranked_lists: Sequence[tuple[Sequence[int], float]], rrf_k: int = RRF_K) -> dict[int, float]:
    """Fuse ranked id lists given as (ids best first, weight)."""
    scores: dict[int, float] = {}
    for ids, weight in ranked_lists:
        for rank, memory_id in enumerate(ids, start=1):
            scores[memory_id] = scores.get(memory_id, 0.0) + weight / (rrf_k + rank)
    return scores


def hybrid_search(
    store: MemoryStore,
    avatar: str,
    query: str,
    vector: np.ndarray,
    k: int = 5,
    kinds: Sequence[str] = KINDS,
    candidates: int = 50,
    recency: float = 0.0,
    fusion: Fusion = PLAIN_RRF,
    as_of: float | None = None,
) -> list[Hit]:
    """Top k of the fused keyword + dense lists (each `candidates` long, a list weighted 0 is not
    queried) over the current memories, or those believed at `as_of`. recency > 0 adds a third
    list, the candidates newest first, with that weight (memories without a time last)."""
    keyword = [i for i, _ in store.keyword_search(avatar, query, candidates, kinds, as_of)] if fusion.keyword else []
    dense_hits = store.vector_search(avatar, vector, candidates, kinds, as_of) if fusion.dense else []
    dense = [i for i, _ in dense_hits]
    lists: list[tuple[Sequence[int], float]] = [(keyword, fusion.keyword), (dense, fusion.dense)]
    if recency > 0:
        pool = list(dict.fromkeys(keyword + dense))
        times = {m.id: m.ts for m in store.get(avatar, pool)}
        newest = sorted(pool, key=lambda i: (times.get(i) is None, -(times.get(i) or 0.0)))
        lists.append((newest, recency))
    fused = rrf(lists, fusion.k)
    top = sorted(fused, key=lambda i: (-fused[i], i))[:k]
    similarity = dict(dense_hits)
    missing = [i for i in top if i not in similarity]
    if missing:
        query_vector = np.asarray(vector, dtype=np.float32)
        similarity.update(zip(missing, (store.embeddings(avatar, missing) @ query_vector).tolist(), strict=True))
    return [Hit(m, fused[m.id], float(similarity[m.id])) for m in store.get(avatar, top)]
