"""`personalm bench dedup`: our two dedup stages against what users run instead, same process.

(a) MinHash stage vs datasketch: `MinHash.bulk` over each row's word set, then a `MinHashLSH`
    query-then-insert loop (how distilabel's MinHashDedup works), on the same rows, threshold
    0.9, 128 permutations. distilabel tokenizes with nltk's `word_tokenize`, whose punkt model
    cannot be downloaded here; the peer gets our very word sets built in plain Python instead
    (faster than nltk) and integer keys instead of uuid4 strings: both favour the peer. Each side
    is timed best of REPEATS runs after a warm-up on 5,000 rows.
(b) Precision and recall of both against exact Jaccard: precision over every pair a method
    reports (dropped row, the row it duplicates); recall over the true near-duplicate pairs
    (exact Jaccard >= threshold) of a seeded sample of rows checked against all rows: a pair is
    caught unless both of its rows survive.
(c) Our embedding stage on 1,000,000 vectors (mixtures of real persona embeddings with planted
    near-copies), and exact blockwise search on a prefix subset, with recall measured the same way.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import sparse

from personalm.executors import Executor
from personalm.personas import embedding_stage, minhash_stage
from personalm.personas.greedy import Decision
from personalm.personas.tokens import PUNCTUATION
from personalm.studies.bench import dedup_data

THRESHOLD = 0.9
SAMPLE = 2000
REPEATS = 3


def peer_minhash(texts: pa.Array, threshold: float, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch, the way distilabel's MinHashDedup uses it: (keep, duplicate_of)."""
    from datasketch import MinHash, MinHashLSH

    sets = [
        [w.encode() for w in {w.strip(PUNCTUATION) for w in text.lower().split()} if w] for text in texts.to_pylist()
    ]
    minhashes = MinHash.bulk(sets, num_perm=num_perm, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    keep = np.ones(len(sets), bool)
    duplicate_of = np.full(len(sets), -1, np.int64)
    for i, minhash in enumerate(minhashes):
        found = lsh.query(minhash)
        if found:
            keep[i] = False
            duplicate_of[i] = min(found)
        else:
            lsh.insert(i, minhash)
    return keep, duplicate_of


def ours_minhash(texts: pa.Array, threshold: float, num_perm: int, executor: Executor | None = None) -> Decision:
    """Stage 1 exactly as `personalm personas dedup` runs it (the local executor by default)."""
    return (executor or Executor()).minhash_dedup(texts, num_perm, threshold)


def _timed(fn: Callable[[], Any], memory: bool = True, repeats: int = 1) -> tuple[Any, float, float | None]:
    """(result, best seconds of `repeats` runs, peak MiB of Python + numpy allocations). The peak
    comes from one more, traced run: tracing slows Python-heavy code several times, so it never
    touches the timing."""
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds = min(seconds, time.perf_counter() - start)
    if not memory:
        return result, seconds, None
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def _word_matrix(tokens) -> sparse.csr_matrix:
    return sparse.csr_matrix(
        (np.ones(len(tokens.ids), np.float32), tokens.ids, tokens.offsets), shape=(len(tokens), len(tokens.vocab))
    )


def true_jaccard_pairs(tokens, sample: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (s, j), s in sample, j any other row, whose exact Jaccard is >= threshold."""
    matrix = _word_matrix(tokens)
    sizes = tokens.sizes
    found_s, found_j = [], []
    for start in range(0, len(sample), 100):
        rows = sample[start : start + 100]
        inter = (matrix @ matrix[rows].T).tocoo()
        j, k, common = inter.row, inter.col, inter.data
        union = sizes[j] + sizes[rows[k]] - common
        hit = (common / union >= threshold) & (j != rows[k])
        found_s.append(rows[k][hit])
        found_j.append(j[hit])
    return np.concatenate(found_s), np.concatenate(found_j)


def pair_metrics(
    keep: np.ndarray, duplicate_of: np.ndarray, similarity_of: Callable, truth: tuple[np.ndarray, np.ndarray], t: float
) -> dict[str, float]:
    dropped = np.flatnonzero(~keep)
    reported = similarity_of(dropped, duplicate_of[dropped])
    left, right = truth
    missed = keep[left] & keep[right]
    return {
        "precision": round(float((reported >= t).mean()) if len(dropped) else 1.0, 4),
        "recall": round(float(1 - missed.mean()) if len(left) else 1.0, 4),
        "dropped": int(len(dropped)),
        "true_pairs_checked": int(len(left)),
    }


def run_minhash(
    data_dir: Path, rows: int, seed: int, log: Callable[[str], None], engine: str = "local"
) -> dict[str, Any]:
    texts_list, planted, kinds = dedup_data.persona_rows(data_dir, rows, seed=seed)
    texts = pa.array(texts_list, pa.large_string())
    log(f"minhash: {rows} rows ({int((planted >= 0).sum())} planted near-duplicates), best of {REPEATS} runs each")
    warm = texts.slice(0, min(rows, 5000))  # first-call costs (imports, thread pools) out of the timing
    ours_minhash(warm, THRESHOLD, minhash_stage.NUM_PERM)
    peer_minhash(warm, THRESHOLD, minhash_stage.NUM_PERM)
    ours, ours_s, ours_mib = _timed(lambda: ours_minhash(texts, THRESHOLD, minhash_stage.NUM_PERM), repeats=REPEATS)
    log(f"  ours {ours_s:.2f}s")
    (peer_keep, peer_dup), peer_s, peer_mib = _timed(
        lambda: peer_minhash(texts, THRESHOLD, minhash_stage.NUM_PERM), repeats=REPEATS
    )
    log(f"  datasketch {peer_s:.2f}s")
    on_ray = _ray_minhash(texts, warm, ours, log) if engine == "ray" else {}

    tokens = minhash_stage.features(texts).tokens

    def jaccard(left, right):
        return minhash_stage.jaccard(tokens, left, right)

    sample = np.sort(np.random.default_rng(seed).choice(rows, min(SAMPLE, rows), replace=False))
    truth = true_jaccard_pairs(tokens, sample, THRESHOLD)
    ours_m = pair_metrics(ours.keep, ours.duplicate_of, jaccard, truth, THRESHOLD)
    peer_m = pair_metrics(peer_keep, peer_dup, jaccard, truth, THRESHOLD)
    copies = np.flatnonzero(planted >= 0)
    copies = copies[jaccard(copies, planted[copies]) >= THRESHOLD]
    planted_pairs = (planted[copies], copies)
    return {
        "rows": rows,
        "planted": int((planted >= 0).sum()),
        "planted_at_or_above_threshold": len(copies),
        "ours_seconds": round(ours_s, 3),
        "peer_seconds": round(peer_s, 3),
        "ours_rows_per_s": round(rows / ours_s),
        "peer_rows_per_s": round(rows / peer_s),
        "ours_peak_mib": round(ours_mib, 1),
        "peer_peak_mib": round(peer_mib, 1),
        "memory_ratio": round(peer_mib / ours_mib, 2),
        "ours": ours_m,
        "peer": peer_m,
        "ours_planted_recall": pair_metrics(ours.keep, ours.duplicate_of, jaccard, planted_pairs, THRESHOLD)["recall"],
        "peer_planted_recall": pair_metrics(peer_keep, peer_dup, jaccard, planted_pairs, THRESHOLD)["recall"],
        "bands_rows": list(minhash_stage.band_shape(THRESHOLD)),
        "sample_rows": len(sample),
        "repeats": REPEATS,
        **on_ray,
    }


def _ray_minhash(texts: pa.Array, warm: pa.Array, local: Decision, log: Callable[[str], None]) -> dict[str, Any]:
    """The same stage on Ray (`--engine ray`: the cluster at RAY_ADDRESS, else a local one), timed
    once after a warm-up run that starts Ray's workers; its decision must equal the local one."""
    from personalm.executors.ray import RayExecutor, ensure_ray

    executor = RayExecutor()
    ours_minhash(warm, THRESHOLD, minhash_stage.NUM_PERM, executor)
    start = time.perf_counter()
    remote = ours_minhash(texts, THRESHOLD, minhash_stage.NUM_PERM, executor)
    seconds = time.perf_counter() - start
    same = bool((remote.keep == local.keep).all() and (remote.duplicate_of == local.duplicate_of).all())
    log(f"  ours on Ray {seconds:.2f}s (same decision as local: {same})")
    return {
        "ray_seconds": round(seconds, 3),
        "ray_rows_per_s": round(len(texts) / seconds),
        "ray_same_decision": same,
        "ray_cpus": int(ensure_ray().cluster_resources().get("CPU", 0)),
    }


def _anchors(data_dir: Path, log: Callable[[str], None]) -> np.ndarray:
    from personalm.models.embedder import Embedder

    personas = dedup_data.real_personas(data_dir)
    log(f"embedding the {len(personas)} real personas")
    return Embedder().embed(personas)


def exact_greedy(vectors: np.ndarray, threshold: float) -> Decision:
    """Exact blockwise search (every row against every kept row), the quadratic reference."""
    old = embedding_stage.EXACT_LIMIT
    embedding_stage.EXACT_LIMIT = len(vectors)
    try:
        return embedding_stage.dedup(vectors, threshold)
    finally:
        embedding_stage.EXACT_LIMIT = old


def true_cosine_pairs(vectors: np.ndarray, sample: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    found_s, found_j = [], []
    for start in range(0, len(sample), 256):
        rows = sample[start : start + 256]
        sims = vectors @ vectors[rows].T
        j, k = np.nonzero(sims >= threshold)
        keep = j != rows[k]
        found_s.append(rows[k][keep])
        found_j.append(j[keep])
    return np.concatenate(found_s), np.concatenate(found_j)


def run_embedding(data_dir: Path, rows: int, subset: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    anchors = _anchors(data_dir, log)
    vectors, planted = dedup_data.mixture_vectors(anchors, rows, seed=seed)
    log(f"embedding stage: {rows} vectors, {int((planted >= 0).sum())} planted near-copies")

    def cosine(left, right):
        return np.einsum("ij,ij->i", vectors[left], vectors[right])

    ours, ours_s, _ = _timed(lambda: embedding_stage.dedup(vectors, THRESHOLD), memory=False)
    log(f"  ours on {rows}: {ours_s:.1f}s")
    sample = np.sort(np.random.default_rng(seed).choice(rows, min(SAMPLE, rows), replace=False))
    truth = true_cosine_pairs(vectors, sample, THRESHOLD)
    full = pair_metrics(ours.keep, ours.duplicate_of, cosine, truth, THRESHOLD)

    head = vectors[:subset]
    exact, exact_s, _ = _timed(lambda: exact_greedy(head, THRESHOLD), memory=False)
    log(f"  exact blockwise on the first {subset}: {exact_s:.1f}s")
    old = embedding_stage.EXACT_LIMIT
    embedding_stage.EXACT_LIMIT = 0
    try:
        approx, approx_s, _ = _timed(lambda: embedding_stage.dedup(head, THRESHOLD), memory=False)
    finally:
        embedding_stage.EXACT_LIMIT = old
    log(f"  ours (index) on the first {subset}: {approx_s:.1f}s")
    return {
        "rows": rows,
        "planted": int((planted >= 0).sum()),
        "seconds": round(ours_s, 2),
        "rows_per_s": round(rows / ours_s),
        "metrics": full,
        "subset_rows": subset,
        "subset_exact_seconds": round(exact_s, 2),
        "subset_ours_seconds": round(approx_s, 2),
        "subset_agreement": round(float((exact.keep == approx.keep).mean()), 5),
        "exact_extrapolated_seconds": round(exact_s * (rows / subset) ** 2),
    }


def run(
    data_dir: Path,
    rows: int = 200_000,
    vectors: int = 1_000_000,
    subset: int = 50_000,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
    engine: str = "local",
) -> dict[str, Any]:
    from personalm.provenance import load_average, machine, versions

    load = {"start": load_average()}
    minhash = run_minhash(data_dir, rows, seed, log, engine)
    load["after_minhash"] = load_average()
    embedding = run_embedding(data_dir, vectors, min(subset, vectors), seed, log)
    load["end"] = load_average()
    return {
        "benchmark": "dedup",
        "threshold": THRESHOLD,
        "num_perm": minhash_stage.NUM_PERM,
        "peer": "datasketch MinHash.bulk + MinHashLSH query-then-insert (distilabel MinHashDedup style)",
        "minhash_speedup": round(minhash["peer_seconds"] / minhash["ours_seconds"], 2),
        "minhash_precision": minhash["ours"]["precision"],
        "minhash_recall": minhash["ours"]["recall"],
        "engine": engine,
        "local_rows_per_s": minhash["ours_rows_per_s"],
        **(
            {"ray_rows_per_s": minhash["ray_rows_per_s"], "ray_same_decision": minhash["ray_same_decision"]}
            if engine == "ray"
            else {}
        ),
        "peer_precision": minhash["peer"]["precision"],
        "peer_recall": minhash["peer"]["recall"],
        "embed_1m_seconds": embedding["seconds"],
        "embed_recall": embedding["metrics"]["recall"],
        "embed_precision": embedding["metrics"]["precision"],
        "minhash": minhash,
        "embedding": embedding,
        "seed": seed,
        "machine": machine(),
        "load_average_1min": {k: round(v, 2) for k, v in load.items()},
        "versions": versions(
            "personalm", "numpy", "numba", "pyarrow", "datasketch", "faiss-cpu", "scipy", "threadpoolctl"
        ),
    }
