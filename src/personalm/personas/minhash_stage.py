"""Stage 1: MinHash over word 1-gram sets, LSH banding, then the true Jaccard of every candidate.

The banding is tuned for recall (a pair at the threshold becomes a candidate with probability
>= 0.999), and every candidate is verified against its exact Jaccard, so precision is exact and
short texts ("a nurse" vs "a nurse who") are judged on their real overlap. Rows with identical
word sets are grouped first, so thousands of copies never turn into a quadratic candidate list.
Rows without any word are compared by their exact stripped text.

`features()` works on any batch independently (content hashes, no shared vocabulary), so the
local path and Ray workers compute the very same signatures.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy import sparse

from personalm.personas.greedy import Decision, greedy_from_edges
from personalm.personas.tokens import TokenSets, sorted_unique, token_sets

NUM_PERM = 128
SEED = 1
ROWS_PER_CHUNK = 1024
MIN_BAND_RECALL = 0.999
BUCKET_BITS = 20
_MIX = np.uint64(0x9E3779B97F4A7C15)


def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Multiply-shift hash family: perm_k(h) = (a_k * h + b_k mod 2^64) >> 32, a_k odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    return a, b


@dataclass
class Features:
    """What stage 1 needs per row: the MinHash signature, the word set, and a set fingerprint."""

    signatures: np.ndarray  # uint32 [n, num_perm]
    tokens: TokenSets
    set_keys: np.ndarray  # uint64 [n]; equal keys = identical word sets (or identical wordless texts)

    def __len__(self) -> int:
        return len(self.set_keys)

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        return Features(
            np.concatenate([p.signatures for p in parts]),
            TokenSets.concat([p.tokens for p in parts]),
            np.concatenate([p.set_keys for p in parts]),
        )


def features(
    texts: Sequence[str] | pa.Array, num_perm: int = NUM_PERM, seed: int = SEED, out: np.ndarray | None = None
) -> Features:
    """Signatures, word sets and set keys of one batch of texts (signatures written into `out`
    when given, so parallel batches fill one array without a copy)."""
    tokens = token_sets(texts)
    n = len(tokens)
    a, b = permutations(num_perm, seed)
    signatures = np.empty((n, num_perm), dtype=np.uint32) if out is None else out
    signatures[tokens.sizes == 0] = np.iinfo(np.uint32).max
    vocab, ids = tokens.vocab, tokens.ids
    with np.errstate(over="ignore"):
        table = ((vocab[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
        mixed = ((vocab ^ (vocab >> np.uint64(31))) * _MIX)[ids]
    sizes = tokens.sizes
    set_keys = np.zeros(n, np.uint64)
    nonempty = np.flatnonzero(sizes > 0)
    if len(nonempty):
        set_keys[nonempty] = np.add.reduceat(mixed, tokens.offsets[nonempty])
    _signatures(table, ids, tokens.offsets, signatures)
    if (sizes == 0).any():
        column = texts.to_pylist() if isinstance(texts, pa.Array | pa.ChunkedArray) else texts
        for i in np.flatnonzero(sizes == 0).tolist():
            digest = hashlib.blake2b((column[i] or "").strip().encode(), digest_size=8).digest()
            set_keys[i] = np.uint64(int.from_bytes(digest, "little") | 1)
    return Features(signatures, tokens, set_keys)


def _signatures(table: np.ndarray, ids: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """out[row] = min over the row's tokens of table[token]. Rows are walked in size order in
    small cache-sized blocks, one token position at a time (a min over a padded gather)."""
    sizes = np.diff(offsets)
    order = np.argsort(sizes, kind="stable")
    order = order[sizes[order] > 0]
    for start in range(0, len(order), ROWS_PER_CHUNK):
        rows = order[start : start + ROWS_PER_CHUNK]
        row_sizes, row_offsets = sizes[rows], offsets[rows]
        acc = table[ids[row_offsets]]
        for position in range(1, int(row_sizes[-1])):
            live = row_sizes > position
            index = np.where(live, row_offsets + position, row_offsets)
            np.minimum(acc, table[ids[index]], out=acc)
        out[rows] = acc


def band_shape(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band whose candidate probability at the
    threshold, 1 - (1 - t^r)^b, stays >= MIN_BAND_RECALL (fewer false candidates to verify)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_BAND_RECALL:
            best = (bands, rows)
    return best


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) that share at least one band, without duplicates (bands run on a thread
    per core: numpy releases the GIL)."""
    n = len(signatures)
    # Read each band as 64-bit words when it spans whole words (half the passes), else as 32-bit.
    words = signatures.view(np.uint64) if rows % 2 == 0 else signatures
    per_band = rows // 2 if rows % 2 == 0 else rows
    columns = np.ascontiguousarray(words.T)  # one contiguous row per word
    rng = np.random.default_rng(SEED + 1)
    multipliers = rng.integers(1, 2**63, per_band, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        found = [
            p
            for p in pool.map(
                lambda band: _band_pairs(columns[band * per_band : (band + 1) * per_band], multipliers), range(bands)
            )
            if len(p)
        ]
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty
    pairs = sorted_unique(np.concatenate(found))
    return pairs // n, pairs % n


def _band_pairs(band: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """Pairs sharing one band (its words as rows of `band`), encoded i * n + j. A 64-bit key per
    row, then a counting pass over 2^BUCKET_BITS buckets keeps only rows whose bucket is shared
    (few), and only those are sorted to find the truly equal keys."""
    n = band.shape[1]
    keys = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for word, multiplier in zip(band, multipliers, strict=True):
            keys += word * multiplier if word.dtype == np.uint64 else word.astype(np.uint64) * multiplier
            keys ^= keys >> np.uint64(29)
    buckets = (keys >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)
    shared = np.flatnonzero(np.bincount(buckets, minlength=1 << BUCKET_BITS)[buckets] > 1)
    order = shared[np.argsort(keys[shared], kind="stable")]
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    in_group = np.zeros(len(order), bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    members, member_keys = order[in_group], sorted_keys[in_group]
    found = []
    for gap in range(1, len(members)):
        match = member_keys[gap:] == member_keys[:-gap]
        if not match.any():
            break
        i, j = members[:-gap][match], members[gap:][match]
        found.append(np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j))
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def jaccard(tokens: TokenSets, left: np.ndarray, right: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Exact Jaccard similarity of the word sets of each (left, right) pair."""
    if len(left) == 0:
        return np.zeros(0, np.float32)
    matrix = sparse.csr_matrix(
        (np.ones(len(tokens.ids), np.int32), tokens.ids, tokens.offsets), shape=(len(tokens), len(tokens.vocab))
    )
    sizes = tokens.sizes
    out = np.empty(len(left), np.float32)
    for start in range(0, len(left), chunk):
        i, j = left[start : start + chunk], right[start : start + chunk]
        inter = np.asarray(matrix[i].multiply(matrix[j]).sum(axis=1)).ravel()
        union = sizes[i] + sizes[j] - inter
        out[start : start + chunk] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def dedup(feats: Features, threshold: float = 0.9) -> Decision:
    """Stage 1 decision over rows in input order (see personas.greedy for which row is kept)."""
    n = len(feats)
    order = np.argsort(feats.set_keys, kind="stable")
    sorted_keys = feats.set_keys[order]
    starts = np.ones(n, bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first_of_group = order[starts][np.cumsum(starts) - 1] if n else order
    representative = np.empty(n, np.int64)
    representative[order] = first_of_group
    reps = np.flatnonzero((representative == np.arange(n)) & (feats.tokens.sizes > 0))

    bands, rows = band_shape(threshold, feats.signatures.shape[1])
    local_i, local_j = candidate_pairs(feats.signatures[reps], bands, rows)
    left, right = reps[local_i], reps[local_j]
    sim = jaccard(feats.tokens, left, right)
    similar = sim >= threshold
    decision = greedy_from_edges(n, left[similar], right[similar], sim[similar])

    copies = np.flatnonzero(representative != np.arange(n))
    rep = representative[copies]
    rep_kept = decision.keep[rep]
    decision.keep[copies] = False
    decision.duplicate_of[copies] = np.where(rep_kept, rep, decision.duplicate_of[rep])
    decision.similarity[copies] = np.where(rep_kept, 1.0, decision.similarity[rep])
    return decision
