"""The memory store interface every avatar stage talks to, and `open_store` to pick a backend.

Isolation is the store's job, not the caller's: every method takes the avatar name and every
query filters by it, so no method can read or change another avatar's memories.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from personalm.errors import PersonalmError

Kind = Literal["utterance", "fact"]
KINDS: tuple[Kind, ...] = get_args(Kind)
"""utterance: the person's own words, verbatim (style exemplars and knowledge);
fact: a statement about the person (preference, event, trait), extracted or told."""

AVATAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_INT64 = 2**63 - 1
"""The largest integer SQLite and PostgreSQL (bigint) store: ids, limits and offsets stay within it."""


def check_avatar(name: str) -> str:
    """Avatar names are short identifiers: they end up in keys, paths and URL scopes."""
    if not isinstance(name, str) or not AVATAR_NAME.fullmatch(name):
        raise PersonalmError(
            f"avatar name {name!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return name


@dataclass
class NewMemory:
    """A memory to add. `key` (a content hash) makes adding the same memory twice a no-op."""

    kind: str
    text: str
    key: str
    embedding: np.ndarray
    source: str = ""
    context: str = ""
    ts: float | None = None


@dataclass
class Memory:
    """A stored memory. `context` is what others said just before (for utterances from chats)."""

    id: int
    kind: str
    text: str
    source: str = ""
    context: str = ""
    ts: float | None = None
    created_at: float = 0.0
    key: str = ""


@dataclass
class SourceRecord:
    """One ingested source file: its content hash makes re-ingesting it a no-op."""

    key: str
    path: str
    memories: int
    ingested_at: float = 0.0


@dataclass
class Profile:
    """The persona description of an avatar and how many memories it was written from."""

    text: str
    memory_count: int
    updated_at: float = 0.0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class MemoryStore(Protocol):
    """One avatar-scoped memory store; SQLite (embedded) and PostgreSQL + pgvector implement it."""

    dimension: int

    def add(self, avatar: str, memories: Sequence[NewMemory], source: SourceRecord | None = None) -> list[int]:
        """Add memories (and mark `source` ingested) in one transaction; returns ids of new rows
        (memories whose key is already stored for this avatar are skipped)."""

    def has_source(self, avatar: str, key: str) -> bool: ...

    def sources(self, avatar: str) -> list[SourceRecord]:
        """The source files ingested for this avatar, oldest first."""

    def keyword_search(self, avatar: str, query: str, k: int, kinds: Sequence[str] = KINDS) -> list[tuple[int, float]]:
        """(id, score) best first by full-text relevance (higher is better)."""

    def vector_search(
        self, avatar: str, vector: np.ndarray, k: int, kinds: Sequence[str] = KINDS
    ) -> list[tuple[int, float]]:
        """(id, cosine similarity) best first; vectors are unit-norm."""

    def get(self, avatar: str, ids: Sequence[int]) -> list[Memory]:
        """Memories by id, in the order asked; ids of other avatars are simply not found."""

    def embeddings(self, avatar: str, ids: Sequence[int]) -> np.ndarray: ...

    def list(self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0) -> list[Memory]: ...

    def count(self, avatar: str, kind: str | None = None) -> int: ...

    def update(self, avatar: str, memory_id: int, text: str, key: str, embedding: np.ndarray) -> bool: ...

    def delete(self, avatar: str, ids: Sequence[int]) -> int: ...

    def delete_avatar(self, avatar: str) -> int: ...

    def get_profile(self, avatar: str) -> Profile | None: ...

    def set_profile(self, avatar: str, profile: Profile) -> None: ...

    def get_settings(self, avatar: str) -> dict:
        """The avatar's stored settings (its answering defaults); {} when none were set."""

    def set_settings(self, avatar: str, settings: dict) -> None: ...

    def avatar_names(self) -> list[str]:
        """Names only (for `avatar list` and admin views); never memories."""

    def close(self) -> None: ...


def open_store(url: str | Path | None = None, dimension: int = 384, must_exist: bool = False) -> MemoryStore:
    """A store by URL: `postgresql://...` for PostgreSQL + pgvector, else a SQLite file path
    (default PERSONALM_HOME/avatars/memory.db). `must_exist`: a missing SQLite file is an error
    (commands that only read memory must not leave an empty store behind)."""
    from personalm.paths import home

    url = str(url) if url else str(home() / "avatars" / "memory.db")
    if url.startswith(("postgresql://", "postgres://")):
        from personalm.avatars.pg_store import PostgresStore

        return PostgresStore(url, dimension=dimension)
    from personalm.avatars.sqlite_store import SQLiteStore

    if must_exist and (not Path(url).exists() or Path(url).is_file() and Path(url).stat().st_size == 0):
        raise PersonalmError(
            "no such memory store (add memories with `personalm avatar ingest NAME FILES`)", source=url
        )
    try:
        return SQLiteStore(url, dimension=dimension)
    except OSError as err:
        raise PersonalmError(f"cannot open the memory store ({err.strerror or err})", source=url) from None


def check_int64(what: str, values: Sequence[int]) -> None:
    """Refuse integers the database cannot hold (it would raise an overflow, not a usable error)."""
    for value in values:
        if not -MAX_INT64 - 1 <= value <= MAX_INT64:
            raise PersonalmError(f"{what} {value}: out of range (a 64-bit integer, at most {MAX_INT64})")


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise PersonalmError(f"unknown memory kind {bad[0]!r}; expected one of {', '.join(KINDS)}")
    return tuple(kinds)


def as_vector(vector: np.ndarray, dimension: int) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != dimension:
        raise PersonalmError(f"embedding has {vector.shape[0]} dimensions; this store holds {dimension}")
    return vector


FTS_TOKEN = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str, limit: int = 32) -> list[str]:
    """Words of a free-text query (lower-cased, de-duplicated), safe to quote in any FTS syntax."""
    seen: dict[str, None] = {}
    for word in FTS_TOKEN.findall(query.lower()):
        if len(seen) >= limit:
            break
        seen.setdefault(word, None)
    return list(seen)
