"""`personalm bench retrieval` end to end at a tiny size: our store and Chroma on the same input."""

from __future__ import annotations

import gc
import json
from types import SimpleNamespace

import numpy as np
import pytest

from personalm.studies.bench import retrieval, retrieval_data

TOPICS = ["rivers", "taxes", "schools", "farms", "railroads", "soldiers", "tariffs", "harbors", "courts", "mines"]


def write_data(root) -> None:
    """A tiny data folder in the real layout: one person's speeches and a few personas."""
    speeches = root / "speeches" / "ada_lovelace"
    speeches.mkdir(parents=True)
    for number in range(4):
        lines = [
            f"Speech {number} line {i} is about our {TOPICS[i % 10]} and the {TOPICS[(i * 7 + number) % 10]}."
            for i in range(120)
        ]
        (speeches / f"190{number}-01-01-speech.txt").write_text("President: Ada\n" + " ".join(lines))
    personas = root / "personahub" / "tool_personas.jsonl"
    personas.parent.mkdir(parents=True)
    personas.write_text("".join(json.dumps({"persona": f"A keeper of {t} number {i}.", "tool": "{}"}) + "\n"
                                for i, t in enumerate(TOPICS)))  # fmt: skip


def test_corpus_is_deterministic_and_tiles_the_unembedded(tmp_path, monkeypatch, word_hash_embedder):
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path / "home"))
    write_data(tmp_path / "data")
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return word_hash_embedder().embed(texts)

    first = retrieval_data.build(tmp_path / "data", 300, 10, 100, embed)
    second = retrieval_data.build(tmp_path / "data", 300, 10, 100, embed)
    assert calls == [110]  # embedded once (100 memories + 10 queries), then read from the cache
    assert first.texts == second.texts and not set(first.queries) & set(first.texts)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, rtol=1e-5)
    cosine = np.sum(first.vectors[100:200] * first.vectors[:100], axis=1)
    assert 0.5 < cosine.mean() < 0.99  # a tile is near its real source, not a copy
    assert "fact" in first.kinds and "utterance" in first.kinds


def test_corpus_tiles_texts_past_the_distinct_ones(tmp_path, monkeypatch, word_hash_embedder):
    """A store larger than the data's distinct texts repeats them as marked near-copies, every
    stored text still distinct, and the queries still come from texts never stored."""
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(retrieval_data, "DISTINCT_TEXTS", 120)
    write_data(tmp_path / "data")
    corpus = retrieval_data.build(tmp_path / "data", 300, 10, 100, word_hash_embedder().embed)
    assert len(corpus.texts) == len(set(corpus.texts)) == 300 and len(corpus.kinds) == 300
    assert corpus.texts[120] == f"{corpus.texts[0]} (1)" and corpus.texts[299] == f"{corpus.texts[59]} (2)"
    assert corpus.kinds[120] == corpus.kinds[0]
    assert not {q for q in corpus.queries} & set(corpus.texts[:120])


def test_bench_runs_both_stores_and_reports_the_keys(tmp_path, monkeypatch, cli, word_hash_embedder):
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path / "home"))
    write_data(tmp_path / "data")
    monkeypatch.setattr(retrieval, "_minilm", word_hash_embedder().embed)
    out = tmp_path / "bench.json"
    result = cli.invoke("bench", "retrieval", "--memories", "300", "--queries", "10", "--embedded", "100",
                        "--validation-queries", "10", "--data", str(tmp_path / "data"), "--out", str(out), "--json")  # fmt: skip
    assert result.returncode == 0, str(result)
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers == json.loads(out.read_text())
    for key in ("hybrid_p95_ms", "chroma_p95_ms", "ingest_per_s", "chroma_ingest_per_s", "dense_recall_at_10",
                "p95_ms", "peer_p95_ms", "dense_p95_ms", "hybrid_p50_ms", "chroma_p50_ms"):  # fmt: skip
        assert numbers[key] > 0, key
    assert numbers["dense_recall_at_10"] == 1.0  # 300 rows: our dense search is exact
    assert numbers["matched_probes"] == retrieval.PROBE_GRID[0] and numbers["matched_on_validation"]
    sweep = numbers["probe_sweep"]
    assert len(sweep) == 1 and sweep[0]["recall"] == numbers["validation_dense_recall_at_10"]
    assert numbers["validation_dense_recall_at_10"] >= numbers["validation_chroma_recall_at_10"]
    assert numbers["default_probes_recall_at_10"] == numbers["dense_recall_at_10"]  # exact at 300 rows either way
    assert 0 < numbers["default_probes_p50_ms"] <= numbers["default_probes_p95_ms"]
    assert numbers["embedded"] == 100 and numbers["tiled"] == 200
    assert numbers["superseded"] == 300 and numbers["versions_stored"] == 600 and numbers["superseded_hits"] == 0
    assert numbers["versions"]["chromadb"]


class _Recording:
    """A store and a collection that note whether the garbage collector is on at each call."""

    def __init__(self, fail_at: int = -1):
        self.gc_on: list[bool] = []
        self.fail_at = fail_at

    def _call(self) -> list:
        self.gc_on.append(gc.isenabled())
        if len(self.gc_on) == self.fail_at:
            raise RuntimeError("store went away")
        return []

    def keyword_search(self, *args) -> list:
        return self._call()

    def vector_search(self, *args) -> list:
        return self._call()

    def get(self, *args) -> list:
        return []

    def query(self, **kwargs) -> dict:
        self._call()
        return {"ids": [[]]}


def test_timed_queries_run_with_the_collector_off_and_give_it_back(monkeypatch):
    monkeypatch.setattr(retrieval, "hybrid_search", lambda store, *args, **kwargs: store._call())
    corpus = SimpleNamespace(queries=["a", "b"], query_vectors=np.zeros((2, 4), np.float32))
    recording = _Recording()
    assert gc.isenabled()
    timings, found = retrieval._queries(recording, recording, corpus, 1, 5, rounds=2)
    warmup = 2 * 4  # two queries (fewer than WARMUP), four contenders
    assert all(recording.gc_on[:warmup]) and not any(recording.gc_on[warmup:])
    assert len(recording.gc_on) == warmup + 2 * 2 * 4
    assert gc.isenabled() and all(len(t) == 4 for t in timings.values()) and len(found["chroma"]) == 2
    failing = _Recording(fail_at=warmup + 3)
    with pytest.raises(RuntimeError):
        retrieval._queries(failing, failing, corpus, 1, 5, rounds=2)
    assert gc.isenabled()
