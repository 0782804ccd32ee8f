"""The embedded memory store: one SQLite file in WAL mode, the source of truth, searched through
an in-memory index per avatar (`memory_index.MemoryIndex`: BM25 postings and dense vectors, exact
below 10k rows and faiss IVF above).

The index only ever holds committed rows. Every change takes the next number of a store-wide
sequence: changed rows carry it (`seq`), and the avatar records it as its `version` (and as
`deletes` when rows went away). Before a search the index compares versions: appends and updates
are read incrementally (`seq` greater than the index's version), deletions by comparing ids, and
an index with too many dead positions is rebuilt. The sequence never restarts, so an avatar that
was deleted and created again can never look unchanged to another process's index.

SQLite FTS5 was the keyword index first; at 100k memories its bm25 ranking of an OR-query costs
25-60 ms, while BM25 over in-memory postings costs well under a millisecond
(`personalm bench retrieval`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from personalm.avatars.memory_index import MemoryIndex, Tokenizer
from personalm.avatars.store import (
    KINDS,
    Memory,
    NewMemory,
    Profile,
    SourceRecord,
    as_vector,
    check_avatar,
    check_int64,
    check_kinds,
)
from personalm.errors import PersonalmError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS avatars (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0,
    deletes INTEGER NOT NULL DEFAULT 0,
    profile TEXT,
    profile_count INTEGER,
    profile_at REAL,
    profile_extra TEXT,
    settings TEXT
);
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY,
    avatar TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    context TEXT NOT NULL DEFAULT '',
    ts REAL,
    created_at REAL NOT NULL,
    key TEXT NOT NULL,
    embedding BLOB NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (avatar, key)
);
CREATE INDEX IF NOT EXISTS memories_avatar_kind ON memories (avatar, kind);
CREATE TABLE IF NOT EXISTS sources (
    avatar TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    memories INTEGER NOT NULL,
    ingested_at REAL NOT NULL,
    PRIMARY KEY (avatar, key)
);
DROP TRIGGER IF EXISTS memories_ai;
DROP TRIGGER IF EXISTS memories_ad;
DROP TRIGGER IF EXISTS memories_au;
DROP TABLE IF EXISTS memories_fts;
INSERT OR IGNORE INTO meta VALUES ('seq', (SELECT COALESCE(MAX(MAX(version, deletes)), 0) FROM avatars));
"""

REBUILD_DEAD_FRACTION = 0.25
COLUMNS = "id, kind, text, source, context, ts, created_at, key"


class SQLiteStore:
    """MemoryStore on one SQLite file; safe to share between threads and between processes."""

    def __init__(self, path: str | Path, dimension: int = 384):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise PersonalmError(f"not a usable memory store ({err})", source=str(self.path)) from None
        self._lock = threading.RLock()
        self._indexes: dict[str, MemoryIndex] = {}
        self._tokenizer = Tokenizer()
        self.dimension = self._check_dimension(dimension)

    def _migrate(self) -> None:
        """Stores written before the change sequence existed get its column (their rows: seq 0), and
        stores from before avatar settings their column."""
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(memories)")]
        if "seq" not in columns:
            self._db.execute("ALTER TABLE memories ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
        if "settings" not in [r[1] for r in self._db.execute("PRAGMA table_info(avatars)")]:
            self._db.execute("ALTER TABLE avatars ADD COLUMN settings TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS memories_avatar_seq ON memories (avatar, seq)")

    def _check_dimension(self, dimension: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', ?)", (str(dimension),))
            return dimension
        if int(row[0]) != dimension:
            raise PersonalmError(f"this store holds {row[0]}-d embeddings, not {dimension}-d", source=str(self.path))
        return dimension

    @contextmanager
    def _write(self, avatar: str) -> Iterator[int]:
        """One write transaction (BEGIN IMMEDIATE, so concurrent writers queue instead of failing);
        yields the change's sequence number. A new avatar starts as if everything before it was
        deleted, so no index of an earlier avatar of the same name survives."""
        check_avatar(avatar)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(
                    self._db.execute(
                        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq' RETURNING value"
                    ).fetchone()[0]
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO avatars (name, version, deletes) VALUES (?, ?, ?)", (avatar, seq, seq)
                )
                yield seq
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add(self, avatar: str, memories: Sequence[NewMemory], source: SourceRecord | None = None) -> list[int]:
        now = time.time()
        ids = []
        with self._write(avatar) as seq:
            db = self._db
            for memory in memories:
                check_kinds([memory.kind])
                vector = as_vector(memory.embedding, self.dimension)
                cursor = db.execute(
                    "INSERT OR IGNORE INTO memories (avatar, kind, text, source, context, ts, created_at, key, embedding, seq)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (avatar, memory.kind, memory.text, memory.source, memory.context, memory.ts, now, memory.key,
                     vector.tobytes(), seq),
                )  # fmt: skip
                if cursor.rowcount:
                    ids.append(int(cursor.lastrowid))
            if source is not None:
                db.execute(
                    "INSERT OR IGNORE INTO sources VALUES (?, ?, ?, ?, ?)",
                    (avatar, source.key, source.path, source.memories, now),
                )
            if ids:
                db.execute("UPDATE avatars SET version = ? WHERE name = ?", (seq, avatar))
        return ids

    def has_source(self, avatar: str, key: str) -> bool:
        row = self._read("SELECT 1 FROM sources WHERE avatar = ? AND key = ?", (check_avatar(avatar), key))
        return bool(row)

    def sources(self, avatar: str) -> list[SourceRecord]:
        rows = self._read(
            "SELECT key, path, memories, ingested_at FROM sources WHERE avatar = ? ORDER BY ingested_at",
            (check_avatar(avatar),),
        )
        return [SourceRecord(*row) for row in rows]

    def _read(self, sql: str, params: Sequence) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def keyword_search(self, avatar: str, query: str, k: int, kinds: Sequence[str] = KINDS) -> list[tuple[int, float]]:
        codes = [KINDS.index(kind) for kind in check_kinds(kinds)]
        check_int64("k", [k])
        with self._lock:
            return self._index(check_avatar(avatar)).keyword_search(query, k, codes)

    def vector_search(
        self, avatar: str, vector: np.ndarray, k: int, kinds: Sequence[str] = KINDS
    ) -> list[tuple[int, float]]:
        codes = [KINDS.index(kind) for kind in check_kinds(kinds)]
        check_int64("k", [k])
        query = as_vector(vector, self.dimension)
        with self._lock:
            return self._index(check_avatar(avatar)).vector_search(query, k, codes)

    def _index(self, avatar: str) -> MemoryIndex:
        """The avatar's index brought up to the last committed change (the caller holds the lock)."""
        index = self._indexes.get(avatar)
        row = self._db.execute("SELECT version FROM avatars WHERE name = ?", (avatar,)).fetchone()
        if index is not None and row is not None and index.version == row[0]:
            return index
        self._db.execute("BEGIN")  # one snapshot for the version and the rows
        try:
            row = self._db.execute("SELECT version, deletes FROM avatars WHERE name = ?", (avatar,)).fetchone()
            if row is None:
                self._indexes.pop(avatar, None)
                return MemoryIndex(self.dimension, self._tokenizer)
            version, deletes = row
            if index is None or index.dead_fraction > REBUILD_DEAD_FRACTION:
                index = MemoryIndex(self.dimension, self._tokenizer)
                rows = self._db.execute(
                    "SELECT id, kind, text, embedding FROM memories WHERE avatar = ? ORDER BY id", (avatar,)
                ).fetchall()
            else:
                if deletes > index.version:
                    present = self._db.execute("SELECT id FROM memories WHERE avatar = ?", (avatar,)).fetchall()
                    index.remove_missing({r[0] for r in present})
                rows = self._db.execute(
                    "SELECT id, kind, text, embedding FROM memories WHERE avatar = ? AND seq > ? ORDER BY seq, id",
                    (avatar, index.version),
                ).fetchall()
            index.add(
                [r[0] for r in rows],
                [KINDS.index(r[1]) for r in rows],
                [r[2] for r in rows],
                np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32).reshape(len(rows), self.dimension),
            )
            index.version = version
            self._indexes[avatar] = index
            return index
        finally:
            self._db.execute("COMMIT")

    def get(self, avatar: str, ids: Sequence[int]) -> list[Memory]:
        check_int64("memory id", ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._read(
            f"SELECT {COLUMNS} FROM memories WHERE +avatar = ? AND id IN ({marks})", (check_avatar(avatar), *ids)
        )
        found = {row[0]: Memory(*row) for row in rows}
        return [found[i] for i in ids if i in found]

    def embeddings(self, avatar: str, ids: Sequence[int]) -> np.ndarray:
        check_int64("memory id", ids)
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        marks = ",".join("?" * len(ids))
        rows = dict(
            self._read(
                f"SELECT id, embedding FROM memories WHERE +avatar = ? AND id IN ({marks})",
                (check_avatar(avatar), *ids),
            )
        )
        return (
            np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in ids if i in rows])
            if rows
            else (np.zeros((0, self.dimension), dtype=np.float32))
        )

    def list(self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0) -> list[Memory]:
        kinds = check_kinds([kind] if kind else KINDS)
        check_int64("limit", [limit])
        check_int64("offset", [offset])
        marks = ",".join("?" * len(kinds))
        rows = self._read(
            f"SELECT {COLUMNS} FROM memories WHERE avatar = ? AND kind IN ({marks}) ORDER BY id LIMIT ? OFFSET ?",
            (check_avatar(avatar), *kinds, limit, offset),
        )
        return [Memory(*row) for row in rows]

    def count(self, avatar: str, kind: str | None = None) -> int:
        kinds = check_kinds([kind] if kind else KINDS)
        marks = ",".join("?" * len(kinds))
        rows = self._read(
            f"SELECT COUNT(*) FROM memories WHERE avatar = ? AND kind IN ({marks})", (check_avatar(avatar), *kinds)
        )
        return int(rows[0][0])

    def update(self, avatar: str, memory_id: int, text: str, key: str, embedding: np.ndarray) -> bool:
        vector = as_vector(embedding, self.dimension)
        check_int64("memory id", [memory_id])
        with self._write(avatar) as seq:
            try:
                cursor = self._db.execute(
                    "UPDATE memories SET text = ?, key = ?, embedding = ?, created_at = ?, seq = ? WHERE avatar = ? AND id = ?",
                    (text, key, vector.tobytes(), time.time(), seq, avatar, memory_id),
                )
                changed = "version = ?"
            except sqlite3.IntegrityError:  # the new text is already stored: the old row goes
                cursor = self._db.execute("DELETE FROM memories WHERE avatar = ? AND id = ?", (avatar, memory_id))
                changed = "version = ?, deletes = ?"
            if cursor.rowcount:
                self._db.execute(
                    f"UPDATE avatars SET {changed} WHERE name = ?", (seq,) * changed.count("?") + (avatar,)
                )
            return bool(cursor.rowcount)

    def delete(self, avatar: str, ids: Sequence[int]) -> int:
        check_int64("memory id", ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write(avatar) as seq:
            removed = self._db.execute(
                f"DELETE FROM memories WHERE avatar = ? AND id IN ({marks})", (avatar, *ids)
            ).rowcount
            if removed:
                self._db.execute("UPDATE avatars SET version = ?, deletes = ? WHERE name = ?", (seq, seq, avatar))
        return removed

    def delete_avatar(self, avatar: str) -> int:
        with self._write(avatar):
            removed = self._db.execute("DELETE FROM memories WHERE avatar = ?", (avatar,)).rowcount
            self._db.execute("DELETE FROM sources WHERE avatar = ?", (avatar,))
            self._db.execute("DELETE FROM avatars WHERE name = ?", (avatar,))
            self._indexes.pop(avatar, None)
        return removed

    def get_profile(self, avatar: str) -> Profile | None:
        rows = self._read(
            "SELECT profile, profile_count, profile_at, profile_extra FROM avatars WHERE name = ? AND profile IS NOT NULL",
            (check_avatar(avatar),),
        )
        if not rows:
            return None
        text, count, at, extra = rows[0]
        return Profile(text, int(count or 0), float(at or 0), json.loads(extra or "{}"))

    def set_profile(self, avatar: str, profile: Profile) -> None:
        with self._write(avatar):
            self._db.execute(
                "UPDATE avatars SET profile = ?, profile_count = ?, profile_at = ?, profile_extra = ? WHERE name = ?",
                (profile.text, profile.memory_count, time.time(), json.dumps(profile.extra), avatar),
            )

    def get_settings(self, avatar: str) -> dict:
        rows = self._read("SELECT settings FROM avatars WHERE name = ?", (check_avatar(avatar),))
        return json.loads(rows[0][0]) if rows and rows[0][0] else {}

    def set_settings(self, avatar: str, settings: dict) -> None:
        with self._write(avatar):
            self._db.execute("UPDATE avatars SET settings = ? WHERE name = ?", (json.dumps(settings), avatar))

    def avatar_names(self) -> list[str]:
        return [r[0] for r in self._read("SELECT name FROM avatars ORDER BY name", ())]

    def integrity(self) -> list[str]:
        """Problems found by SQLite's own check plus ours (empty: consistent)."""
        problems = [r[0] for r in self._read("PRAGMA integrity_check", ()) if r[0] != "ok"]
        orphans = self._read(
            "SELECT COUNT(*) FROM memories m WHERE m.source != '' AND NOT EXISTS "
            "(SELECT 1 FROM sources s WHERE s.avatar = m.avatar AND s.key = m.source)",
            (),
        )[0][0]
        if orphans:
            problems.append(f"{orphans} memories name a source that is not recorded")
        return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()
