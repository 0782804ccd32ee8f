"""Deterministic inputs of `personalm bench retrieval`: memories and queries from real text.

Texts: every sentence (12-300 characters) and every default ingestion chunk of the speeches,
plus the Persona Hub personas (stored as facts), de-duplicated and shuffled with the seed; the
first `memories` (at most DISTINCT_TEXTS) are stored, queries are sentences from the rest. Embedding 100k texts with
MiniLM takes about half an hour on two busy cores, so by default only the first `embedded`
memories (and every query) are embedded for real, once, and cached under PERSONALM_HOME; the
other memories get the vector of a real one plus seeded Gaussian noise, renormalized (the
results record how many were embedded and the noise scale). `--embedded` equal to `--memories`
embeds everything.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalm.avatars.chunking import chunk_text, sentences
from personalm.errors import PersonalmError
from personalm.paths import home

SPEECHES = Path("speeches")
PERSONAS = Path("personahub") / "tool_personas.jsonl"
DISTINCT_TEXTS = 100_000
"""Distinct texts stored at most (the data has ~117k; the rest are where queries come from)."""
NOISE_SIGMA = 0.03
"""Per-dimension noise of a tiled vector: ~0.6 of a unit vector's norm in 384-d, so a tile sits
at cosine ~0.85 from its real source, as near as a paraphrase and no nearer."""


@dataclass
class Corpus:
    texts: list[str]
    kinds: list[str]
    vectors: np.ndarray
    queries: list[str]
    query_vectors: np.ndarray
    embedded: int


def real_texts(data_dir: Path, seed: int) -> tuple[list[str], list[str]]:
    """(texts, kinds) of every distinct sentence, chunk and persona, shuffled with the seed."""
    files = sorted((data_dir / SPEECHES).glob("*/*.txt"))
    personas_path = data_dir / PERSONAS
    if not files or not personas_path.is_file():
        raise PersonalmError(
            "the retrieval benchmark needs speeches/ and personahub/ (set PERSONALM_DATA or --data)",
            source=str(data_dir),
        )
    pool: dict[str, str] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for piece in [s for s in sentences(text) if 12 <= len(s) <= 300] + chunk_text(text):
            pool.setdefault(piece, "utterance")
    for line in personas_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            pool.setdefault(" ".join(json.loads(line)["persona"].split()), "fact")
    texts = list(pool)
    random.Random(seed).shuffle(texts)
    return texts, [pool[t] for t in texts]


def build(
    data_dir: Path,
    memories: int,
    queries: int,
    embedded: int,
    embed: Callable[[list[str]], np.ndarray],
    seed: int = 0,
) -> Corpus:
    """The stored memories and the queries, with their (cached) embeddings. Past DISTINCT_TEXTS
    memories the texts are tiled too: tile t of a text is the text with " (t)" appended, so a
    large store holds near-copies of the same words, as a long history of paraphrases would,
    and the queries still come from the texts after the first DISTINCT_TEXTS."""
    texts, kinds = real_texts(data_dir, seed)
    distinct = min(memories, DISTINCT_TEXTS)
    query_pool = [
        t for t, k in zip(texts[distinct:], kinds[distinct:], strict=True) if k == "utterance" and len(t) < 200
    ]
    if len(texts) < distinct or len(query_pool) < queries:
        raise PersonalmError(
            f"the data has {len(texts)} distinct texts: not enough for {distinct} memories and {queries} queries",
            source=str(data_dir),
        )
    embedded = min(embedded, memories)
    query_texts = query_pool[:queries]
    real = _cached_embeddings(texts[:embedded] + query_texts, embed)
    rng = np.random.default_rng(seed)
    vectors = np.empty((memories, real.shape[1]), dtype=np.float32)
    vectors[:embedded] = real[:embedded]
    for start in range(embedded, memories, embedded):
        stop = min(start + embedded, memories)
        tile = real[: stop - start] + rng.normal(0.0, NOISE_SIGMA, (stop - start, real.shape[1])).astype(np.float32)
        vectors[start:stop] = tile / np.linalg.norm(tile, axis=1, keepdims=True)
    stored = texts[:distinct] + [f"{texts[i % distinct]} ({i // distinct})" for i in range(distinct, memories)]
    stored_kinds = kinds[:distinct] + [kinds[i % distinct] for i in range(distinct, memories)]
    return Corpus(stored, stored_kinds, vectors, query_texts, real[embedded:], embedded)


def _cached_embeddings(texts: list[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Embeddings of exactly these texts, computed once and kept under PERSONALM_HOME."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    path = home() / "bench" / "retrieval" / f"embeddings-{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = np.asarray(embed(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(path)
    return vectors
