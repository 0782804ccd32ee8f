"""The memory store interface every avatar stage talks to, and `open_store` to pick a backend.

Isolation is the store's job, not the caller's: every method takes the avatar name and every
query filters by it, so no method can read or change another avatar's memories.

Memory is versioned and nothing is ever overwritten: a row, once written, keeps its text. An
update writes a new row and marks the old one superseded (`ended_at`, `superseded_by`); a delete
marks the row retracted (`ended_at` without a successor). A row is *current* while `ended_at` is
unset; reads see the current rows, or with `as_of=T` the rows believed at time T
(`created_at <= T < ended_at`). The versions of one memory share a `chain` (the id of the first),
so its history is one query. Only `delete_avatar` erases rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


Clock = Callable[[], float]
"""The store's notion of now (seconds since the epoch): time.time, or a scripted clock in studies."""
BEFORE_VERSIONS = "stored before versions were kept"
"""The rule recorded on rows that a store written by an earlier personalm already held."""


@dataclass
class NewMemory:
    """A memory to add. `key` (a content hash) makes adding a memory that is already current a
    no-op. `origin` says where it came from (an ingested file, a chat turn, the API), `rule` which
    rule decided to store it."""

    kind: str
    text: str
    key: str
    embedding: np.ndarray
    source: str = ""
    context: str = ""
    ts: float | None = None
    origin: str = ""
    rule: str = ""


@dataclass
class Memory:
    """One stored version of a memory. `context` is what others said just before (for utterances
    from chats); `created_at` is when it was learned, `ended_at` when it stopped being believed
    (superseded by `superseded_by`, or retracted when that is unset); `replaces` is the version it
    took over from; `end_origin` and `end_rule` say what ended it."""

    id: int
    kind: str
    text: str
    source: str = ""
    context: str = ""
    ts: float | None = None
    created_at: float = 0.0
    key: str = ""
    chain: int = 0
    replaces: int | None = None
    superseded_by: int | None = None
    ended_at: float | None = None
    origin: str = ""
    rule: str = ""
    end_origin: str = ""
    end_rule: str = ""

    @property
    def status(self) -> str:
        """current, superseded (a newer version replaced it) or retracted (it was taken back)."""
        if self.ended_at is None:
            return "current"
        return "superseded" if self.superseded_by is not None else "retracted"


COLUMNS = (
    "id, kind, text, source, context, ts, created_at, key, COALESCE(chain, id), replaces, superseded_by, ended_at,"
    " origin, rule, end_origin, end_rule"
)
"""The columns of `Memory`, in its order, in both stores (a first version's chain is its own id)."""


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
        (memories whose key is already current for this avatar are skipped)."""

    def has_source(self, avatar: str, key: str) -> bool: ...

    def sources(self, avatar: str) -> list[SourceRecord]:
        """The source files ingested for this avatar, oldest first."""

    def keyword_search(
        self, avatar: str, query: str, k: int, kinds: Sequence[str] = KINDS, as_of: float | None = None
    ) -> list[tuple[int, float]]:
        """(id, score) best first by full-text relevance (higher is better), among the current
        memories or those believed at `as_of`."""

    def vector_search(
        self, avatar: str, vector: np.ndarray, k: int, kinds: Sequence[str] = KINDS, as_of: float | None = None
    ) -> list[tuple[int, float]]:
        """(id, cosine similarity) best first; vectors are unit-norm."""

    def get(self, avatar: str, ids: Sequence[int]) -> list[Memory]:
        """Versions by id (current or not), in the order asked; ids of other avatars are not found."""

    def embeddings(self, avatar: str, ids: Sequence[int]) -> np.ndarray: ...

    def list(
        self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0, as_of: float | None = None
    ) -> list[Memory]:
        """Current memories (or those believed at `as_of`), oldest first."""

    def count(self, avatar: str, kind: str | None = None, as_of: float | None = None) -> int: ...

    def retracted(self, avatar: str, kind: str | None = None, as_of: float | None = None) -> list[Memory]:
        """Versions taken back (retracted, not superseded), by now or by `as_of`, oldest first."""

    def update(self, avatar: str, memory_id: int, memory: NewMemory) -> int | None:
        """Supersede current memory `memory_id` with a new version (same chain); returns the id now
        current for it (the new row, or the current row that already says the same), None when
        `memory_id` is not a current memory of this avatar."""

    def delete(self, avatar: str, ids: Sequence[int], origin: str = "", rule: str = "") -> int:
        """Retract current memories (kept, no longer believed); returns how many were retracted."""

    def restore(self, avatar: str, memory_id: int, origin: str = "", rule: str = "") -> int | None:
        """Believe an ended version again: a new current copy in its chain; returns the id now
        current for it, None when `memory_id` is not an ended version of this avatar."""

    def history(self, avatar: str, memory_id: int) -> list[Memory]:
        """Every version of the memory `memory_id` belongs to (and any current row it was merged
        into), oldest first; [] when the avatar has no such memory."""

    def head(self, avatar: str, memory_id: int | None = None) -> Memory | None:
        """The version changed last, in `memory_id`'s chain or (None) in the whole avatar; on a
        tie the current one (an update ends the old row and starts the new in one change)."""

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


def merged_into(versions: Sequence[Memory]) -> list[int]:
    """Successors outside a chain: versions superseded by a row that already said the same."""
    inside = {v.id for v in versions}
    return [v.superseded_by for v in versions if v.superseded_by is not None and v.superseded_by not in inside]


def in_order(versions: Sequence[Memory]) -> list[Memory]:
    """Versions oldest first (by when they were learned, then id)."""
    return sorted(versions, key=lambda m: (m.created_at, m.id))


def check_int64(what: str, values: Sequence[int]) -> None:
    """Refuse integers the database cannot hold (it would raise an overflow, not a usable error)."""
    for value in values:
        if not -MAX_INT64 - 1 <= value <= MAX_INT64:
            raise PersonalmError(f"{what} {value}: out of range (a 64-bit integer, at most {MAX_INT64})")


def check_time(what: str, value: float | None) -> float | None:
    """A finite time in seconds since the epoch (or None)."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        raise PersonalmError(f"{what} {value!r}: expected seconds since the epoch")
    return None if value is None else float(value)


def parse_time(text: str) -> float:
    """A moment given by a person: seconds since the epoch, or an ISO 8601 date or date-time (UTC
    unless it names a zone), e.g. 2024-03-01 or 2024-03-01T12:00:00+02:00."""
    text = text.strip()
    try:
        return check_time("time", float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PersonalmError(f"time {text!r}: give seconds since the epoch or an ISO date like 2024-03-01") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


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
