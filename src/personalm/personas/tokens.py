"""Word 1-gram sets of persona texts, as content hashes (so any batch or worker agrees on them).

Persona descriptions are short: the word set, not 5-word shingles, is what MinHash sees, so a
three-word persona still has three features. A token is a lowercased whitespace-separated word
with its leading and trailing punctuation trimmed ("Nurse," -> "nurse", "e-commerce" stays one
word); words that are only punctuation vanish. ASCII rows are read by a compiled pass over the
Arrow byte buffer (personas.kernels), the others by Arrow's Unicode kernels; whitespace is what
Unicode calls whitespace in both, and both hash a word the same way.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from personalm.personas import kernels

PUNCTUATION = "".join(sorted(set(string.punctuation) | set("“”‘’«»„‚‹›–—―…·•¡¿、。，！？：；（）【】「」『』")))


@dataclass
class TokenSets:
    """Per-row word sets in CSR form: row i owns ids[offsets[i]:offsets[i+1]], indices into
    `vocab`, the sorted distinct 64-bit token hashes (content hashes: batches agree on them)."""

    ids: np.ndarray  # int32 into vocab, distinct within each row
    offsets: np.ndarray  # int64, len n + 1
    vocab: np.ndarray  # uint64, sorted, distinct

    @property
    def hashes(self) -> np.ndarray:
        return self.vocab[self.ids]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def from_hashes(hashes: np.ndarray, offsets: np.ndarray) -> TokenSets:
        vocab = sorted_unique(hashes)
        return TokenSets(np.searchsorted(vocab, hashes).astype(np.int32), offsets, vocab)

    @staticmethod
    def concat(parts: Sequence[TokenSets]) -> TokenSets:
        """One TokenSets over all rows: the vocabularies merge and each part's ids are remapped."""
        if not parts:
            return TokenSets(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.uint64))
        if len(parts) == 1:
            return parts[0]
        vocab = sorted_unique(np.concatenate([p.vocab for p in parts]))
        ids = np.concatenate([np.searchsorted(vocab, p.vocab).astype(np.int32)[p.ids] for p in parts])
        sizes = np.concatenate([p.sizes for p in parts])
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return TokenSets(ids, offsets, vocab)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique is ~100x slower than a sort on this numpy build)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def words(text: str) -> list[str]:
    """The word 1-grams of one text, in order (for display and tests; batches use token_sets)."""
    return [w for w in _words(pa.array([text], type=pa.large_string()))[1].to_pylist() if w]


def _words(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(row of each word, trimmed lowercase words) through Arrow's Unicode kernels;
    punctuation-only words come out empty."""
    lists = pc.utf8_split_whitespace(pc.utf8_lower(array))
    flat = pc.utf8_trim(pc.list_flatten(lists), characters=PUNCTUATION)
    return pc.list_parent_indices(lists).to_numpy().astype(np.int64), flat


def token_sets(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> TokenSets:
    """Word sets of a batch. ASCII rows are tokenized and hashed in one compiled pass over the
    Arrow byte buffer; the others go through Arrow's Unicode kernels and the same hash."""
    array = _large_strings(texts)
    n = len(array)
    data, offsets = _buffers(array)
    is_ascii = pc.string_is_ascii(array).to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    ascii_rows = np.flatnonzero(is_ascii)
    hashes, counts = kernels.ascii_words(
        data, offsets, ascii_rows, kernels.ASCII_SPACE, kernels.ASCII_PUNCT, kernels.ASCII_LOWER
    )
    if len(ascii_rows) < n:
        other = np.flatnonzero(~is_ascii)
        row_of, flat = _words(array.take(pa.array(other)))
        flat_data, flat_offsets = _buffers(flat)
        real = flat_offsets[1:] > flat_offsets[:-1]  # punctuation-only words trim to "": not a token
        other_hashes, row_of = kernels.hash_strings(flat_data, flat_offsets)[real], row_of[real]
        sizes = np.zeros(n, np.int64)
        sizes[ascii_rows] = counts
        sizes[other] = np.bincount(row_of, minlength=len(other))
        row_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(sizes, out=row_offsets[1:])
        merged = np.empty(row_offsets[-1], np.uint64)
        for rows, values, per_row in ((ascii_rows, hashes, counts), (other, other_hashes, sizes[other])):
            first = np.repeat(row_offsets[rows] - (np.cumsum(per_row) - per_row), per_row)
            merged[first + np.arange(len(values))] = values
        hashes, counts = merged, sizes
    row_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=row_offsets[1:])
    ids, row_offsets, vocab = kernels.encode(hashes, row_offsets)
    return TokenSets(ids, row_offsets, vocab)


def _large_strings(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    array = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, type=pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    return pc.fill_null(array, "") if array.null_count else array


def _buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets into them) of a large_string array, without a copy."""
    _, offsets, data = array.buffers()
    start = array.offset
    return (
        np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8),
        np.frombuffer(offsets, np.int64)[start : start + len(array) + 1]
        if offsets is not None
        else np.zeros(1, np.int64),
    )
