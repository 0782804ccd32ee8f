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
    """Per-row word sets in CSR form: row i owns ids[offsets[i]:offsets[i+1]], indices into
    `vocab`, the sorted distinct 64-bit token hashes (content hashes: batches agree on them)."""

    ids: np.ndarray  # int64 into vocab, unique within each row
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
        return TokenSets(np.searchsorted(vocab, hashes), offsets, vocab)

    @staticmethod
    def concat(parts: Sequence[TokenSets]) -> TokenSets:
        """One TokenSets over all rows: the vocabularies merge and each part's ids are remapped."""
        if not parts:
            return TokenSets(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint64))
        vocab = sorted_unique(np.concatenate([p.vocab for p in parts]))
        ids = np.concatenate([np.searchsorted(vocab, p.vocab)[p.ids] for p in parts])
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
    """(row of each word, trimmed lowercase words); punctuation-only words come out empty.

    ASCII rows go through Arrow's ASCII splitter (several times faster); the others, which may
    hold Unicode spaces, through the Unicode one."""
    lower = pc.utf8_lower(array)
    is_ascii = pc.string_is_ascii(lower).to_numpy(zero_copy_only=False)
    parts = []
    for rows, split in ((is_ascii, pc.ascii_split_whitespace), (~is_ascii, pc.utf8_split_whitespace)):
        if rows.all():
            parts.append((None, split(lower)))
        elif rows.any():
            index = np.flatnonzero(rows)
            parts.append((index, split(lower.take(pa.array(index)))))
    row_of = [
        pc.list_parent_indices(lists).to_numpy() if index is None else index[pc.list_parent_indices(lists).to_numpy()]
        for index, lists in parts
    ]
    flat = (
        pa.concat_arrays([pc.list_flatten(lists) for _, lists in parts]) if parts else pa.array([], pa.large_string())
    )
    return np.concatenate(row_of) if row_of else np.zeros(0, np.int64), pc.utf8_trim(flat, characters=PUNCTUATION)


def token_sets(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> TokenSets:
    """Tokenize a batch in Arrow's C++ kernels, hash each distinct token once, dedupe per row."""
    array = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, type=pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n = len(array)
    row_of, flat = _words(array)
    encoded = pc.dictionary_encode(flat)
    words = encoded.dictionary.to_pylist()
    vocab_size = max(len(words), 1)
    indices = encoded.indices.to_numpy().astype(np.int64)
    keys = sorted_unique(row_of.astype(np.int64) * vocab_size + indices)
    rows, index = np.divmod(keys, vocab_size)
    if "" in words:  # punctuation-only words trim to "": not a token
        real = index != words.index("")
        rows, index = rows[real], index[real]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    hashes = token_hash(words)
    vocab = sorted_unique(hashes)
    return TokenSets(np.searchsorted(vocab, hashes)[index], offsets, vocab)
