"""The SQLite store's in-memory index: BM25 equal to FTS5's, the IVF path (recall, deletes,
updates, kind filter, tenancy) and consistency with rows committed by another connection."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from personalm.avatars import memory_index
from personalm.avatars.memory_index import MemoryIndex, Tokenizer
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import NewMemory

DOCS = [
    "the quick brown fox jumps over the lazy dog",
    "a quick brown dog runs in the park",
    "foxes and dogs are not friends in the story",
    "the park is green and quiet in the morning",
    "morning tea with a quiet friend",
    "brown bread for breakfast every morning",
]


def test_bm25_scores_equal_fts5(unit):
    """Same ranking function and statistics as SQLite FTS5's bm25 (k1 1.2, b 0.75)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='porter unicode61')")
    db.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", [(i + 1, d) for i, d in enumerate(DOCS)])
    index = MemoryIndex(unit.dim, Tokenizer())
    index.add(list(range(1, len(DOCS) + 1)), [0] * len(DOCS), DOCS, np.stack([unit(i) for i in range(len(DOCS))]))
    for query in ("quick brown", "morning quiet park", "dogs", "friend"):
        terms = Tokenizer().query(query)
        match = " OR ".join(f'"{t}"' for t in terms)
        fts = db.execute("SELECT rowid, -bm25(t) FROM t WHERE t MATCH ? ORDER BY bm25(t), rowid", (match,)).fetchall()
        ours = index.keyword_search(query, 10, [0, 1])
        assert [i for i, _ in ours] == [i for i, _ in fts], query
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in fts], rtol=1e-5)


def random_units(n: int, seed: int, dim: int) -> np.ndarray:
    """Clustered unit vectors (like sentence embeddings), so nearest neighbours mean something."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, dim))
    vectors = centers[rng.integers(32, size=n)] + 0.5 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def small_ann(monkeypatch):
    monkeypatch.setattr(memory_index, "ANN_MIN_ROWS", 400)


def test_ivf_path_recall_deletes_updates_and_kinds(small_ann, unit):
    n = 3000
    vectors = random_units(n, 0, unit.dim)
    kinds = [i % 4 == 0 for i in range(n)]  # every fourth row is a fact (kind 1)
    index = MemoryIndex(unit.dim, Tokenizer())
    ids = list(range(10, 10 + n))
    index.add(ids, [int(f) for f in kinds], [f"memory {i}" for i in ids], vectors)
    assert index._ann is not None
    queries = random_units(50, 1, unit.dim)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len({i - 10 for i, _ in index.vector_search(q, 10, [0, 1])} & set(e)) / 10
                      for q, e in zip(queries, exact, strict=True)])  # fmt: skip
    assert recall >= 0.9
    target = vectors[5]
    assert index.vector_search(target, 1, [0, 1])[0][0] == 15
    index.remove([15])
    assert 15 not in [i for i, _ in index.vector_search(target, 20, [0, 1])]
    moved = unit(999)
    index.add([16], [0], ["memory 16 moved"], moved[None, :])
    assert index.vector_search(moved, 1, [0, 1])[0] == (16, pytest.approx(1.0, abs=1e-4))
    assert 16 not in [i for i, _ in index.vector_search(vectors[6], 5, [0, 1])]
    facts = index.vector_search(queries[0], 20, [1])
    assert facts and all((i - 10) % 4 == 0 for i, _ in facts)


def mem(text: str, vector: np.ndarray, kind: str = "utterance") -> NewMemory:
    return NewMemory(kind=kind, text=text, key=f"{kind}:{text}", embedding=vector)


def test_ivf_store_keeps_avatars_apart(tmp_path, small_ann, unit):
    store = SQLiteStore(tmp_path / "memory.db", dimension=unit.dim)
    vectors = random_units(1200, 2, unit.dim)
    ada = store.add("ada", [mem(f"ada says {i}", v) for i, v in enumerate(vectors[:600])])
    bob = store.add("bob", [mem(f"bob says {i}", v) for i, v in enumerate(vectors[600:])])
    for vector in vectors[:20]:
        assert {i for i, _ in store.vector_search("bob", vector, 10)} <= set(bob)
        assert {i for i, _ in store.keyword_search("bob", "ada says", 10)} <= set(bob)
    assert store.vector_search("ada", vectors[3], 1)[0][0] == ada[3]
    store.close()


def test_index_follows_changes_committed_by_another_connection(tmp_path, small_ann, unit):
    """Two stores on one file stand for two processes: each search sees every committed change."""
    writer = SQLiteStore(tmp_path / "memory.db", dimension=unit.dim)
    reader = SQLiteStore(tmp_path / "memory.db", dimension=unit.dim)
    vectors = random_units(700, 3, unit.dim)
    ids = writer.add("ada", [mem(f"line {i} about rivers", v) for i, v in enumerate(vectors[:500])])
    assert reader.vector_search("ada", vectors[7], 1)[0][0] == ids[7]
    more = writer.add("ada", [mem(f"line {i} about mountains", v) for i, v in enumerate(vectors[500:], 500)])
    assert reader.vector_search("ada", vectors[650], 1)[0][0] == more[150]
    assert (
        reader.keyword_search("ada", "mountains", 1000) and len(reader.keyword_search("ada", "mountains", 1000)) == 200
    )
    writer.delete("ada", [ids[7]])
    assert ids[7] not in [i for i, _ in reader.vector_search("ada", vectors[7], 10)]
    glaciers = writer.update("ada", ids[8], mem("a brand new thought on glaciers", unit(4242)))
    assert reader.vector_search("ada", unit(4242), 1)[0][0] == glaciers
    assert ids[8] not in [i for i, _ in reader.vector_search("ada", vectors[8], 10)]
    assert reader.keyword_search("ada", "glaciers", 5) == [
        (glaciers, pytest.approx(reader.keyword_search("ada", "glaciers", 5)[0][1]))
    ]
    writer.delete_avatar("ada")
    fresh = writer.add("ada", [mem("only this remains", unit(7))])
    assert [i for i, _ in reader.vector_search("ada", vectors[9], 10)] == fresh
    assert reader.keyword_search("ada", "rivers", 10) == []
    writer.close()
    reader.close()


def test_store_rebuilds_after_many_deletes(tmp_path, small_ann, unit):
    store = SQLiteStore(tmp_path / "memory.db", dimension=unit.dim)
    vectors = random_units(800, 4, unit.dim)
    ids = store.add("ada", [mem(f"row {i}", v) for i, v in enumerate(vectors)])
    store.vector_search("ada", vectors[0], 1)
    store.delete("ada", ids[:400])
    store.vector_search("ada", vectors[0], 1)  # marks 400 of 800 positions dead
    store.add("ada", [mem("one more row", unit(5))])
    hits = store.vector_search("ada", vectors[500], 5)
    assert hits[0][0] == ids[500] and store._indexes["ada"].size == 401
    store.close()


def test_keyword_top_k_is_the_head_of_the_full_ranking(unit):
    """The top k comes from the k x terms best postings: it must equal the first k of the full
    BM25 ranking (ties by id), with common terms in thousands of rows, duplicate texts and kinds."""
    rng = np.random.default_rng(7)
    words = ["river", "tax", "school", "farm", "rail", "soldier", "tariff", "harbor", "court", "mine"]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 9), p=np.linspace(2, 0.2, 10) / 11)) for _ in range(3000)]
    texts += texts[:200]  # exact duplicates tie
    index = MemoryIndex(unit.dim, Tokenizer())
    n = len(texts)
    index.add(list(range(n)), [i % 3 for i in range(n)], texts, np.stack([unit(i % 50) for i in range(n)]))
    for query in ("river tax", "mine court harbor", "school farm rail soldier tariff", "tax"):
        for kinds in ([0, 1, 2], [1]):
            full = index.keyword_search(query, n, kinds)
            for k in (1, 5, 50):
                assert index.keyword_search(query, k, kinds) == full[:k], (query, kinds, k)


def test_store_probes_trade_recall_for_speed(tmp_path, small_ann, unit):
    """More IVF lists probed, closer to exact (the 4-bit codes pick the candidates, the float
    vectors rank them, so even all lists are not quite exact)."""
    store = SQLiteStore(tmp_path / "memory.db", dimension=unit.dim)
    vectors = random_units(3000, 5, unit.dim)
    ids = np.array(store.add("ada", [mem(f"row {i}", v) for i, v in enumerate(vectors)]))
    queries = random_units(40, 6, unit.dim)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

    def recall() -> float:
        found = [{i for i, _ in store.vector_search("ada", q, 10)} for q in queries]
        return float(np.mean([len(f & set(ids[e])) / 10 for f, e in zip(found, exact, strict=True)]))

    store.probes = 1
    one = recall()
    store.probes = 10_000
    assert recall() >= 0.95 > one
    store.close()


def test_keyword_scores_after_updates_equal_a_fresh_index(unit):
    """Dead rows (updated or removed) are out of the counts and the scores: the index after
    changes ranks and scores like one built from the current rows alone, kinds filtered or not."""
    rng = np.random.default_rng(3)
    words = ["river", "tax", "school", "farm", "rail", "soldier", "tariff", "harbor"]
    texts = {i: " ".join(rng.choice(words, size=rng.integers(1, 7))) for i in range(600)}
    kinds = {i: i % 2 for i in texts}
    changed = MemoryIndex(unit.dim, Tokenizer())
    for start in range(0, 600, 100):  # several blocks
        batch = list(range(start, start + 100))
        changed.add(batch, [kinds[i] for i in batch], [texts[i] for i in batch], np.stack([unit(i) for i in batch]))
    updated = list(range(0, 600, 7))
    for i in updated:
        texts[i] = " ".join(rng.choice(words, size=rng.integers(1, 7)))
    changed.add(updated, [kinds[i] for i in updated], [texts[i] for i in updated], np.stack([unit(i) for i in updated]))
    removed = list(range(3, 600, 11))
    changed.remove(removed)
    current = sorted(set(texts) - set(removed))
    fresh = MemoryIndex(unit.dim, Tokenizer())
    fresh.add(current, [kinds[i] for i in current], [texts[i] for i in current], np.stack([unit(i) for i in current]))
    assert changed.live < changed.size
    for query in ("river tax", "harbor", "school farm rail soldier"):
        for kind_filter in ([0, 1], [1]):
            assert changed.keyword_search(query, 40, kind_filter) == fresh.keyword_search(query, 40, kind_filter)
