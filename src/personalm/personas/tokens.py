"""Word 1-gram sets of persona texts, as content hashes (so any batch or worker agrees on them).

Persona descriptions are short: the word set, not 5-word shingles, is what MinHash sees, so a
three-word persona still has three features. A token is a lowercased whitespace-separated word
with its leading and trailing punctuation trimmed ("Nurse," -> "nurse", "e-commerce" stays one
word); words that are only punctuation vanish. All of it runs in Arrow's C++ string kernels.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PUNCTUATION = "".join(sorted(set(string.punctuation) | set("“”‘’«»„‚‹›–—―…·•¡¿、。，！？：；（）【】「」『』")))


@dataclass
class TokenSets:
    """Per-row sets of 64-bit token hashes in CSR form: row i owns hashes[offsets[i]:offsets[i+1]]."""

    hashes: np.ndarray  # uint64, unique within each row
    offsets: np.ndarray  # int64, len n + 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]

    @staticmethod
    def concat(parts: Sequence[TokenSets]) -> TokenSets:
        if not parts:
            return TokenSets(np.zeros(0, np.uint64), np.zeros(1, np.int64))
        sizes = np.concatenate([p.sizes for p in parts])
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return TokenSets(np.concatenate([p.hashes for p in parts]), offsets)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique is ~100x slower than a sort on this numpy build)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def token_hash(tokens: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes of token strings (blake2b), the same on every machine and run."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in tokens),
        dtype=np.uint64,
        count=len(tokens),
    )


def words(text: str) -> list[str]:
    """The word 1-grams of one text, in order (for display and tests; batches use token_sets)."""
    return [w for w in _words(pa.array([text], type=pa.large_string()))[1].to_pylist() if w]


def _words(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(row of each word, trimmed lowercase words); punctuation-only words come out empty."""
    split = pc.utf8_split_whitespace(pc.utf8_lower(array))
    return pc.list_parent_indices(split).to_numpy(), pc.utf8_trim(pc.list_flatten(split), characters=PUNCTUATION)


def token_sets(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> TokenSets:
    """Tokenize a batch in Arrow's C++ kernels, hash each distinct token once, dedupe per row."""
    array = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, type=pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n = len(array)
    row_of, flat = _words(array)
    nonempty = pc.not_equal(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    encoded = pc.dictionary_encode(flat.filter(pa.array(nonempty)))
    vocab_size = max(len(encoded.dictionary), 1)
    keys = row_of[nonempty].astype(np.int64) * vocab_size + encoded.indices.to_numpy().astype(np.int64)
    keys = sorted_unique(keys)
    rows, index = np.divmod(keys, vocab_size)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return TokenSets(token_hash(encoded.dictionary.to_pylist())[index], offsets)
