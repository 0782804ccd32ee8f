"""Compiled (numba) inner loops of the MinHash stage: one pass over the text bytes per job.

Each kernel replaces a chain of numpy/Arrow passes that each walked the whole corpus again:
tokenizing ASCII rows straight from the Arrow byte buffer, per-row word sets, the vocabulary,
the signature minimum, the LSH band keys, the band collisions and the exact Jaccard of the
candidates. All of them release the GIL (`nogil`), so the local executor's threads run them in
parallel, and they are compiled once and cached on disk (`cache=True`).
"""

from __future__ import annotations

import string

import numba
import numpy as np

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_EMPTY = np.uint64(0)
_NONE = np.int64(-1)
PARTITION_ROWS = 2048

# Whitespace as Unicode (and str.split) sees it within ASCII; 28-31 are the information separators.
ASCII_SPACE = np.zeros(256, np.bool_)
ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
ASCII_PUNCT = np.zeros(256, np.bool_)
ASCII_PUNCT[[ord(c) for c in string.punctuation]] = True
ASCII_LOWER = np.arange(256, dtype=np.uint8)
ASCII_LOWER[ord("A") : ord("Z") + 1] += 32

_jit = numba.njit(nogil=True, cache=True)


@_jit
def mix(h: np.uint64) -> np.uint64:
    """splitmix64's finalizer: every input bit reaches every output bit."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


@_jit
def _hash_bytes(data: np.ndarray, start: int, stop: int) -> np.uint64:
    h = _FNV_OFFSET
    for k in range(start, stop):
        h = (h ^ np.uint64(data[k])) * _FNV_PRIME
    h = mix(h)
    return h if h != _EMPTY else np.uint64(1)  # 0 marks an empty slot in encode's table


@_jit
def hash_strings(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """64-bit content hash (FNV-1a, then mixed) of each string data[offsets[i]:offsets[i+1]]."""
    n = len(offsets) - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        out[i] = _hash_bytes(data, offsets[i], offsets[i + 1])
    return out


@_jit
def ascii_words(
    data: np.ndarray, offsets: np.ndarray, rows: np.ndarray, space: np.ndarray, punct: np.ndarray, lower: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, words per row) of the lowercased, punctuation-trimmed words of the given rows,
    read straight from an Arrow string buffer. The same hash as `hash_strings` over the words."""
    counts = np.zeros(len(rows), np.int64)
    out = np.empty(1024, np.uint64)
    w = 0
    for r in range(len(rows)):
        k, stop = offsets[rows[r]], offsets[rows[r] + 1]
        if w + (stop - k) // 2 + 1 > len(out):
            out = np.concatenate((out[:w], np.empty(max(len(out), (stop - k) // 2 + 1), np.uint64)))
        before = w
        while k < stop:
            while k < stop and space[data[k]]:
                k += 1
            start = k
            while k < stop and not space[data[k]]:
                k += 1
            end = k
            while start < end and punct[data[start]]:
                start += 1
            while end > start and punct[data[end - 1]]:
                end -= 1
            if end == start:
                continue
            h = _FNV_OFFSET
            for j in range(start, end):
                h = (h ^ np.uint64(lower[data[j]])) * _FNV_PRIME
            h = mix(h)
            out[w] = h if h != _EMPTY else np.uint64(1)
            w += 1
        counts[r] = w - before
    return out[:w], counts


@_jit
def encode(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Word sets from per-row word hashes: (ids, new offsets, vocab) with vocab the sorted distinct
    hashes and ids[new_offsets[i]:new_offsets[i+1]] the distinct indices into it of row i's words.
    One pass through an open-addressing table (the hashes are nonzero and already mixed), rows
    made distinct by remembering the last row that used each word; no sort of the occurrences."""
    size = 1 << 12
    keys = np.zeros(size, np.uint64)
    slot_id = np.empty(size, np.int32)
    distinct = np.empty(1 << 11, np.uint64)
    last_row = np.empty(1 << 11, np.int64)
    ids = np.empty(len(hashes), np.int32)
    n = len(offsets) - 1
    new_offsets = np.zeros(n + 1, np.int64)
    used = 0
    w = 0
    for row in range(n):
        for k in range(offsets[row], offsets[row + 1]):
            h = hashes[k]
            t = np.int64(h & np.uint64(size - 1))
            while keys[t] != _EMPTY and keys[t] != h:
                t = (t + 1) & (size - 1)
            if keys[t] == _EMPTY:
                if used == len(distinct):
                    distinct = np.concatenate((distinct, np.empty(used, np.uint64)))
                    last_row = np.concatenate((last_row, np.empty(used, np.int64)))
                keys[t] = h
                slot_id[t] = used
                distinct[used] = h
                last_row[used] = -1
                word = used
                used += 1
                if 2 * used > size:  # grow: keep the load under 1/2
                    keys, slot_id = _regrow(keys, slot_id, 2 * size)
                    size *= 2
            else:
                word = slot_id[t]
            if last_row[word] != row:
                last_row[word] = row
                ids[w] = word
                w += 1
        new_offsets[row + 1] = w
    order = np.argsort(distinct[:used])
    rank = np.empty(used, np.int32)
    for r in range(used):
        rank[order[r]] = r
    for k in range(w):
        ids[k] = rank[ids[k]]
    return ids[:w], new_offsets, distinct[:used][order]


@_jit
def _regrow(keys: np.ndarray, slot_id: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    new_keys = np.zeros(size, np.uint64)
    new_ids = np.empty(size, np.int32)
    for s in range(len(keys)):
        if keys[s] != _EMPTY:
            t = np.int64(keys[s] & np.uint64(size - 1))
            while new_keys[t] != _EMPTY:
                t = (t + 1) & (size - 1)
            new_keys[t] = keys[s]
            new_ids[t] = slot_id[s]
    return new_keys, new_ids


@_jit
def signatures(
    table: np.ndarray, ids: np.ndarray, offsets: np.ndarray, vocab: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """out[row] = min over the row's words of table[word]; returns each row's set key (sum of its
    mixed word hashes: equal sets, equal keys). Rows without words are left untouched."""
    n, width = out.shape
    keys = np.zeros(n, np.uint64)
    acc = np.empty(width, np.uint32)
    for i in range(n):
        start, stop = offsets[i], offsets[i + 1]
        if stop == start:
            continue
        acc[:] = table[ids[start]]
        key = mix(vocab[ids[start]])
        for k in range(start + 1, stop):
            word = table[ids[k]]
            for p in range(width):
                acc[p] = min(acc[p], word[p])
            key += mix(vocab[ids[k]])
        out[i] = acc
        keys[i] = key
    return keys


@_jit
def band_keys(signatures: np.ndarray, rows: np.ndarray, bands: int, width: int) -> np.ndarray:
    """[len(rows), bands] 64-bit key of each band of the given rows' signatures (the band's
    `width` values hashed together: equal bands always get equal keys)."""
    keys = np.empty((len(rows), bands), np.uint64)
    for i in range(len(rows)):
        signature = signatures[rows[i]]
        for b in range(bands):
            h = np.uint64(b + 1)
            for p in range(b * width, (b + 1) * width):
                h = (h ^ np.uint64(signature[p])) * _M1
            keys[i, b] = mix(h)
    return keys


@_jit
def band_pairs(keys: np.ndarray, column: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) whose keys are equal in `band` (`column` = keys[:, band], contiguous) and in
    no earlier band, so each pair comes from exactly one band. The rows are first split by the top bits of their key into partitions of
    about PARTITION_ROWS (keeping their order), then each partition is grouped through a small
    hash table that stays in cache, with a chain of the earlier rows of each key."""
    n = len(column)
    bits = 0
    while (n >> bits) > PARTITION_ROWS:
        bits += 1
    starts = np.zeros((1 << bits) + 1, np.int64)
    for i in range(n):
        starts[(column[i] >> np.uint64(64 - bits) if bits else np.uint64(0)) + np.uint64(1)] += 1
    largest = 0
    for p in range(1 << bits):
        largest = max(largest, starts[p + 1])
        starts[p + 1] += starts[p]
    cursor = starts[:-1].copy()
    rows = np.empty(n, np.int64)
    hashes = np.empty(n, np.uint64)
    for i in range(n):
        p = np.int64(column[i] >> np.uint64(64 - bits)) if bits else 0
        rows[cursor[p]] = i
        hashes[cursor[p]] = column[i]
        cursor[p] += 1
    size = 16
    while size < 2 * largest:
        size <<= 1
    table_key = np.empty(size, np.uint64)
    table_head = np.empty(size, np.int64)
    table_part = np.full(size, _NONE, np.int64)
    chain = np.empty(n, np.int64)
    left = np.empty(1024, np.int64)
    right = np.empty(1024, np.int64)
    found = 0
    for p in range(1 << bits):
        for position in range(starts[p], starts[p + 1]):
            h = hashes[position]
            t = np.int64(h & np.uint64(size - 1))
            while table_part[t] == p and table_key[t] != h:
                t = (t + 1) & (size - 1)
            earlier_position = table_head[t] if table_part[t] == p else _NONE
            table_part[t] = p
            table_key[t] = h
            table_head[t] = position
            chain[position] = earlier_position
            j = rows[position]
            while earlier_position != _NONE:
                i = rows[earlier_position]
                shared_before = False
                for b in range(band):
                    if keys[i, b] == keys[j, b]:
                        shared_before = True
                        break
                if not shared_before:
                    if found == len(left):
                        left = np.concatenate((left, np.empty(found, np.int64)))
                        right = np.concatenate((right, np.empty(found, np.int64)))
                    left[found] = i
                    right[found] = j
                    found += 1
                earlier_position = chain[earlier_position]
    return left[:found], right[:found]


@_jit
def jaccard(ids: np.ndarray, offsets: np.ndarray, vocab_size: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Exact Jaccard of each pair's word sets (ids distinct within each row); 1.0 for two empty
    sets. The left row's words are marked in a vocabulary-sized array, the right row's counted."""
    out = np.empty(len(left), np.float32)
    mark = np.full(vocab_size, _NONE, np.int64)
    for k in range(len(left)):
        a, a_stop = offsets[left[k]], offsets[left[k] + 1]
        b, b_stop = offsets[right[k]], offsets[right[k] + 1]
        for p in range(a, a_stop):
            mark[ids[p]] = k
        common = 0
        for p in range(b, b_stop):
            if mark[ids[p]] == k:
                common += 1
        union = (a_stop - a) + (b_stop - b) - common
        out[k] = common / union if union > 0 else 1.0
    return out
