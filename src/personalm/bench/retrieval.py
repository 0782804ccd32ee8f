"""`personalm bench retrieval`: our SQLite memory store against Chroma, same process, same input.

Both get the same memories (text + precomputed unit-norm embeddings, `retrieval_data`), added in
batches of BATCH (one ingested file's worth). Ingest time runs until the store answers its first
query, so it includes building the search index (ours: BM25 postings and IVF lists; Chroma: its
HNSW graph). Then every query is asked, in the same order, of: our hybrid search (BM25 + dense,
reciprocal-rank fusion, `candidates` from each list, top k, the memories read back: what the
avatar chat calls), our dense search alone, and Chroma's dense query (`n_results=k`, which also
returns the documents). Recall@k of both dense paths is measured against exact brute force
over the same vectors.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from personalm.avatars.ingest import memory_key
from personalm.avatars.retrieval import hybrid_search
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import NewMemory
from personalm.bench import retrieval_data
from personalm.bench.hardware import machine, versions

BATCH = 1000
AVATAR = "bench"
WARMUP = 5


def run(
    data_dir: Path,
    memories: int = 100_000,
    queries: int = 200,
    embedded: int = 8192,
    k: int = 10,
    candidates: int = 50,
    seed: int = 0,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Build the corpus (embedding what is not cached), run both stores, return the results."""
    corpus = retrieval_data.build(data_dir, memories, queries, embedded, embed or _minilm, seed)
    log(f"{memories} memories ({corpus.embedded} embedded for real, the rest tiled with noise), {queries} queries")
    exact = _exact_top(corpus.vectors, corpus.query_vectors, k)
    with tempfile.TemporaryDirectory(prefix="personalm-bench-retrieval-") as tmp:
        ours = _ours(Path(tmp) / "memory.db", corpus, exact, k, candidates, log)
        peer = _chroma(Path(tmp) / "chroma", corpus, exact, k, log)
    result: dict[str, Any] = {
        "memories": memories,
        "queries": queries,
        "k": k,
        "candidates": candidates,
        "embedded": corpus.embedded,
        "tiled": memories - corpus.embedded,
        "noise_sigma": retrieval_data.NOISE_SIGMA if memories > corpus.embedded else 0.0,
        "seed": seed,
        **ours,
        **peer,
        "p95_ms": ours["hybrid_p95_ms"],
        "peer_p95_ms": peer["chroma_p95_ms"],
        "hybrid_speedup_p95": _ratio(peer["chroma_p95_ms"], ours["hybrid_p95_ms"]),
        "dense_speedup_p95": _ratio(peer["chroma_p95_ms"], ours["dense_p95_ms"]),
        "ingest_speedup": _ratio(ours["ingest_per_s"], peer["chroma_ingest_per_s"]),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "machine": machine(),
        "versions": versions("numpy", "faiss-cpu", "scipy", "chromadb"),
    }
    return result


def _minilm(texts: list[str]) -> np.ndarray:
    from personalm.cli.progress import progress_bar
    from personalm.models.embedder import Embedder

    with progress_bar("embedding (once, then cached)", len(texts)) as advance:
        return Embedder().embed(texts, progress=advance)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k most similar memories per query, by brute force."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


def _ours(
    path: Path, corpus: retrieval_data.Corpus, exact: np.ndarray, k: int, candidates: int, log: Callable[[str], None]
) -> dict[str, Any]:
    store = SQLiteStore(path, dimension=corpus.vectors.shape[1])
    try:
        rows = [
            NewMemory(kind, text, memory_key(kind, text), vector)
            for kind, text, vector in zip(corpus.kinds, corpus.texts, corpus.vectors, strict=True)
        ]
        start = time.perf_counter()
        ids: list[int] = []
        for offset in range(0, len(rows), BATCH):
            ids += store.add(AVATAR, rows[offset : offset + BATCH])
        added = time.perf_counter() - start
        store.vector_search(AVATAR, corpus.query_vectors[0], k)
        ingest_s = time.perf_counter() - start
        log(f"ours: {len(ids)} memories stored in {added:.1f} s, searchable after {ingest_s:.1f} s")
        for i in range(WARMUP):
            hybrid_search(store, AVATAR, corpus.queries[i], corpus.query_vectors[i], k, candidates=candidates)
        hybrid = _timed(
            lambda i: hybrid_search(
                store, AVATAR, corpus.queries[i], corpus.query_vectors[i], k, candidates=candidates
            ),
            len(corpus.queries),
        )
        keyword = _timed(lambda i: store.keyword_search(AVATAR, corpus.queries[i], candidates), len(corpus.queries))
        dense_hits: list[list[int]] = []
        dense = _timed(
            lambda i: dense_hits.append([h for h, _ in store.vector_search(AVATAR, corpus.query_vectors[i], k)]),
            len(corpus.queries),
        )
        row_of = {memory_id: row for row, memory_id in enumerate(ids)}
        found = [[row_of[h] for h in hits] for hits in dense_hits]
        log(f"ours: hybrid p95 {np.percentile(hybrid, 95):.2f} ms, dense p95 {np.percentile(dense, 95):.2f} ms")
        return {
            "ingest_s": round(ingest_s, 2),
            "ingest_store_s": round(added, 2),
            "ingest_per_s": round(len(ids) / ingest_s, 1),
            **_percentiles("hybrid", hybrid),
            **_percentiles("keyword", keyword),
            **_percentiles("dense", dense),
            f"dense_recall_at_{k}": _recall(found, exact),
        }
    finally:
        store.close()


def _chroma(
    path: Path, corpus: retrieval_data.Corpus, exact: np.ndarray, k: int, log: Callable[[str], None]
) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection("bench", configuration={"hnsw": {"space": "ip"}}, embedding_function=None)
    start = time.perf_counter()
    for offset in range(0, len(corpus.texts), BATCH):
        stop = min(offset + BATCH, len(corpus.texts))
        collection.add(
            ids=[str(row) for row in range(offset, stop)],
            embeddings=corpus.vectors[offset:stop],
            documents=corpus.texts[offset:stop],
            metadatas=[{"kind": kind} for kind in corpus.kinds[offset:stop]],
        )
    collection.query(query_embeddings=corpus.query_vectors[:1], n_results=k)
    ingest_s = time.perf_counter() - start
    log(f"chroma: searchable after {ingest_s:.1f} s")
    for i in range(WARMUP):
        collection.query(query_embeddings=corpus.query_vectors[i : i + 1], n_results=k)
    hits: list[list[int]] = []
    latencies = _timed(
        lambda i: hits.append(
            [int(h) for h in collection.query(query_embeddings=corpus.query_vectors[i : i + 1], n_results=k)["ids"][0]]
        ),
        len(corpus.queries),
    )
    log(f"chroma: dense p95 {np.percentile(latencies, 95):.2f} ms")
    return {
        "chroma_ingest_s": round(ingest_s, 2),
        "chroma_ingest_per_s": round(len(corpus.texts) / ingest_s, 1),
        **_percentiles("chroma", latencies),
        f"chroma_recall_at_{k}": _recall(hits, exact),
    }


def _timed(call: Callable[[int], object], n: int) -> np.ndarray:
    """Milliseconds of call(i) for each query i."""
    out = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        call(i)
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def _percentiles(name: str, latencies: np.ndarray) -> dict[str, float]:
    return {
        f"{name}_p50_ms": round(float(np.percentile(latencies, 50)), 3),
        f"{name}_p95_ms": round(float(np.percentile(latencies, 95)), 3),
    }


def _recall(found: list[list[int]], exact: np.ndarray) -> float:
    k = exact.shape[1]
    return round(float(np.mean([len(set(f) & set(e.tolist())) / k for f, e in zip(found, exact, strict=True)])), 4)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")
