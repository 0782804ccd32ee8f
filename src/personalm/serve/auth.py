"""API keys and what each may reach, stored in SQLite (only SHA-256 hashes of keys are kept).

Scopes: `admin` (everything, and manages keys), `user` (base models, adapters, soups), and
`avatar:NAME` (that avatar only: its chat model and its memory endpoints). With no admin key
configured the server runs open, for local use; `personalm serve` refuses that on a non-loopback
host. Keys minted while the server ran open were handed out without any check, so they are marked
and refused once the server has an admin key.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    scope TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    minted_open INTEGER NOT NULL DEFAULT 0
)
"""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and scope."""

    name: str
    scope: str

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @property
    def avatar(self) -> str | None:
        return self.scope.removeprefix("avatar:") if self.scope.startswith("avatar:") else None

    def may_use_avatar(self, avatar: str) -> bool:
        return self.is_admin or self.avatar == avatar

    def may_use_model(self) -> bool:
        """Base models, adapters and soups: every key but an avatar's."""
        return self.avatar is None


OPEN = Principal("open", "admin")


class KeyStore:
    def __init__(self, path: Path, admin_key: str | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        if "minted_open" not in [row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")]:
            self._db.execute("ALTER TABLE api_keys ADD COLUMN minted_open INTEGER NOT NULL DEFAULT 0")
        self._db.commit()
        self._lock = threading.Lock()
        self.admin_hash = _hash(admin_key) if admin_key else None

    @property
    def open(self) -> bool:
        return self.admin_hash is None

    def authenticate(self, key: str | None) -> Principal | None:
        if self.open:
            return OPEN
        if not key:
            return None
        digest = _hash(key)
        if secrets.compare_digest(digest, self.admin_hash):
            return Principal("admin", "admin")
        with self._lock:
            row = self._db.execute(
                "SELECT name, scope FROM api_keys WHERE key_hash = ? AND NOT minted_open", (digest,)
            ).fetchone()
        return Principal(*row) if row else None

    def create(self, name: str, scope: str) -> str:
        """A new key for `scope` ('user' or 'avatar:NAME'); returned once, stored hashed (and marked
        when the server runs open: such a key never works with an admin key set)."""
        key = "pm-" + secrets.token_urlsafe(24)
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO api_keys (key_hash, name, scope, minted_open) VALUES (?, ?, ?, ?)",
                (_hash(key), name, scope, int(self.open)),
            )
        return key

    def list(self) -> list[dict[str, str | bool]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, scope, created, minted_open FROM api_keys ORDER BY created, name"
            ).fetchall()
        return [{"name": n, "scope": s, "created": c, "minted_open": bool(o)} for n, s, c, o in rows]

    def delete(self, name: str) -> bool:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount > 0
