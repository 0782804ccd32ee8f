"""Avatar fixtures: memory stores on both backends and deterministic unit vectors."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from personalm.avatars.store import Clock, MemoryStore


class UnitVectors:
    """Seeded random unit vectors: the same seed gives the same vector, different seeds near-orthogonal ones."""

    dim = 64

    def __call__(self, seed: int) -> np.ndarray:
        vector = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return vector / np.linalg.norm(vector)


@pytest.fixture
def unit() -> UnitVectors:
    return UnitVectors()


class TickingClock:
    """A clock that moves only when told to: as_of reads can name exact moments."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 60.0) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


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


@pytest.fixture
def pg_dsn() -> str:
    return postgres_dsn()


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request, tmp_path) -> Iterator[Callable[[int], MemoryStore]]:
    """Makes stores of a given dimension (and clock) on one backend (the test runs once per backend);
    closes them (and drops their PostgreSQL schemas) after the test."""
    made: list[MemoryStore] = []

    def make(dimension: int, clock: Clock = time.time) -> MemoryStore:
        if request.param == "sqlite":
            from personalm.avatars.sqlite_store import SQLiteStore

            store = SQLiteStore(tmp_path / f"memory{len(made) or ''}.db", dimension=dimension, clock=clock)
        else:
            from personalm.avatars.pg_store import PostgresStore

            schema = f"t_{uuid.uuid4().hex[:12]}"
            store = PostgresStore(postgres_dsn(), dimension=dimension, schema=schema, clock=clock)
        made.append(store)
        return store

    yield make
    for store in made:
        if request.param == "postgres":
            store.drop_schema()
        store.close()
