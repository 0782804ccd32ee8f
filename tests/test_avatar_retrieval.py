"""Hybrid retrieval: reciprocal-rank fusion, recency, exemplars apart from facts (both backends)."""

from __future__ import annotations

import pytest
from avatar_support import BACKENDS, WordHashEmbedder, make_store

from personalm.avatars.api import AvatarMemory
from personalm.avatars.ingest import memory_key
from personalm.avatars.retrieval import rrf
from personalm.avatars.store import NewMemory

EMBEDDER = WordHashEmbedder()


@pytest.fixture(params=BACKENDS)
def memory(request, tmp_path):
    for store in make_store(request.param, tmp_path, EMBEDDER.dimension):
        yield AvatarMemory(store, EMBEDDER)


def add(memory, avatar, text, kind="utterance", ts=None):
    vector = EMBEDDER.embed([text])[0]
    return memory.store.add(avatar, [NewMemory(kind, text, memory_key(kind, text), vector, ts=ts)])[0]


def test_rrf_rewards_agreement():
    fused = rrf([([1, 2, 3], 1.0), ([3, 1, 4], 1.0)])
    assert max(fused, key=fused.get) == 1
    assert fused[3] > fused[2] and fused[4] == pytest.approx(1 / 63)


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
