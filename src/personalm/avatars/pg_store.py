"""The multi-user memory store: PostgreSQL with pgvector (dense) and a generated tsvector column
with a GIN index (keyword). Same interface, the same isolation rule and the same versions as the
SQLite store (store.py): an update ends the old row and starts a new one, a delete ends it, and
partial indexes over the current rows keep current-only reads from scanning the ended versions.

Dense search is exact within one avatar (the (avatar, kind) index narrows the scan first): an
approximate HNSW index over all avatars would filter after the index scan and could return fewer
than k rows of one avatar.

Schemas written before versions were kept are migrated on open (under the same advisory lock as
their creation): the version columns are added, UNIQUE (avatar, key) becomes a unique index over
the current rows, and the rows already there are marked as stored before versions were kept.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence

import numpy as np

from personalm.avatars.store import (
    BEFORE_VERSIONS,
    COLUMNS,
    KINDS,
    Clock,
    Memory,
    NewMemory,
    Profile,
    SourceRecord,
    as_vector,
    check_avatar,
    check_int64,
    check_kinds,
    check_time,
    in_order,
    merged_into,
    query_terms,
)
from personalm.errors import PersonalmError
from personalm.eval.text import STOPWORDS

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
CURRENT = "ended_at IS NULL"
BELIEVED_AT = "created_at <= %s AND (ended_at IS NULL OR ended_at > %s)"
VERSION_COLUMNS = (
    "seq bigint NOT NULL DEFAULT 0", "chain bigint", "replaces bigint", "superseded_by bigint",
    "ended_at double precision", "origin text NOT NULL DEFAULT ''", "rule text NOT NULL DEFAULT ''",
    "end_origin text NOT NULL DEFAULT ''", "end_rule text NOT NULL DEFAULT ''",
)  # fmt: skip


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.8g}" for x in vector.tolist()) + "]"


def _when(as_of: float | None) -> tuple[str, tuple]:
    """The SQL condition (and its parameters) of the rows believed now, or at `as_of`."""
    as_of = check_time("as_of", as_of)
    return (CURRENT, ()) if as_of is None else (BELIEVED_AT, (as_of, as_of))


class PostgresStore:
    """MemoryStore on PostgreSQL + pgvector; tables live in `schema` (created when missing)."""

    def __init__(self, dsn: str, dimension: int = 384, schema: str = "personalm", clock: Clock = time.time):
        import psycopg

        if not SCHEMA_NAME.fullmatch(schema):
            raise PersonalmError(f"schema name {schema!r}: use lower-case letters, digits and '_'")
        self.dsn, self.schema, self.dimension, self.clock = dsn, schema, dimension, clock
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
            created = self._db.execute(f"SELECT to_regclass('{s}.memories') IS NULL").fetchone()[0]
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.memories (id bigserial PRIMARY KEY, avatar text NOT NULL,"
                " kind text NOT NULL, text text NOT NULL, source text NOT NULL DEFAULT '',"
                " context text NOT NULL DEFAULT '', ts double precision, created_at double precision NOT NULL,"
                f" key text NOT NULL, embedding vector({d}) NOT NULL,"
                " tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED)"
            )
            self._migrate(fresh=created)
            self._db.execute(f"CREATE INDEX IF NOT EXISTS memories_avatar_kind ON {s}.memories (avatar, kind)")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.sources (avatar text NOT NULL, key text NOT NULL, path text NOT NULL,"
                " memories int NOT NULL, ingested_at double precision NOT NULL, PRIMARY KEY (avatar, key))"
            )
            self._db.execute(f"INSERT INTO {s}.meta VALUES ('dimension', %s) ON CONFLICT (key) DO NOTHING", (str(d),))
            stored = self._db.execute(f"SELECT value FROM {s}.meta WHERE key = 'dimension'").fetchone()[0]
        if int(stored) != d:
            raise PersonalmError(f"PostgreSQL schema {s} holds {stored}-d embeddings, not {d}-d")

    def _migrate(self, fresh: bool) -> None:
        """The version columns and indexes (idempotent); a table that held rows before versions
        were kept loses UNIQUE (avatar, key) and marks those rows, once."""
        s, db = self.schema, self._db
        have = {r[0] for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'memories'",
            (s,),
        ).fetchall()}  # fmt: skip
        missing = [c for c in VERSION_COLUMNS if c.split()[0] not in have]
        if missing:  # ALTER TABLE locks the table even when it changes nothing: only when needed
            db.execute(f"ALTER TABLE {s}.memories " + ", ".join(f"ADD COLUMN {c}" for c in missing))
        db.execute(f"CREATE SEQUENCE IF NOT EXISTS {s}.changes")
        marked = db.execute(f"SELECT 1 FROM {s}.meta WHERE key = 'versions'").fetchone()
        if not marked:
            if not fresh:
                db.execute(f"ALTER TABLE {s}.memories DROP CONSTRAINT IF EXISTS memories_avatar_key_key")
                db.execute(
                    f"UPDATE {s}.memories m SET rule = %s, origin = COALESCE((SELECT 'file ' || x.path FROM"
                    f" {s}.sources x WHERE x.avatar = m.avatar AND x.key = m.source), '')",
                    (BEFORE_VERSIONS,),
                )
            db.execute(f"INSERT INTO {s}.meta VALUES ('versions', '1')")
        db.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS memories_current_key ON {s}.memories (avatar, key) WHERE {CURRENT}"
        )
        db.execute(f"CREATE INDEX IF NOT EXISTS memories_current ON {s}.memories (avatar, kind) WHERE {CURRENT}")
        db.execute(f"DROP INDEX IF EXISTS {s}.memories_tsv")  # the keyword index covers the current rows only
        db.execute(f"CREATE INDEX IF NOT EXISTS memories_current_tsv ON {s}.memories USING gin (tsv) WHERE {CURRENT}")
        db.execute(f"CREATE INDEX IF NOT EXISTS memories_chain ON {s}.memories (avatar, chain)")
        db.execute(f"CREATE INDEX IF NOT EXISTS memories_avatar_seq ON {s}.memories (avatar, seq)")

    def _rows(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _seq(self) -> int:
        """The number of this change (the caller holds a transaction)."""
        return int(self._db.execute(f"SELECT nextval('{self.schema}.changes')").fetchone()[0])

    def _insert(self, avatar: str, memory: NewMemory, seq: int, now: float, chain: int | None = None,
                replaces: int | None = None) -> int | None:  # fmt: skip
        """One new current row (the caller holds the transaction); None when its key is current."""
        check_kinds([memory.kind])
        vector = as_vector(memory.embedding, self.dimension)
        row = self._db.execute(
            f"INSERT INTO {self.schema}.memories (avatar, kind, text, source, context, ts, created_at, key, embedding,"
            " seq, chain, replaces, origin, rule) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::vector, %s, %s, %s, %s,"
            f" %s) ON CONFLICT (avatar, key) WHERE {CURRENT} DO NOTHING RETURNING id",
            (avatar, memory.kind, memory.text, memory.source, memory.context, memory.ts, now, memory.key,
             _vector_text(vector), seq, chain, replaces, memory.origin, memory.rule),
        ).fetchone()  # fmt: skip
        return int(row[0]) if row else None

    def _current_id(self, avatar: str, key: str) -> int | None:
        row = self._db.execute(
            f"SELECT id FROM {self.schema}.memories WHERE avatar = %s AND key = %s AND {CURRENT}", (avatar, key)
        ).fetchone()
        return None if row is None else int(row[0])

    def add(self, avatar: str, memories: Sequence[NewMemory], source: SourceRecord | None = None) -> list[int]:
        check_avatar(avatar)
        s, ids = self.schema, []
        with self._lock, self._db.transaction():
            seq, now = self._seq(), self.clock()
            self._db.execute(f"INSERT INTO {s}.avatars (name) VALUES (%s) ON CONFLICT DO NOTHING", (avatar,))
            for memory in memories:
                memory_id = self._insert(avatar, memory, seq, now)
                if memory_id is not None:
                    ids.append(memory_id)
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

    def keyword_search(
        self, avatar: str, query: str, k: int, kinds: Sequence[str] = KINDS, as_of: float | None = None
    ) -> list[tuple[int, float]]:
        kinds = check_kinds(kinds)
        check_int64("k", [k])
        when, times = _when(as_of)
        terms = [t for t in query_terms(query) if t not in STOPWORDS] or query_terms(query)
        if not terms or k <= 0:
            return []
        rows = self._rows(
            f"SELECT id, ts_rank_cd(tsv, q) FROM {self.schema}.memories, to_tsquery('english', %s) q"
            f" WHERE avatar = %s AND kind = ANY(%s) AND {when} AND tsv @@ q ORDER BY 2 DESC, id LIMIT %s",
            (" | ".join(terms), check_avatar(avatar), list(kinds), *times, k),
        )
        return [(int(i), float(score)) for i, score in rows]

    def vector_search(
        self, avatar: str, vector: np.ndarray, k: int, kinds: Sequence[str] = KINDS, as_of: float | None = None
    ) -> list[tuple[int, float]]:
        kinds = check_kinds(kinds)
        check_int64("k", [k])
        when, times = _when(as_of)
        query = _vector_text(as_vector(vector, self.dimension))
        if k <= 0:
            return []
        rows = self._rows(
            f"SELECT id, -(embedding <#> %s::vector) FROM {self.schema}.memories"
            f" WHERE avatar = %s AND kind = ANY(%s) AND {when} ORDER BY embedding <#> %s::vector, id LIMIT %s",
            (query, check_avatar(avatar), list(kinds), *times, query, k),
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

    def list(
        self, avatar: str, kind: str | None = None, limit: int = 100, offset: int = 0, as_of: float | None = None
    ) -> list[Memory]:
        kinds = check_kinds([kind] if kind else KINDS)
        check_int64("limit", [limit])
        check_int64("offset", [offset])
        when, times = _when(as_of)
        rows = self._rows(
            f"SELECT {COLUMNS} FROM {self.schema}.memories WHERE avatar = %s AND kind = ANY(%s) AND {when}"
            " ORDER BY id LIMIT %s OFFSET %s",
            (check_avatar(avatar), list(kinds), *times, limit, offset),
        )
        return [Memory(*row) for row in rows]

    def retracted(self, avatar: str, kind: str | None = None, as_of: float | None = None) -> list[Memory]:
        kinds = check_kinds([kind] if kind else KINDS)
        by = check_time("as_of", as_of)
        rows = self._rows(
            f"SELECT {COLUMNS} FROM {self.schema}.memories WHERE avatar = %s AND kind = ANY(%s)"
            " AND ended_at IS NOT NULL AND superseded_by IS NULL AND ended_at <= %s ORDER BY id",
            (check_avatar(avatar), list(kinds), float("inf") if by is None else by),
        )
        return [Memory(*row) for row in rows]

    def count(self, avatar: str, kind: str | None = None, as_of: float | None = None) -> int:
        kinds = check_kinds([kind] if kind else KINDS)
        when, times = _when(as_of)
        rows = self._rows(
            f"SELECT COUNT(*) FROM {self.schema}.memories WHERE avatar = %s AND kind = ANY(%s) AND {when}",
            (check_avatar(avatar), list(kinds), *times),
        )
        return int(rows[0][0])

    def update(self, avatar: str, memory_id: int, memory: NewMemory) -> int | None:
        check_avatar(avatar)
        check_int64("memory id", [memory_id])
        as_vector(memory.embedding, self.dimension)
        s = self.schema
        with self._lock, self._db.transaction():
            old = self._db.execute(
                f"SELECT COALESCE(chain, id), key FROM {s}.memories WHERE avatar = %s AND id = %s AND {CURRENT}"
                " FOR UPDATE",
                (avatar, memory_id),
            ).fetchone()
            if old is None:
                return None
            chain, key = old
            if key == memory.key:  # it already says this: nothing to record
                return memory_id
            seq, now = self._seq(), self.clock()
            new_id = self._current_id(avatar, memory.key)
            if new_id is None:
                new_id = self._insert(avatar, memory, seq, now, chain, memory_id)
            self._db.execute(
                f"UPDATE {s}.memories SET ended_at = %s, superseded_by = %s, end_origin = %s, end_rule = %s, seq = %s"
                " WHERE id = %s",
                (now, new_id, memory.origin, memory.rule, seq, memory_id),
            )
            return new_id

    def delete(self, avatar: str, ids: Sequence[int], origin: str = "", rule: str = "") -> int:
        check_int64("memory id", ids)
        if not ids:
            return 0
        check_avatar(avatar)
        with self._lock, self._db.transaction():
            return self._db.execute(
                f"UPDATE {self.schema}.memories SET ended_at = %s, end_origin = %s, end_rule = %s, seq = %s"
                f" WHERE avatar = %s AND id = ANY(%s) AND {CURRENT}",
                (self.clock(), origin, rule, self._seq(), avatar, list(ids)),
            ).rowcount

    def restore(self, avatar: str, memory_id: int, origin: str = "", rule: str = "") -> int | None:
        check_avatar(avatar)
        check_int64("memory id", [memory_id])
        with self._lock, self._db.transaction():
            row = self._db.execute(
                f"SELECT kind, text, source, context, ts, key, embedding::text, COALESCE(chain, id)"
                f" FROM {self.schema}.memories WHERE avatar = %s AND id = %s AND ended_at IS NOT NULL",
                (avatar, memory_id),
            ).fetchone()
            if row is None:
                return None
            kind, text, source, context, ts, key, embedding, chain = row
            current = self._current_id(avatar, key)
            if current is not None:
                return current
            copy = NewMemory(kind, text, key, np.array(json.loads(embedding), dtype=np.float32), source, context, ts,
                             origin, rule)  # fmt: skip
            return self._insert(avatar, copy, self._seq(), self.clock(), chain, memory_id)

    def _chain(self, avatar: str, memory_id: int) -> int | None:
        check_int64("memory id", [memory_id])
        rows = self._rows(
            f"SELECT COALESCE(chain, id) FROM {self.schema}.memories WHERE avatar = %s AND id = %s",
            (check_avatar(avatar), memory_id),
        )
        return int(rows[0][0]) if rows else None

    def history(self, avatar: str, memory_id: int) -> list[Memory]:
        chain = self._chain(avatar, memory_id)
        if chain is None:
            return []
        rows = self._rows(
            f"SELECT {COLUMNS} FROM {self.schema}.memories WHERE avatar = %s AND (id = %s OR chain = %s)",
            (avatar, chain, chain),
        )
        versions = [Memory(*r) for r in rows]
        return in_order(versions + self.get(avatar, merged_into(versions)))

    def head(self, avatar: str, memory_id: int | None = None) -> Memory | None:
        check_avatar(avatar)
        where, params = "", ()
        if memory_id is not None:
            chain = self._chain(avatar, memory_id)
            if chain is None:
                return None
            where, params = " AND (id = %s OR chain = %s)", (chain, chain)
        rows = self._rows(
            f"SELECT {COLUMNS} FROM {self.schema}.memories WHERE avatar = %s{where}"
            " ORDER BY seq DESC, ended_at IS NULL DESC, id DESC LIMIT 1",
            (avatar, *params),
        )
        return Memory(*rows[0]) if rows else None

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
