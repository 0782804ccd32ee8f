"""The embedded memory store: one SQLite file in WAL mode, FTS5 for keyword search, and exact
dense search with numpy over float32 blobs kept as an in-memory matrix per avatar.

sqlite-vec would need `enable_load_extension`, which this Python's sqlite3 module is built
without, so dense search is a matrix-vector product over the avatar's rows (measured by
`personalm bench retrieval`). The matrix is refreshed from the file when another writer changed
the avatar: appends are read incrementally, deletions and updates trigger a reload.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalm.avatars.stopwords import STOPWORDS
from personalm.avatars.store import (
    KINDS,
    Memory,
    NewMemory,
    Profile,
    SourceRecord,
    as_vector,
    check_avatar,
    check_kinds,
    query_terms,
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
    profile_extra TEXT
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
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
    text, content='memories', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER IF NOT EXISTS memories_au AFTER UPDATE OF text ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text);
END;
"""

COLUMNS = "id, kind, text, source, context, ts, created_at, key"


@dataclass
class _Matrix:
    """One avatar's vectors as of (version, deletes); max_id lets appends load incrementally."""

    version: int
    deletes: int
    max_id: int
    ids: np.ndarray
    kinds: np.ndarray
    vectors: np.ndarray


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
        except sqlite3.DatabaseError as err:
            raise PersonalmError(f"not a usable memory store ({err})", source=str(self.path)) from None
        self._lock = threading.RLock()
        self._matrices: dict[str, _Matrix] = {}
        self.dimension = self._check_dimension(dimension)

    def _check_dimension(self, dimension: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dimension'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', ?)", (str(dimension),))
            return dimension
        if int(row[0]) != dimension:
            raise PersonalmError(f"this store holds {row[0]}-d embeddings, not {dimension}-d", source=str(self.path))
        return dimension

    @contextmanager
    def _write(self, avatar: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE so concurrent writers queue instead of failing."""
        check_avatar(avatar)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR IGNORE INTO avatars (name) VALUES (?)", (avatar,))
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add(self, avatar: str, memories: Sequence[NewMemory], source: SourceRecord | None = None) -> list[int]:
        now = time.time()
        ids = []
        with self._write(avatar) as db:
            for memory in memories:
                check_kinds([memory.kind])
                vector = as_vector(memory.embedding, self.dimension)
                cursor = db.execute(
                    "INSERT OR IGNORE INTO memories (avatar, kind, text, source, context, ts, created_at, key, embedding)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (avatar, memory.kind, memory.text, memory.source, memory.context, memory.ts, now, memory.key,
                     vector.tobytes()),
                )  # fmt: skip
                if cursor.rowcount:
                    ids.append(int(cursor.lastrowid))
            if source is not None:
                db.execute(
                    "INSERT OR IGNORE INTO sources VALUES (?, ?, ?, ?, ?)",
                    (avatar, source.key, source.path, source.memories, now),
                )
            if ids:
                db.execute("UPDATE avatars SET version = version + 1 WHERE name = ?", (avatar,))
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
        kinds = check_kinds(kinds)
        terms = [t for t in query_terms(query) if t not in STOPWORDS] or query_terms(query)
        if not terms or k <= 0:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        marks = ",".join("?" * len(kinds))
        rows = self._read(
            "SELECT m.id, -bm25(memories_fts) FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid"
            f" WHERE memories_fts MATCH ? AND m.avatar = ? AND m.kind IN ({marks})"
            " ORDER BY bm25(memories_fts) LIMIT ?",
            (match, check_avatar(avatar), *kinds, k),
        )
        return [(int(i), float(s)) for i, s in rows]

    def vector_search(
        self, avatar: str, vector: np.ndarray, k: int, kinds: Sequence[str] = KINDS
    ) -> list[tuple[int, float]]:
        kinds = check_kinds(kinds)
        query = as_vector(vector, self.dimension)
        matrix = self._matrix(check_avatar(avatar))
        if k <= 0 or not len(matrix.ids):
            return []
        scores = matrix.vectors @ query
        if len(kinds) < len(KINDS):
            allowed = np.isin(matrix.kinds, [KINDS.index(kind) for kind in kinds])
            scores = np.where(allowed, scores, -np.inf)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(matrix.ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]

    def _matrix(self, avatar: str) -> _Matrix:
        with self._lock:
            row = self._db.execute("SELECT version, deletes FROM avatars WHERE name = ?", (avatar,)).fetchone()
            version, deletes = row if row else (0, 0)
            cached = self._matrices.get(avatar)
            if cached and cached.version == version:
                return cached
            if cached and cached.deletes == deletes:
                fresh = self._load(avatar, cached.max_id)
                cached = _Matrix(
                    version, deletes, max(cached.max_id, fresh.max_id),
                    np.concatenate([cached.ids, fresh.ids]), np.concatenate([cached.kinds, fresh.kinds]),
                    np.concatenate([cached.vectors, fresh.vectors]),
                )  # fmt: skip
            else:
                cached = self._load(avatar, 0)
                cached.version, cached.deletes = version, deletes
            self._matrices[avatar] = cached
            return cached

    def _load(self, avatar: str, after_id: int) -> _Matrix:
        rows = self._db.execute(
            "SELECT id, kind, embedding FROM memories WHERE avatar = ? AND id > ? ORDER BY id", (avatar, after_id)
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        kinds = np.fromiter((KINDS.index(r[1]) for r in rows), dtype=np.int8, count=len(rows))
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), self.dimension)
        return _Matrix(0, 0, int(ids[-1]) if len(ids) else after_id, ids, kinds, vectors)

    def get(self, avatar: str, ids: Sequence[int]) -> list[Memory]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._read(
            f"SELECT {COLUMNS} FROM memories WHERE avatar = ? AND id IN ({marks})", (check_avatar(avatar), *ids)
        )
        found = {row[0]: Memory(*row) for row in rows}
        return [found[i] for i in ids if i in found]

    def embeddings(self, avatar: str, ids: Sequence[int]) -> np.ndarray:
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        marks = ",".join("?" * len(ids))
        rows = dict(
            self._read(
                f"SELECT id, embedding FROM memories WHERE avatar = ? AND id IN ({marks})",
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
        with self._write(avatar) as db:
            try:
                cursor = db.execute(
                    "UPDATE memories SET text = ?, key = ?, embedding = ?, created_at = ? WHERE avatar = ? AND id = ?",
                    (text, key, vector.tobytes(), time.time(), avatar, memory_id),
                )
            except sqlite3.IntegrityError:  # the new text is already stored: the old row goes
                cursor = db.execute("DELETE FROM memories WHERE avatar = ? AND id = ?", (avatar, memory_id))
            if cursor.rowcount:
                db.execute("UPDATE avatars SET version = version + 1, deletes = deletes + 1 WHERE name = ?", (avatar,))
            return bool(cursor.rowcount)

    def delete(self, avatar: str, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write(avatar) as db:
            removed = db.execute(f"DELETE FROM memories WHERE avatar = ? AND id IN ({marks})", (avatar, *ids)).rowcount
            if removed:
                db.execute("UPDATE avatars SET version = version + 1, deletes = deletes + 1 WHERE name = ?", (avatar,))
        return removed

    def delete_avatar(self, avatar: str) -> int:
        with self._write(avatar) as db:
            removed = db.execute("DELETE FROM memories WHERE avatar = ?", (avatar,)).rowcount
            db.execute("DELETE FROM sources WHERE avatar = ?", (avatar,))
            db.execute("DELETE FROM avatars WHERE name = ?", (avatar,))
        self._matrices.pop(avatar, None)
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
        with self._write(avatar) as db:
            db.execute(
                "UPDATE avatars SET profile = ?, profile_count = ?, profile_at = ?, profile_extra = ? WHERE name = ?",
                (profile.text, profile.memory_count, time.time(), json.dumps(profile.extra), avatar),
            )

    def avatar_names(self) -> list[str]:
        return [r[0] for r in self._read("SELECT name FROM avatars ORDER BY name", ())]

    def integrity(self) -> list[str]:
        """Problems found by SQLite's and FTS5's own checks plus ours (empty: consistent)."""
        problems = [r[0] for r in self._read("PRAGMA integrity_check", ()) if r[0] != "ok"]
        try:
            self._read("INSERT INTO memories_fts (memories_fts, rank) VALUES ('integrity-check', 1)", ())
        except sqlite3.DatabaseError as err:
            problems.append(f"fts: {err}")
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
