"""Deterministic inputs of `personalm bench dedup`, grown from the 5,000 real Persona Hub personas.

Rows: the real personas first, then new ones spliced from the head of one real persona and the
tail of another (real words, real lengths, mostly distinct), with near-duplicates planted among
them: a copy of an earlier row with one edit (case/punctuation, a swapped word pair, a dropped,
added or replaced word). Some edits stay at or above Jaccard 0.9 and some fall below it: the
truth is always the exact Jaccard, never the planting. Vectors for the embedding stage are
mixtures of the real personas' embeddings, with planted near-copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from personalm.errors import PersonalmError

PERSONAS_FILE = Path("personahub") / "tool_personas.jsonl"
EDITS = ("case_punct", "swap", "drop_word", "add_word", "replace_word")


def real_personas(data_dir: Path) -> list[str]:
    path = data_dir / PERSONAS_FILE
    if not path.is_file():
        raise PersonalmError(
            "the dedup benchmark needs the Persona Hub sample (set PERSONALM_DATA or --data)", source=str(path)
        )
    return [json.loads(line)["persona"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _edit(words: list[str], kind: str, vocab: list[str], rng: np.random.Generator) -> list[str]:
    words = list(words)
    k = int(rng.integers(len(words)))
    if kind == "case_punct":
        words = [w.upper() if rng.random() < 0.3 else w.lower() for w in words]
        words[-1] = words[-1].rstrip(".!,") + rng.choice([".", "!", ",", ""])
    elif kind == "swap" and len(words) > 1:
        k = min(k, len(words) - 2)
        words[k], words[k + 1] = words[k + 1], words[k]
    elif kind == "drop_word" and len(words) > 2:
        del words[k]
    elif kind == "add_word":
        words.insert(k, vocab[int(rng.integers(len(vocab)))])
    elif kind == "replace_word":
        words[k] = vocab[int(rng.integers(len(vocab)))]
    return words


def persona_rows(
    data_dir: Path, rows: int, duplicate_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, planted base row or -1 per row, planted edit index or -1 per row)."""
    base = real_personas(data_dir)
    split = [text.split() for text in base]
    vocab = sorted({w.strip(".,;:!?\"'()").lower() for words in split for w in words} - {""})
    rng = np.random.default_rng(seed)
    texts: list[str] = list(base[:rows])
    planted = np.full(rows, -1, np.int64)
    kinds = np.full(rows, -1, np.int64)
    words_of: list[list[str]] = [w for w in split[:rows]]
    for i in range(len(texts), rows):
        if rng.random() < duplicate_fraction:
            source = int(rng.integers(i))
            kind = int(rng.integers(len(EDITS)))
            words = _edit(words_of[source], EDITS[kind], vocab, rng)
            planted[i], kinds[i] = source, kind
        else:
            a, b = split[int(rng.integers(len(split)))], split[int(rng.integers(len(split)))]
            cut_a = int(rng.integers(2, max(3, len(a))))
            cut_b = int(rng.integers(0, max(1, len(b) - 1)))
            words = a[:cut_a] + b[cut_b:]
        words_of.append(words)
        texts.append(" ".join(words))
    return texts, planted, kinds


def mixture_vectors(
    anchors: np.ndarray, rows: int, duplicate_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, planted source row or -1): each a random mix of two real persona embeddings
    plus noise; a planted copy is an earlier row plus noise of norm 0.1-0.6 (cosine ~0.99 down to
    ~0.86, so some planted copies are not duplicates at 0.9)."""
    rng = np.random.default_rng(seed)
    n_anchor, dim = anchors.shape
    out = np.empty((rows, dim), np.float32)
    planted = np.full(rows, -1, np.int64)
    step = 65_536
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        m = stop - start
        weight = rng.uniform(0.2, 0.8, (m, 1)).astype(np.float32)
        mix = weight * anchors[rng.integers(n_anchor, size=m)] + (1 - weight) * anchors[rng.integers(n_anchor, size=m)]
        mix += rng.normal(0, 0.25 / np.sqrt(dim), (m, dim)).astype(np.float32)
        copies = np.flatnonzero(rng.random(m) < duplicate_fraction)
        copies = copies[start + copies > 0]
        sources = (rng.random(len(copies)) * (start + copies)).astype(np.int64)
        for local, source in zip(copies.tolist(), sources.tolist(), strict=True):
            origin = out[source] if source < start else mix[source - start] / np.linalg.norm(mix[source - start])
            scale = rng.uniform(0.1, 0.6) / np.sqrt(dim)
            mix[local] = origin + rng.normal(0, scale, dim).astype(np.float32)
            planted[start + local] = source
        out[start:stop] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
    return out, planted
