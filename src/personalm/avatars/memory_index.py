"""One avatar's search index held in memory: BM25 postings and dense vectors, fed from the
store's committed rows and updated incrementally (appends, updates and deletes by position).

Why in memory: at 100k memories SQLite FTS5 spends 25-60 ms per OR-query computing bm25 for every
matching row, and a numpy matrix-vector product over all vectors takes ~12 ms. Here BM25 is
scored over the query terms' postings (exactly, k1 = 1.2, b = 0.75, FTS5's idf) by two compiled
(numba) loops: one adds each posting's weight into a scratch score per row and notes the rows it
touches, one finds the k-th best of those with a heap of k. Own code because numpy needed a chain
of whole-array passes per query (concatenate the postings, weigh them, bincount over every row,
partition): at 100k memories and 13k postings per query p50 0.37 → 0.15 ms, p95 0.70 → 0.33 ms
(measured here). Dense search is exact below `ANN_MIN_ROWS` rows and above it an inverted-file index with 4-bit
product-quantized codes scanned by faiss's fast-scan kernels (IVF-PQ fast scan, ~2√n lists, a
share of them probed), whose best `ANN_RERANK` candidates are re-scored exactly on the float
vectors. Why: at 100k rows a query's scan of float vectors is memory-bound (IVF-Flat needed 2.7 ms
p95 for recall@10 0.978), while the fast-scan codes are 16x smaller and the exact re-ranking
restores the order: 0.36 ms p95 at the same recall, measured here. IVF rather than HNSW because it
trains and fills in a few seconds at 100k rows where faiss's HNSW graph (M 32) took five minutes on
the two busy cores here, and deletes in place.

Rows are addressed by position; an updated row gets a new position and its old one is marked
dead (and removed from the IVF lists), so nothing is rewritten in place. Dead positions are
masked in every search; when they pass a quarter of all positions the owner rebuilds the index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain

import numba
import numpy as np
import scipy.sparse as sp

from personalm.eval.text import STOPWORDS

ANN_MIN_ROWS = 10_000
"""Below this many searchable rows exact search (~0.5 ms) is used instead of IVF."""
ANN_PROBE_SHARE = 3 / 16
"""Share of the IVF lists probed per query (96 of 512 at 100k rows; measured on held-out speech
sentences there: recall@10 0.948 at 48 lists, 0.961 at 64, 0.978 at 96, 0.984 at 128)."""
ANN_RERANK = 100
"""Fast-scan candidates re-scored exactly (at least twice k): 100 gave the same recall@10 as 300."""
TRAIN_PER_LIST = 64
"""Training vectors per IVF list (a seeded sample of the live rows); the quantizer trains on them too."""
ANN_RETRAIN_GROWTH = 4
"""The IVF lists are retrained (the index rebuilt) once the avatar has grown this many times."""
BM25_K1, BM25_B = 1.2, 0.75
DEAD = -1
"""The state of a position whose row is no longer current (live positions hold their kind's code):
one byte per row that BM25 reads for each posting, where separate alive and kind arrays cost two
scattered reads."""
MAX_BLOCKS = 8
TOKEN = re.compile(r"\w+", re.UNICODE)
Block = tuple[int, sp.csc_array, np.ndarray]
"""Postings of the rows from a start position: (start, CSC rows x terms of counts, each posting's row length)."""


class Tokenizer:
    """Lower-cased words, Porter-stemmed (like FTS5's `porter unicode61`); stems are cached."""

    def __init__(self) -> None:
        from nltk.stem.porter import PorterStemmer

        self._stem = PorterStemmer().stem
        self._cache: dict[str, str] = {}

    def stem(self, word: str) -> str:
        stem = self._cache.get(word)
        if stem is None:
            stem = self._cache[word] = self._stem(word)
        return stem

    def words(self, text: str) -> list[str]:
        return TOKEN.findall(text.lower())

    def query(self, text: str, limit: int = 32) -> list[str]:
        """Distinct stems of the query's non-stopwords (all words when only stopwords remain)."""
        words = list(dict.fromkeys(self.words(text)))
        kept = [w for w in words if w not in STOPWORDS] or words
        return list(dict.fromkeys(self.stem(w) for w in kept[:limit]))


class MemoryIndex:
    """Keyword and dense search over one avatar's rows. Not thread-safe: the store locks."""

    def __init__(self, dimension: int, tokenizer: Tokenizer):
        self.dimension = dimension
        self.tokenizer = tokenizer
        self.version = 0
        self.size = 0
        self._ids = np.zeros(0, np.int64)
        self._state = np.zeros(0, np.int8)  # a row's kind code, or DEAD
        self._lengths = np.zeros(0, np.float64)
        self._vectors = np.zeros((0, dimension), np.float32)
        self._scores = np.zeros(0, np.float32)  # BM25 scratch: zero between queries
        self._touched = np.zeros(0, np.int64)
        self._position: dict[int, int] = {}
        self._terms: dict[str, int] = {}
        self._word_terms: dict[str, int] = {}
        self._blocks: list[Block] = []
        self._total_length = 0.0
        self._ann = None
        self._ann_trained_on = 0
        self._ann_probes = 0

    @property
    def live(self) -> int:
        return len(self._position)

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live / self.size if self.size else 0.0

    def add(self, ids: Sequence[int], kinds: Sequence[int], texts: Sequence[str], vectors: np.ndarray) -> None:
        """Append rows; a row whose id is already indexed replaces it (an update)."""
        if not len(ids):
            return
        start, n = self.size, len(ids)
        stop = start + n
        self._grow(stop)
        position = self._position
        self._forget([position[i] for i in ids if i in position])
        position.update(zip(ids, range(start, stop), strict=True))
        self._ids[start:stop] = ids
        self._state[start:stop] = kinds
        self._vectors[start:stop] = vectors
        self._add_postings(start, texts)
        self.size = stop
        if self.live >= ANN_MIN_ROWS and (self._ann is None or self.live > ANN_RETRAIN_GROWTH * self._ann_trained_on):
            self._build_ann()
        elif self._ann is not None:
            self._ann.add_with_ids(self._vectors[start:stop], np.arange(start, stop, dtype=np.int64))

    def remove(self, ids: Sequence[int]) -> None:
        """Mark dead the rows of these ids (those indexed): they are no longer current."""
        self._forget([self._position.pop(i) for i in ids if i in self._position])

    def _forget(self, positions: Sequence[int]) -> None:
        if not positions:
            return
        positions = np.asarray(positions, dtype=np.int64)
        self._state[positions] = DEAD
        self._total_length -= float(self._lengths[positions].sum())
        if self._ann is not None:
            import faiss

            self._ann.remove_ids(faiss.IDSelectorBatch(positions))

    def _grow(self, needed: int) -> None:
        capacity = len(self._ids)
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, 256)
        for name in ("_ids", "_state", "_lengths"):
            old = getattr(self, name)
            new = np.zeros(capacity, old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)
        vectors = np.zeros((capacity, self.dimension), np.float32)
        vectors[: self.size] = self._vectors[: self.size]
        self._vectors = vectors
        self._scores, self._touched = np.zeros(capacity, np.float32), np.zeros(capacity, np.int64)

    def _add_postings(self, start: int, texts: Sequence[str]) -> None:
        """One CSC block (rows: positions from `start`, columns: term ids, values: term counts)."""
        words = [self.tokenizer.words(text) for text in texts]
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        self._lengths[start : start + len(texts)] = lengths
        flat = list(chain.from_iterable(words))
        word_terms, terms = self._word_terms, self._terms
        for word in set(flat).difference(word_terms):
            word_terms[word] = terms.setdefault(self.tokenizer.stem(word), len(terms))
        cols = np.fromiter(map(word_terms.__getitem__, flat), np.int64, len(flat))
        rows = np.repeat(np.arange(len(texts)), lengths)
        self._total_length += float(self._lengths[start : start + len(texts)].sum())
        data = np.ones(len(cols), np.float32)
        block = sp.coo_array((data, (rows, cols)), shape=(len(texts), len(terms))).tocsc()
        block.sum_duplicates()
        self._blocks.append(self._block(start, block))
        if len(self._blocks) > MAX_BLOCKS:
            self._merge_blocks()

    def _merge_blocks(self) -> None:
        width = len(self._terms)
        parts = [_widen(block, width) for _, block, _ in self._blocks]
        self._blocks = [self._block(self._blocks[0][0], sp.vstack(parts, format="csc"))]

    def _block(self, start: int, block: sp.csc_array) -> Block:
        """The block with each posting's row length beside it (a row's length never changes: an
        update gets a new position), so BM25 reads it in order instead of gathering it per query."""
        return start, block, self._lengths[start + block.indices].astype(np.float32)

    def _build_ann(self) -> None:
        """Train ~2√n IVF lists (faiss's seeded k-means) and the 4-bit product quantizer (two
        dimensions per code) on the live vectors, and file them."""
        import faiss

        live = np.flatnonzero(self._state[: self.size] != DEAD)
        lists = 2 << int(np.log2(np.sqrt(len(live))))
        codes = self.dimension // 2 if self.dimension % 2 == 0 else self.dimension
        ann = faiss.index_factory(self.dimension, f"IVF{lists},PQ{codes}x4fs", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(ann)
        ivf.cp.niter = ann.pq.cp.niter = 10  # the codes only pick the candidates re-ranked exactly
        ivf.cp.max_points_per_centroid = TRAIN_PER_LIST
        sample = live
        if len(live) > TRAIN_PER_LIST * lists:  # k-means would subsample anyway; copying them all costs seconds
            sample = np.sort(np.random.default_rng(len(live)).choice(live, TRAIN_PER_LIST * lists, replace=False))
        ann.train(self._vectors[sample])
        ann.add_with_ids(self._vectors[live], live.astype(np.int64))
        self._ann, self._ann_trained_on = ann, len(live)
        self._ann_probes = max(1, round(lists * ANN_PROBE_SHARE))

    def _allowed(self, kinds: Sequence[int]) -> np.ndarray:
        state = self._state[: self.size]
        return state == kinds[0] if len(kinds) == 1 else state != DEAD

    def keyword_search(self, query: str, k: int, kinds: Sequence[int]) -> list[tuple[int, float]]:
        """Top k by BM25 over the allowed rows; only rows containing a query term are returned."""
        wanted = np.array([self._terms[t] for t in self.tokenizer.query(query) if t in self._terms], np.int64)
        if not len(wanted) or k <= 0 or not self.live:
            return []
        df = np.zeros(len(wanted), np.int64)
        for start, block, _ in self._blocks:
            if self.live < self.size:
                _live_df(block.indptr, block.indices, start, wanted, self._state, df)
            else:
                inside = wanted < block.shape[1]
                terms = wanted[inside]
                df[inside] += block.indptr[terms + 1] - block.indptr[terms]
        live = self.live
        idf = np.maximum(np.log((live - df + 0.5) / (df + 0.5)), 1e-6).astype(np.float32)
        avgdl = max(self._total_length / live, 1.0)
        kind = kinds[0] if len(kinds) == 1 else -1
        touched = 0
        for start, block, row_lengths in self._blocks:
            touched = _bm25_add(
                block.indptr, block.indices, block.data, row_lengths, start, wanted, idf, self._state, kind,
                np.float32(BM25_K1 * (1 - BM25_B)), np.float32(BM25_K1 * BM25_B / avgdl), np.float32(BM25_K1 + 1),
                self._scores, self._touched, touched,
            )  # fmt: skip
        return self._top(*_best_touched(self._scores, self._touched, touched, k), k)

    def vector_search(
        self, query: np.ndarray, k: int, kinds: Sequence[int], probes: int | None = None
    ) -> list[tuple[int, float]]:
        """Top k by cosine over the allowed rows: exact, or IVF when enough rows are allowed
        (`probes` lists scanned; None: `ANN_PROBE_SHARE` of them)."""
        if k <= 0 or not self.live:
            return []
        if self._ann is not None and len(kinds) > 1 and self.live >= ANN_MIN_ROWS:
            return self._ann_search(query, k, None, probes)
        allowed = self._allowed(kinds)
        if self._ann is not None and np.count_nonzero(allowed) >= ANN_MIN_ROWS:
            return self._ann_search(query, k, allowed, probes)
        if self.size <= ANN_MIN_ROWS:
            scores = _dot(self._vectors[: self.size], query)
            candidates = np.flatnonzero(allowed)
            return self._top(candidates, scores[candidates], k)
        candidates = np.flatnonzero(allowed)
        return self._top(candidates, _gather_dot(self._vectors, candidates, query), k)

    def _ann_search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None, probes: int | None
    ) -> list[tuple[int, float]]:
        """IVF-PQ candidates re-ranked exactly; dead rows are out of the lists already, a kind
        filter is a bitmap selector."""
        import faiss

        params = faiss.SearchParametersIVF(nprobe=probes or self._ann_probes)
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(bitmap)
        _, positions = self._ann.search(query.reshape(1, -1), max(ANN_RERANK, 2 * k), params=params)
        positions = positions[0][positions[0] >= 0]
        return self._top(positions, _gather_dot(self._vectors, positions, query), k)

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The vectors of those ids that are indexed rows (copies: the index may grow under them)."""
        position = self._position
        return {i: self._vectors[position[i]].copy() for i in ids if i in position}

    def _top(self, positions: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Best k by score, ties by id (deterministic: every row tied with the k-th is ordered by
        id before the cut, where a partition alone would keep an arbitrary few of them)."""
        if len(scores) > k:
            keep = scores >= -np.partition(-scores, k - 1)[k - 1]
            positions, scores = positions[keep], scores[keep]
        ids = self._ids[positions]
        order = np.lexsort((ids, -scores))[:k]
        return [(int(ids[i]), float(scores[i])) for i in order]


def _widen(block: sp.csc_array, width: int) -> sp.csc_array:
    """The same block with empty columns appended for terms first seen after it was built."""
    extra = width - block.shape[1]
    if extra <= 0:
        return block
    indptr = np.concatenate([block.indptr, np.full(extra, block.indptr[-1], block.indptr.dtype)])
    return sp.csc_array((block.data, block.indices, indptr), shape=(block.shape[0], width))


def _dot(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Matrix-vector product on one thread: multithreaded BLAS sgemv stalls for milliseconds
    when the other cores are busy (p95 12 ms instead of 0.2 ms for 5k rows, measured here)."""
    return np.einsum("ij,j->i", vectors, query)


_jit = numba.njit(nogil=True, cache=True)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _gather_dot(vectors: np.ndarray, positions: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Dot products of the query with the rows at `positions`, read in place: numpy's
    `vectors[positions]` first copies the scattered rows (a re-ranking of 100 rows took 0.056 ms
    p50 that way, 0.040 ms in place, measured here between Chroma queries)."""
    out = np.empty(len(positions), np.float32)
    for i in range(len(positions)):
        row = vectors[positions[i]]
        total = np.float32(0.0)
        for d in range(len(query)):
            total += row[d] * query[d]
        out[i] = total
    return out


@_jit
def _live_df(
    indptr: np.ndarray, indices: np.ndarray, start: int, terms: np.ndarray, state: np.ndarray, df: np.ndarray
) -> None:
    """Add to df[j] the live rows of one block holding terms[j] (columns past the block's width: none)."""
    width = len(indptr) - 1
    for j in range(len(terms)):
        if terms[j] < width:
            for p in range(indptr[terms[j]], indptr[terms[j] + 1]):
                if state[indices[p] + start] != DEAD:
                    df[j] += 1


@_jit
def _bm25_add(
    indptr: np.ndarray,
    indices: np.ndarray,
    counts: np.ndarray,
    lengths: np.ndarray,
    start: int,
    terms: np.ndarray,
    idf: np.ndarray,
    state: np.ndarray,
    kind: int,
    norm_a: np.float32,
    norm_b: np.float32,
    k1_plus_1: np.float32,
    scores: np.ndarray,
    touched: np.ndarray,
    n: int,
) -> int:
    """Add one block's BM25 weights of the query terms to `scores` (float32, block by block and
    term by term: a query has at most 32 terms, so the sum keeps FTS5's score to ~1e-6 while the
    scratch array is half the bytes of float64 ones, which the scattered adds pull through the
    cache), skipping dead rows and, with kind >= 0, rows of other kinds; each row first scored is
    appended to `touched`, whose new length is returned."""
    width = len(indptr) - 1
    for j in range(len(terms)):
        if terms[j] >= width:
            continue
        weight = idf[j]
        for p in range(indptr[terms[j]], indptr[terms[j] + 1]):
            row = indices[p] + start
            if state[row] == DEAD or (kind >= 0 and state[row] != kind):
                continue
            count = counts[p]
            if scores[row] == 0.0:
                touched[n] = row
                n += 1
            scores[row] += weight * count * k1_plus_1 / (count + (norm_a + norm_b * lengths[p]))
    return n


@_jit
def _best_touched(scores: np.ndarray, touched: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The touched rows scoring at least the k-th best (ties with it kept, so the caller's cut by
    id is exact) and their scores; every touched score is reset to 0. The k-th best comes from a
    min-heap of k, one pass instead of a partition of all touched rows."""
    heap = np.empty(min(k, n), scores.dtype)
    size = 0
    for i in range(n):
        value = scores[touched[i]]
        if size < len(heap):
            j = size
            size += 1
            while j > 0 and heap[(j - 1) // 2] > value:
                heap[j] = heap[(j - 1) // 2]
                j = (j - 1) // 2
            heap[j] = value
        elif value > heap[0]:
            j = 0
            while True:
                child = 2 * j + 1
                if child >= size:
                    break
                if child + 1 < size and heap[child + 1] < heap[child]:
                    child += 1
                if heap[child] >= value:
                    break
                heap[j] = heap[child]
                j = child
            heap[j] = value
    kth = heap[0] if size else 0.0
    rows = np.empty(n, np.int64)
    best = np.empty(n, scores.dtype)
    m = 0
    for i in range(n):
        row = touched[i]
        if scores[row] >= kth:
            rows[m] = row
            best[m] = scores[row]
            m += 1
        scores[row] = 0.0
    return rows[:m], best[:m]
