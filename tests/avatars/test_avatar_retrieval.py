"""Hybrid retrieval: reciprocal-rank fusion, recency, exemplars apart from facts (both backends)."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.ingest import memory_key
from personalm.avatars.retrieval import PLAIN_RRF, Fusion, hybrid_search, rrf
from personalm.avatars.store import NewMemory
from personalm.errors import PersonalmError

DIM = 64  # of the hand-built vectors of the fusion test


@pytest.fixture
def memory(make_store, word_hash_embedder):
    embedder = word_hash_embedder()
    return AvatarMemory(make_store(embedder.dimension), embedder)


def add(memory, avatar, text, kind="utterance", ts=None):
    vector = memory.embedder.embed([text])[0]
    return memory.store.add(avatar, [NewMemory(kind, text, memory_key(kind, text), vector, ts=ts)])[0]


def test_rrf_rewards_agreement():
    fused = rrf([([1, 2, 3], 1.0), ([3, 1, 4], 1.0)])
    assert max(fused, key=fused.get) == 1
    assert fused[3] > fused[2] and fused[4] == pytest.approx(1 / 63)


def test_weighted_rrf_by_hand():
    fused = rrf([([1, 2], 2.0), ([2, 3], 1.0)], rrf_k=10)
    assert fused == pytest.approx({1: 2 / 11, 2: 2 / 12 + 1 / 11, 3: 1 / 12})
    assert (PLAIN_RRF.keyword, PLAIN_RRF.dense, PLAIN_RRF.k) == (1.0, 1.0, 60)
    for bad in ((0.0, 0.0, 60), (-1.0, 1.0, 60), (1.0, 1.0, -1)):
        with pytest.raises(PersonalmError):
            Fusion(*bad)


def at_cosine(c: float, axis: int) -> np.ndarray:
    """A unit vector at cosine c to the first axis."""
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0], vector[axis] = c, np.sqrt(1 - c * c)
    return vector


@pytest.fixture
def store(make_store):
    return make_store(DIM)


def test_fusion_weights_change_the_order(store):
    """The keyword list has only A (dense rank 12 of 12); the dense list has B first. Plain RRF:
    A = 1/61 + 1/72 beats B = 1/61; dense weighted 5 with k 20: B = 5/21 first, A = 1/21 + 5/32 fifth
    (after the fillers of dense ranks 2-4, 5/22 .. 5/24)."""
    texts = ["A zebra crossed the road.", "The weather report for Tuesday."]
    texts += [f"Filler note number {i}." for i in range(10)]
    cosines = [-0.9, 1.0] + [0.9 - 0.05 * i for i in range(10)]
    memories = [NewMemory("fact", t, memory_key("fact", t), at_cosine(c, axis))
                for axis, (t, c) in enumerate(zip(texts, cosines, strict=True), start=1)]  # fmt: skip
    a, b = store.add("ada", memories)[:2]
    query = at_cosine(1.0, 1)

    def ranked(fusion):
        return {h.memory.id: h.score for h in hybrid_search(store, "ada", "zebra", query, 12, fusion=fusion)}

    plain = ranked(PLAIN_RRF)
    assert list(plain)[:2] == [a, b] and plain[a] == pytest.approx(1 / 61 + 1 / 72)
    weighted = ranked(Fusion(keyword=1.0, dense=5.0, k=20))
    assert list(weighted)[0] == b and weighted[b] == pytest.approx(5 / 21)
    assert weighted[a] == pytest.approx(1 / 21 + 5 / 32) and list(weighted).index(a) == 4
    assert list(ranked(Fusion(keyword=1.0, dense=0.0))) == [a]


def test_hybrid_search_fuses_keyword_and_dense(memory):
    sailing = add(memory, "ada", "Sailing on the lake at dawn is my favourite thing.")
    add(memory, "ada", "The budget committee meets on Tuesdays.")
    add(memory, "ada", "Dawn patrol: the lake was frozen.")
    hits = memory.search("ada", "favourite thing: sailing at dawn", k=2)
    assert hits[0].memory.id == sailing and hits[0].score > hits[1].score
    assert -1.0 <= hits[1].similarity <= hits[0].similarity <= 1.0 + 1e-5


def test_recency_prefers_newer_of_equals(memory):
    old = add(memory, "ada", "I live in Paris.", ts=1_000.0)
    new = add(memory, "ada", "I live in Paris now, really.", ts=2_000.0)
    assert memory.search("ada", "I live in Paris.", k=2)[0].memory.id == old
    assert memory.search("ada", "I live in Paris.", k=2, recency=3.0)[0].memory.id == new


def test_recall_separates_exemplars_from_facts_and_reports_support(memory):
    said = add(memory, "ada", "Well, my friends, tea is the cure for everything.")
    fact = add(memory, "ada", "Ada prefers green tea.", kind="fact")
    add(memory, "bob", "Bob prefers tea too.", kind="fact")
    recall = memory.recall("ada", "what tea do you like?", exemplars=3, facts=3)
    assert [h.memory.id for h in recall.exemplars] == [said]
    assert [h.memory.id for h in recall.facts] == [fact]
    assert recall.support > memory.recall("ada", "quantum chromodynamics lattice").support
