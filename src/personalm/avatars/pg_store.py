"""The multi-user memory store: PostgreSQL with pgvector (dense) and a generated tsvector column
with a GIN index (keyword). Same interface and the same isolation rule as the SQLite store.

Dense search is exact within one avatar (the (avatar, kind) index narrows the scan first): an
approximate HNSW index over all avatars would filter after the index scan and could return fewer
than k rows of one avatar.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence

import numpy as np

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
    query_terms,
)
from personalm.errors import PersonalmError
from personalm.eval.text import STOPWORDS

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
COLUMNS = "id, kind, text, source, context, ts, created_at, key"


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.8g}" for x in vector.tolist()) + "]"


class PostgresStore:
    """MemoryStore on PostgreSQL + pgvector; tables live in `schema` (created when missing)."""

    def __init__(self, dsn: str, dimension: int = 384, schema: str = "personalm"):
        import psycopg

        if not SCHEMA_NAME.fullmatch(schema):
            raise PersonalmError(f"schema name {schema!r}: use lower-case letters, digits and '_'")
        self.dsn, self.schema, self.dimension = dsn, schema, dimension
        try:
            self._db = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as err:
            raise PersonalmError(f"cannot connect to PostgreSQL at {_safe_dsn(dsn)} ({str(err).strip()})") from None
        self._lock = threading.RLock()
        self._create()

    def _create(self) -> None:
        s, d = self.schema, self.dimension
        with self._lock, self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext('personalm-schema'))")
            self._db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.avatars (name text PRIMARY KEY, profile text, profile_count int,"
                " profile_at double precision, profile_extra jsonb, settings jsonb)"
            )
            self._db.execute(f"ALTER TABLE {s}.avatars ADD COLUMN IF NOT EXISTS settings jsonb")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.memories (id bigserial PRIMARY KEY, avatar text NOT NULL,"
                " kind text NOT NULL, text text NOT NULL, source text NOT NULL DEFAULT '',"
                " context text NOT NULL DEFAULT '', ts double precision, created_at double precision NOT NULL,"
                f" key text NOT NULL, embedding vector({d}) NOT NULL,"
                " tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED, UNIQUE (avatar, key))"
            )
            self._db.execute(f"CREATE INDEX IF NOT EXISTS memories_avatar_kind ON {s}.memories (avatar, kind)")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS memories_tsv ON {s}.memories USING gin (tsv)")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.sources (avatar text NOT NULL, key text NOT NULL, path text NOT NULL,"
                " memories int NOT NULL, ingested_at double precision NOT NULL, PRIMARY KEY (avatar, key))"
            )
            self._db.execute(f"INSERT INTO {s}.meta VALUES ('dimension', %s) ON CONFLICT (key) DO NOTHING", (str(d),))
            stored = self._db.execute(f"SELECT value FROM {s}.meta WHERE key = 'dimension'").fetchone()[0]
        if int(stored) != d:
            raise PersonalmError(f"PostgreSQL schema {s} holds {stored}-d embeddings, not {d}-d")

    def _rows(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def add(self, avatar: str, memories: Sequence[NewMemory], source: SourceRecord | None = None) -> list[int]:
        check_avatar(avatar)
        now, s, ids = time.time(), self.schema, []
        with self._lock, self._db.transaction():
            self._db.execute(f"INSERT INTO {s}.avatars (name) VALUES (%s) ON CONFLICT DO NOTHING", (avatar,))
            for memory in memories:
                check_kinds([memory.kind])
                vector = as_vector(memory.embedding, self.dimension)
                row = self._db.execute(
                    f"INSERT INTO {s}.memories (avatar, kind, text, source, context, ts, created_at, key, embedding)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::vector) ON CONFLICT (avatar, key) DO NOTHING"
                    " RETURNING id",
                    (avatar, memory.kind, memory.text, memory.source, memory.context, memory.ts, now, memory.key,
                     _vector_text(vector)),
                ).fetchone()  # fmt: skip
                if row:
                    ids.append(int(row[0]))
            if source is not None:
                self._db.execute(
                    f"INSERT INTO {s}.sources VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (avatar, source.key, source.path, source.memories, now),
                )
        return ids

    def has_source(self, avatar: str, key: str) -> bool:
        return bool(
            self._rows(
                f"SELECT 1 FROM {self.schema}.sources WHERE avatar = %s AND key = %s", (check_avatar(avatar), key)
            )
        )

    def sources(self, avatar: str) -> list[SourceRecord]:
        rows = self._rows(
            f"SELECT key, path, memories, ingested_at FROM {self.schema}.sources WHERE avatar = %s ORDER BY ingested_at",
            (check_avatar(avatar),),
        )
        return [SourceRecord(*row) for row in rows]

    def keyword_search(self, avatar: str, query: str, k: int, kinds: Sequence[str] = KINDS) -> list[tuple[int, float]]:
        kinds = check_kinds(kinds)
        check_int64("k", [k])
        terms = [t for t in query_terms(query) if t not in STOPWORDS] or query_terms(query)
        if not terms or k <= 0:
            return []
        rows = self._rows(
            f"SELECT id, ts_rank_cd(tsv, q) FROM {self.schema}.memories, to_tsquery('english', %s) q"
            " WHERE avatar = %s AND kind = ANY(%s) AND tsv @@ q ORDER BY 2 DESC, id LIMIT %s",
            (" | ".join(terms), check_avatar(avatar), list(kinds), k),
        )
        return [(int(i), float(score)) for i, score in rows]

    def vector_search(
        self, avatar: str, vector: np.ndarray, k: int, kinds: Sequence[str] = KINDS
    ) -> list[tuple[int, float]]:
        kinds = check_kinds(kinds)
        check_int64("k", [k])
        query = _vector_text(as_vector(vector, self.dimension))
        if k <= 0:
            return []
        rows = self._rows(
            f"SELECT id, -(embedding <#> %s::vector) FROM {self.schema}.memories"
            " WHERE avatar = %s AND kind = ANY(%s) ORDER BY embedding <#> %s::vector, id LIMIT %s",
            (query, check_avatar(avatar), list(kinds), query, k),
        )
        return [(int(i), float(score)) for i, score in rows]

    def get(self, avatar: str, ids: Sequence[int]) -> list[Memory]:
        check_int64("memory id", ids)
        if not ids:
            return []
        rows = self._rows(
            f"SELECT {COLUMNS} FROM {self.schema}.memories WHERE avatar = %s AND id = ANY(%s)",
            (check_avatar(avatar), list(ids)),
        )
        found = {row[0]: Memory(*row) for row in rows}
        return [found[i] for i in ids if i in found]

    def embeddings(self, avatar: str, ids: Sequence[int]) -> np.ndarray:
        check_int64("memory id", ids)
        rows = dict(
            self._rows(
                f"SELECT id, embedding::text FROM {self.schema}.memories WHERE avatar = %s AND id = ANY(%s)",
                (check_avatar(avatar), list(ids)),
            )
        )
        vectors = [np.array(json.loads(rows[i]), dtype=np.float32) for i in ids if i in rows]
        return np.stack(vectors) if vectors else np.zeros((0, self.dimension), dtype=np.float32)

    def list(self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0) -> list[Memory]:
        kinds = check_kinds([kind] if kind else KINDS)
        check_int64("limit", [limit])
        check_int64("offset", [offset])
        rows = self._rows(
            f"SELECT {COLUMNS} FROM {self.schema}.memories WHERE avatar = %s AND kind = ANY(%s)"
            " ORDER BY id LIMIT %s OFFSET %s",
            (check_avatar(avatar), list(kinds), limit, offset),
        )
        return [Memory(*row) for row in rows]

    def count(self, avatar: str, kind: str | None = None) -> int:
        kinds = check_kinds([kind] if kind else KINDS)
        rows = self._rows(
            f"SELECT COUNT(*) FROM {self.schema}.memories WHERE avatar = %s AND kind = ANY(%s)",
            (check_avatar(avatar), list(kinds)),
        )
        return int(rows[0][0])

    def update(self, avatar: str, memory_id: int, text: str, key: str, embedding: np.ndarray) -> bool:
        check_avatar(avatar)
        check_int64("memory id", [memory_id])
        vector, s = _vector_text(as_vector(embedding, self.dimension)), self.schema
        with self._lock, self._db.transaction():
            taken = self._db.execute(
                f"SELECT 1 FROM {s}.memories WHERE avatar = %s AND key = %s AND id <> %s", (avatar, key, memory_id)
            ).fetchone()
            if taken:  # the new text is already stored: the old row goes
                cursor = self._db.execute(
                    f"DELETE FROM {s}.memories WHERE avatar = %s AND id = %s", (avatar, memory_id)
                )
            else:
                cursor = self._db.execute(
                    f"UPDATE {s}.memories SET text = %s, key = %s, embedding = %s::vector, created_at = %s"
                    " WHERE avatar = %s AND id = %s",
                    (text, key, vector, time.time(), avatar, memory_id),
                )
            return bool(cursor.rowcount)

    def delete(self, avatar: str, ids: Sequence[int]) -> int:
        check_int64("memory id", ids)
        if not ids:
            return 0
        with self._lock:
            cursor = self._db.execute(
                f"DELETE FROM {self.schema}.memories WHERE avatar = %s AND id = ANY(%s)",
                (check_avatar(avatar), list(ids)),
            )
            return cursor.rowcount

    def delete_avatar(self, avatar: str) -> int:
        check_avatar(avatar)
        with self._lock, self._db.transaction():
            removed = self._db.execute(f"DELETE FROM {self.schema}.memories WHERE avatar = %s", (avatar,)).rowcount
            self._db.execute(f"DELETE FROM {self.schema}.sources WHERE avatar = %s", (avatar,))
            self._db.execute(f"DELETE FROM {self.schema}.avatars WHERE name = %s", (avatar,))
        return removed

    def get_profile(self, avatar: str) -> Profile | None:
        rows = self._rows(
            f"SELECT profile, profile_count, profile_at, profile_extra FROM {self.schema}.avatars"
            " WHERE name = %s AND profile IS NOT NULL",
            (check_avatar(avatar),),
        )
        if not rows:
            return None
        text, count, at, extra = rows[0]
        return Profile(text, int(count or 0), float(at or 0), extra or {})

    def set_profile(self, avatar: str, profile: Profile) -> None:
        check_avatar(avatar)
        with self._lock:
            self._db.execute(
                f"INSERT INTO {self.schema}.avatars (name, profile, profile_count, profile_at, profile_extra)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET profile = excluded.profile,"
                " profile_count = excluded.profile_count, profile_at = excluded.profile_at,"
                " profile_extra = excluded.profile_extra",
                (avatar, profile.text, profile.memory_count, time.time(), json.dumps(profile.extra)),
            )

    def get_settings(self, avatar: str) -> dict:
        rows = self._rows(f"SELECT settings FROM {self.schema}.avatars WHERE name = %s", (check_avatar(avatar),))
        return (rows[0][0] or {}) if rows else {}

    def set_settings(self, avatar: str, settings: dict) -> None:
        check_avatar(avatar)
        with self._lock:
            self._db.execute(
                f"INSERT INTO {self.schema}.avatars (name, settings) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET settings = excluded.settings",
                (avatar, json.dumps(settings)),
            )

    def avatar_names(self) -> list[str]:
        return [r[0] for r in self._rows(f"SELECT name FROM {self.schema}.avatars ORDER BY name")]

    def drop_schema(self) -> None:
        """Remove every table of this store (tests use one schema each)."""
        with self._lock:
            self._db.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password, for error lines."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", dsn)
