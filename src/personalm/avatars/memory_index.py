"""One avatar's search index held in memory: BM25 postings and dense vectors, fed from the
store's committed rows and updated incrementally (appends, updates and deletes by position).

Why in memory: at 100k memories SQLite FTS5 spends 25-60 ms per OR-query computing bm25 for every
matching row, and a numpy matrix-vector product over all vectors takes ~12 ms. Here BM25 is
scored over the query terms' postings with numpy (exactly, k1 = 1.2, b = 0.75, FTS5's idf), and
dense search is exact below `ANN_MIN_ROWS` rows and an inverted-file index (faiss IVF-Flat, ~2√n
lists, `ANN_PROBES` of them scanned) above it. IVF rather than HNSW because it trains and fills
in a few seconds at 100k rows where faiss's HNSW graph (M 32) took five minutes on the two busy
cores here, deletes in place, and at these sizes answers in about a millisecond too.

Rows are addressed by position; an updated row gets a new position and its old one is marked
dead (and removed from the IVF lists), so nothing is rewritten in place. Dead positions are
masked in every search; when they pass a quarter of all positions the owner rebuilds the index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain

import numpy as np
import scipy.sparse as sp

from personalm.eval.text import STOPWORDS

ANN_MIN_ROWS = 10_000
"""Below this many searchable rows exact search (~0.5 ms) is used instead of IVF."""
ANN_PROBES = 40
"""Lists scanned per query (of 512 at 100k rows; measured there: 32 of 256 lists recall@10 0.93 in
1.0 ms, 32 of 512 0.91 in 0.6 ms, 48 of 512 0.95 in 0.9 ms)."""
ANN_RETRAIN_GROWTH = 4
"""The IVF lists are retrained (the index rebuilt) once the avatar has grown this many times."""
BM25_K1, BM25_B = 1.2, 0.75
MAX_BLOCKS = 8
TOKEN = re.compile(r"\w+", re.UNICODE)


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
        self._kinds = np.zeros(0, np.int8)
        self._alive = np.zeros(0, bool)
        self._lengths = np.zeros(0, np.float64)
        self._vectors = np.zeros((0, dimension), np.float32)
        self._position: dict[int, int] = {}
        self._terms: dict[str, int] = {}
        self._word_terms: dict[str, int] = {}
        self._blocks: list[tuple[int, sp.csc_array]] = []
        self._total_length = 0.0
        self._ann = None
        self._ann_trained_on = 0

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
        self._kinds[start:stop] = kinds
        self._vectors[start:stop] = vectors
        self._alive[start:stop] = True
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
        self._alive[positions] = False
        self._total_length -= float(self._lengths[positions].sum())
        if self._ann is not None:
            import faiss

            self._ann.remove_ids(faiss.IDSelectorBatch(positions))

    def _grow(self, needed: int) -> None:
        capacity = len(self._ids)
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, 256)
        for name in ("_ids", "_kinds", "_alive", "_lengths"):
            old = getattr(self, name)
            new = np.zeros(capacity, old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)
        vectors = np.zeros((capacity, self.dimension), np.float32)
        vectors[: self.size] = self._vectors[: self.size]
        self._vectors = vectors

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
        self._blocks.append((start, block))
        if len(self._blocks) > MAX_BLOCKS:
            self._merge_blocks()

    def _merge_blocks(self) -> None:
        width = len(self._terms)
        parts = [_widen(block, width) for _, block in self._blocks]
        self._blocks = [(self._blocks[0][0], sp.vstack(parts, format="csc"))]

    def _build_ann(self) -> None:
        """Train ~2√n IVF lists on the live vectors (faiss's seeded k-means) and file them."""
        import faiss

        live = np.flatnonzero(self._alive[: self.size])
        lists = 2 << int(np.log2(np.sqrt(len(live))))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dimension), self.dimension, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 64
        ivf.train(self._vectors[live])
        ivf.add_with_ids(self._vectors[live], live.astype(np.int64))
        self._ann, self._ann_trained_on = ivf, len(live)

    def _allowed(self, kinds: Sequence[int]) -> np.ndarray:
        alive = self._alive[: self.size]
        if len(kinds) == 1:
            return alive & (self._kinds[: self.size] == kinds[0])
        return alive

    def keyword_search(self, query: str, k: int, kinds: Sequence[int]) -> list[tuple[int, float]]:
        """Top k by BM25 over the allowed rows; only rows containing a query term are returned."""
        wanted = [self._terms[t] for t in self.tokenizer.query(query) if t in self._terms]
        if not wanted or k <= 0 or not self.live:
            return []
        positions, counts, which = [], [], []
        for start, block in self._blocks:
            indptr, indices, data = block.indptr, block.indices, block.data
            for slot, term in enumerate(wanted):
                if term < block.shape[1] and indptr[term + 1] > indptr[term]:
                    span = slice(indptr[term], indptr[term + 1])
                    positions.append(indices[span] + start)
                    counts.append(data[span])
                    which.append(np.full(span.stop - span.start, slot, np.int32))
        if not positions:
            return []
        position, count, slot = np.concatenate(positions), np.concatenate(counts), np.concatenate(which)
        if self.live < self.size:
            keep = self._alive[position]
            position, count, slot = position[keep], count[keep], slot[keep]
        count = count.astype(np.float64)
        live = self.live
        df = np.bincount(slot, minlength=len(wanted))
        idf = np.maximum(np.log((live - df + 0.5) / (df + 0.5)), 1e-6)
        avgdl = max(self._total_length / live, 1.0)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * self._lengths[position] / avgdl)
        weight = idf[slot] * count * (BM25_K1 + 1) / (count + norm)
        scores = np.bincount(position, weights=weight)
        candidates = np.flatnonzero(scores > 0)  # on a bool mask: 8x faster than on the floats
        if len(kinds) == 1:
            candidates = candidates[self._kinds[candidates] == kinds[0]]
        return self._top(candidates, scores[candidates], k)

    def vector_search(self, query: np.ndarray, k: int, kinds: Sequence[int]) -> list[tuple[int, float]]:
        """Top k by cosine over the allowed rows: exact, or IVF when enough rows are allowed."""
        if k <= 0 or not self.live:
            return []
        if self._ann is not None and len(kinds) > 1 and self.live >= ANN_MIN_ROWS:
            return self._ann_search(query, k, None)
        allowed = self._allowed(kinds)
        if self._ann is not None and np.count_nonzero(allowed) >= ANN_MIN_ROWS:
            return self._ann_search(query, k, allowed)
        if self.size <= ANN_MIN_ROWS:
            scores = _dot(self._vectors[: self.size], query)
            candidates = np.flatnonzero(allowed)
            return self._top(candidates, scores[candidates], k)
        candidates = np.flatnonzero(allowed)
        return self._top(candidates, _dot(self._vectors[candidates], query), k)

    def _ann_search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """IVF search; dead rows are out of the lists already, a kind filter is a bitmap selector."""
        import faiss

        params = faiss.SearchParametersIVF(nprobe=ANN_PROBES)
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(bitmap)
        scores, positions = self._ann.search(query.reshape(1, -1), k, params=params)
        found = positions[0] >= 0
        return [(int(self._ids[p]), float(s)) for p, s in zip(positions[0][found], scores[0][found], strict=True)]

    def _top(self, positions: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Best k by score, ties by id (deterministic)."""
        if len(scores) > k:
            cut = np.argpartition(-scores, k - 1)[:k]
            positions, scores = positions[cut], scores[cut]
        ids = self._ids[positions]
        order = np.lexsort((ids, -scores))
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
