"""Stage 2: cosine similarity of sentence embeddings, decided row by row against the kept rows.

Rows are processed in input order in blocks. Each block asks an index of the rows kept so far
for its nearest kept row, then settles the block internally with an exact block x block product,
and its kept rows join the index. A row is dropped when its best kept match reaches the threshold
(any threshold from 0.5 up); similarities are always exact cosines. Small inputs use exact
search; large ones a faiss IVF index (inner product on unit vectors = cosine), so the work grows
far slower than the quadratic all-pairs comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from personalm.personas.greedy import Decision

DEFAULT_THRESHOLD = 0.9
MIN_THRESHOLD = 0.5
BLOCK = 512
NPROBE = 4
RERANK = 4
EXACT_LIMIT = 50_000


class KeptIndex:
    """Nearest kept row for a batch of queries: exact below `EXACT_LIMIT` rows; above it an IVF
    index with 8-bit scalar-quantized vectors whose top `RERANK` hits are re-scored exactly. The
    IVF cells of a block are found once (one product with the centroids) and serve both its
    search and, for the rows it keeps, their insertion."""

    def __init__(self, vectors: np.ndarray, nprobe: int = NPROBE):
        import faiss

        n, dim = vectors.shape
        self.vectors = vectors
        self.exact = n <= EXACT_LIMIT
        self.rows = np.empty(n, np.int64)  # flat index position -> row (the IVF index stores rows as ids)
        self.cells: np.ndarray | None = None  # IVF cells of the last searched block
        if self.exact:
            self.index = faiss.IndexFlatIP(dim)
            return
        # ~2 sqrt(n) cells centred on evenly spaced rows (no k-means to pay for; on embeddings the
        # cells come out about as balanced): the coarse step is one BLAS product per block and a
        # query scans nprobe cells of 8-bit codes. Deterministic: no training randomness.
        nlist = int(min(8192, max(64, 2 ** round(np.log2(2 * np.sqrt(n))))))
        self._quantizer = faiss.IndexFlatIP(dim)  # kept alive here: the IVF index does not own it
        self._quantizer.add(np.ascontiguousarray(vectors[np.linspace(0, n - 1, nlist).astype(np.int64)]))
        self.index = faiss.IndexIVFScalarQuantizer(
            self._quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        self.index.train(np.ascontiguousarray(vectors[np.linspace(0, n - 1, min(n, 65_536)).astype(np.int64)]))
        self.index.nprobe = nprobe

    def add(self, vectors: np.ndarray, rows: np.ndarray, positions: np.ndarray) -> None:
        """Add the kept `rows` (`positions` within the block last passed to `nearest`)."""
        if not len(rows):
            return
        import faiss

        vectors = np.ascontiguousarray(vectors)
        if self.exact:
            self.rows[self.index.ntotal : self.index.ntotal + len(rows)] = rows
            self.index.add(vectors)
            return
        ids = np.ascontiguousarray(rows, dtype=np.int64)
        cells = np.ascontiguousarray(self.cells[positions, 0], dtype=np.int64)
        self.index.add_core(len(rows), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(cells))

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of the most similar kept vector or -1, its exact cosine) per query."""
        m = len(queries)
        queries = np.ascontiguousarray(queries)
        if not self.exact:
            centroid_sims, self.cells = self._quantizer.search(queries, self.index.nprobe)
        if self.index.ntotal == 0:
            return np.full(m, -1, np.int64), np.full(m, -np.inf, np.float32)
        if self.exact:
            _, positions = self.index.search(queries, 1)
            candidates = np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)
        else:
            _, candidates = self.index.search_preassigned(queries, RERANK, self.cells, centroid_sims)
        found = candidates >= 0
        candidates = np.maximum(candidates, 0)
        sims = np.einsum("id,ikd->ik", queries, self.vectors[candidates])
        sims = np.where(found, sims, -np.inf)
        best = np.argmax(sims, axis=1)
        pick = np.arange(m)
        return np.where(found[pick, best], candidates[pick, best], -1), sims[pick, best].astype(np.float32)


def dedup(
    vectors: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    progress: Callable[[int], None] | None = None,
    block: int = BLOCK,
) -> Decision:
    """Stage 2 decision over unit-norm float32 vectors in input order (see personas.greedy)."""
    if not MIN_THRESHOLD <= threshold <= 1.0:
        raise ValueError(f"embedding threshold must be in [{MIN_THRESHOLD}, 1], got {threshold}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    decision = Decision.all_kept(n)
    if n == 0:
        return decision
    import faiss
    from threadpoolctl import threadpool_limits

    # faiss and BLAS on one thread: their workers spin-wait, and on a shared 2-core machine that
    # made adding a block of 512 rows 8x slower, and the whole stage over 2x slower, than one thread.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            _decide(vectors, threshold, block, decision, progress)
    finally:
        faiss.omp_set_num_threads(threads)
    return decision


def _decide(
    vectors: np.ndarray, threshold: float, block: int, decision: Decision, progress: Callable[[int], None] | None
) -> None:
    n = len(vectors)
    index = KeptIndex(vectors)
    upper = np.triu_indices(block)
    for start in range(0, n, block):
        stop = min(start + block, n)
        queries = vectors[start:stop]
        best_row, best_sim = index.nearest(queries)
        inside = queries @ queries.T
        if stop - start == block:
            inside[upper] = -np.inf
        else:
            inside[np.triu_indices(stop - start)] = -np.inf
        keep = np.ones(stop - start, bool)
        candidates = np.flatnonzero((best_sim >= threshold) | (inside.max(axis=1) >= threshold))
        for r in candidates.tolist():
            earlier = np.flatnonzero(keep[:r])
            row, sim = int(best_row[r]), float(best_sim[r])
            if len(earlier):
                k = int(np.argmax(inside[r, earlier]))
                if inside[r, earlier[k]] > sim or (inside[r, earlier[k]] == sim and start + earlier[k] < row):
                    row, sim = start + int(earlier[k]), float(inside[r, earlier[k]])
            if sim >= threshold:
                keep[r] = False
                decision.keep[start + r] = False
                decision.duplicate_of[start + r] = row
                decision.similarity[start + r] = sim
        kept = np.flatnonzero(keep)
        index.add(vectors[start + kept], start + kept, kept)
        if progress:
            progress(stop - start)
