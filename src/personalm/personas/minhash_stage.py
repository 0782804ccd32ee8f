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

from personalm.personas import kernels
from personalm.personas.greedy import Decision, greedy_from_edges
from personalm.personas.tokens import TokenSets, token_sets

NUM_PERM = 128
SEED = 1
MIN_BAND_RECALL = 0.999


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
    when given, so parallel batches fill one array without a copy). Each distinct word is hashed
    by the permutations once (a vocabulary x num_perm table); each row takes the minimum over its
    words' table rows."""
    tokens = token_sets(texts)
    n = len(tokens)
    a, b = permutations(num_perm, seed)
    signatures = np.empty((n, num_perm), dtype=np.uint32) if out is None else out
    sizes = tokens.sizes
    signatures[sizes == 0] = np.iinfo(np.uint32).max
    vocab = tokens.vocab
    with np.errstate(over="ignore"):
        table = ((vocab[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
    set_keys = kernels.signatures(table, tokens.ids, tokens.offsets, vocab, signatures)
    if (sizes == 0).any():
        column = texts.to_pylist() if isinstance(texts, pa.Array | pa.ChunkedArray) else texts
        for i in np.flatnonzero(sizes == 0).tolist():
            digest = hashlib.blake2b((column[i] or "").strip().encode(), digest_size=8).digest()
            set_keys[i] = np.uint64(int.from_bytes(digest, "little") | 1)
    return Features(signatures, tokens, set_keys)


def band_shape(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band whose candidate probability at the
    threshold, 1 - (1 - t^r)^b, stays >= MIN_BAND_RECALL (fewer false candidates to verify)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_BAND_RECALL:
            best = (bands, rows)
    return best


def candidate_pairs(
    signatures: np.ndarray, bands: int, rows: int, subset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of rows (positions within `subset` when given) that share at least one
    band, each once. Every band reports only the pairs no earlier band shares, so the bands run
    on a thread per core (the kernels release the GIL) and need no merge."""
    subset = np.arange(len(signatures)) if subset is None else subset
    keys = kernels.band_keys(signatures, subset, bands, rows)
    columns = np.ascontiguousarray(keys.T)
    with ThreadPoolExecutor(min(bands, os.cpu_count() or 1)) as pool:
        found = list(pool.map(lambda band: kernels.band_pairs(keys, columns[band], band), range(bands)))
    return (
        np.concatenate([left for left, _ in found]) if found else np.zeros(0, np.int64),
        np.concatenate([right for _, right in found]) if found else np.zeros(0, np.int64),
    )


def jaccard(tokens: TokenSets, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the word sets of each (left, right) pair."""
    return kernels.jaccard(
        tokens.ids, tokens.offsets, len(tokens.vocab), np.asarray(left, np.int64), np.asarray(right, np.int64)
    )


def dedup(feats: Features, threshold: float = 0.9) -> Decision:
    """Stage 1 decision over rows in input order (see personas.greedy for which row is kept)."""
    representative = first_of_identical(feats.set_keys)
    reps = np.flatnonzero((representative == np.arange(len(feats))) & (feats.tokens.sizes > 0))
    bands, rows = band_shape(threshold, feats.signatures.shape[1])
    local_i, local_j = candidate_pairs(feats.signatures, bands, rows, reps)
    left, right = reps[local_i], reps[local_j]
    return decide(representative, left, right, jaccard(feats.tokens, left, right), threshold)


def first_of_identical(set_keys: np.ndarray) -> np.ndarray:
    """Each row's representative: the first row (in input order) with the same set key."""
    n = len(set_keys)
    order = np.argsort(set_keys, kind="stable")
    sorted_keys = set_keys[order]
    starts = np.ones(n, bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first_of_group = order[starts][np.cumsum(starts) - 1] if n else order
    representative = np.empty(n, np.int64)
    representative[order] = first_of_group
    return representative


def decide(
    representative: np.ndarray, left: np.ndarray, right: np.ndarray, sim: np.ndarray, threshold: float
) -> Decision:
    """The decision from each row's representative and the candidate pairs among representatives
    (each pair once, with its exact Jaccard): the greedy over the pairs at or above the threshold,
    and every copy of an identical set follows its representative. Whoever found the pairs (this
    process, or Ray workers) gets the same rows kept and dropped."""
    similar = sim >= threshold
    decision = greedy_from_edges(len(representative), left[similar], right[similar], sim[similar])
    copies = np.flatnonzero(representative != np.arange(len(representative)))
    rep = representative[copies]
    rep_kept = decision.keep[rep]
    decision.keep[copies] = False
    decision.duplicate_of[copies] = np.where(rep_kept, rep, decision.duplicate_of[rep])
    decision.similarity[copies] = np.where(rep_kept, 1.0, decision.similarity[rep])
    return decision
