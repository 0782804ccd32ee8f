"""`personalm avatar ingest`: files → the person's utterances, chunked, embedded and stored.

Crash safety: every file is parsed (and so validated) before anything is written, then each
file's memories and its source record go in one transaction. A kill leaves whole files stored or
absent, and a re-run skips the files already stored (source hash) and any chunk already there
(content hash), so nothing is added twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from personalm.avatars.chunking import Chunking, chunk_text
from personalm.avatars.sources import Source, discover, norm_speaker, read_source
from personalm.avatars.store import MemoryStore, NewMemory, SourceRecord, check_avatar


class TextEmbedder(Protocol):
    """What the avatar stages need of an embedder (personalm.models.embedder.Embedder is one)."""

    name: str

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray: ...


@dataclass
class IngestReport:
    files: int = 0
    skipped_files: int = 0
    added: int = 0
    duplicates: int = 0


def memory_key(kind: str, text: str) -> str:
    """Content hash of a memory: the same words stored twice for one avatar are one memory."""
    return hashlib.sha256(f"{kind}\x00{' '.join(text.split())}".encode()).hexdigest()


def source_key(source: Source, chunking: Chunking, speakers: set[str]) -> str:
    """A file's identity: its bytes and everything that decides what memories it yields."""
    digest = hashlib.sha256(source.data)
    digest.update(f"\x00{chunking.max_chars}\x00{chunking.overlap}\x00{','.join(sorted(speakers))}".encode())
    return digest.hexdigest()


def utterances(source: Source, key: str, chunking: Chunking) -> list[NewMemory]:
    """The person's own turns, chunked; others' turns only travel as context."""
    out = []
    for turn in source.turns:
        if not turn.own:
            continue
        for chunk in chunk_text(turn.text, chunking):
            out.append(
                NewMemory(
                    kind="utterance",
                    text=chunk,
                    key=memory_key("utterance", chunk),
                    embedding=np.empty(0, dtype=np.float32),
                    source=key,
                    context=turn.context,
                    ts=turn.ts,
                    origin=f"file {source.path.name}",
                    rule="ingested",
                )
            )
    return out


def first_of_each_key(memories: list[NewMemory]) -> list[NewMemory]:
    """One memory per content hash, the first (as the store keeps the first): a repeated chunk,
    e.g. thousands from one long line without sentence breaks, is embedded once, not every time."""
    first: dict[str, NewMemory] = {}
    for memory in memories:
        first.setdefault(memory.key, memory)
    return list(first.values())


def ingest(
    store: MemoryStore,
    embed: Callable[[Sequence[str]], np.ndarray],
    avatar: str,
    paths: Sequence[str | Path],
    speakers: Sequence[str] = (),
    chunking: Chunking = Chunking(),
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest files and folders for one avatar; `speakers` names the person in chat logs
    (default: the avatar name, with '_' read as a space, case-insensitive). `embed` maps texts
    to unit-norm vectors (called only once every file has parsed)."""
    check_avatar(avatar)
    wanted = {norm_speaker(s) for s in speakers} or {norm_speaker(avatar)}
    sources = [read_source(path, wanted) for path in discover([Path(p) for p in paths])]
    report = IngestReport(files=len(sources))
    for source in sources:
        key = source_key(source, chunking, wanted)
        if store.has_source(avatar, key):
            report.skipped_files += 1
            if progress:
                progress(1)
            continue
        memories = utterances(source, key, chunking)
        distinct = first_of_each_key(memories)
        vectors = embed([m.text for m in distinct])
        for memory, vector in zip(distinct, vectors, strict=True):
            memory.embedding = vector
        added = store.add(avatar, distinct, SourceRecord(key, str(source.path), len(distinct)))
        report.added += len(added)
        report.duplicates += len(memories) - len(added)
        if progress:
            progress(1)
    return report
