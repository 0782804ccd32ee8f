"""Avatars of real people: memory of their own words, hybrid retrieval, profile, chat, growing memory."""

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chunking import Chunking
from personalm.avatars.store import MemoryStore, open_store

__all__ = ["AvatarMemory", "Chunking", "MemoryStore", "open_store"]
