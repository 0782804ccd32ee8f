"""Helpers shared by the avatar tests: stores on both backends and a deterministic embedder."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from personalm.avatars.store import MemoryStore

DIM = 64


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


class WordHashEmbedder:
    """Bag of hashed words, L2-normalized: texts sharing words are close. Deterministic and
    instant, for tests of the logic around embeddings (the real MiniLM is tested elsewhere)."""

    name = "word-hash-512"
    dimension = 512

    def embed(self, texts: Sequence[str], progress=None) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if progress:
            progress(len(texts))
        return out / np.where(norms == 0, 1, norms)


def postgres_dsn() -> str:
    """PERSONALM_PG_DSN of a reachable server (scripts/start-postgres.sh prints one), else skip."""
    dsn = os.environ.get("PERSONALM_PG_DSN")
    if not dsn:
        pytest.skip("PostgreSQL backend: set PERSONALM_PG_DSN (scripts/start-postgres.sh starts one and prints it)")
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL backend: no server reachable at PERSONALM_PG_DSN ({str(err).strip()[:120]})")
    return dsn


def make_store(backend: str, tmp_path, dimension: int = DIM) -> Iterator[MemoryStore]:
    if backend == "sqlite":
        from personalm.avatars.sqlite_store import SQLiteStore

        store = SQLiteStore(tmp_path / "memory.db", dimension=dimension)
        yield store
        store.close()
        return
    from personalm.avatars.pg_store import PostgresStore

    store = PostgresStore(postgres_dsn(), dimension=dimension, schema=f"t_{uuid.uuid4().hex[:12]}")
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


BACKENDS = ["sqlite", "postgres"]
