"""Hostile inputs to `personalm avatar ...` (issue 17): integers past int64, a store that does not
exist, one huge line without sentence breaks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.sqlite_store import SQLiteStore

HUGE = str(2**70)


@pytest.fixture
def store(tmp_path: Path, word_hash_embedder) -> Path:
    path = tmp_path / "m.db"
    memory = AvatarMemory(SQLiteStore(path, 384), word_hash_embedder(384))
    memory.remember("ada", "I prefer green tea.")
    memory.close()
    return path


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["forget", "ada", HUGE], "'ids'"),
        (["forget", "ada", "1", HUGE], "'ids'"),
        (["list", "ada", "--offset", HUGE], "'--offset'"),
        (["list", "ada", "--limit", HUGE], "'--limit'"),
        (["list", "ada", "--limit", str(2**63)], "'--limit'"),
        (["search", "ada", "tea", "-k", HUGE], "'-k'"),
    ],
)
def test_integers_past_int64_are_one_line_exit_2(store: Path, args: list[str], option: str, cli) -> None:
    line = cli.one_error_line(cli.invoke("avatar", *args, "--store", str(store)))
    assert option in line and "9223372036854775807" in line


def test_the_largest_int64_still_works(store: Path, cli) -> None:
    ran = cli.invoke("avatar", "list", "ada", "--offset", str(2**63 - 1), "--store", str(store), "--json")
    assert ran.returncode == 0 and ran.stdout == "", str(ran)


@pytest.mark.parametrize(
    "args",
    [
        ["search", "ada", "tea"],
        ["list"],
        ["list", "ada"],
        ["forget", "ada", "1"],
        ["profile", "ada"],
        ["chat", "ada", "-M", "hi"],
        ["sft-data", "ada", "-o", "out.jsonl"],
    ],
)
def test_reading_a_missing_store_is_an_error_and_creates_nothing(tmp_path: Path, args: list[str], cli) -> None:
    missing = tmp_path / "nowhere" / "memory.db"
    line = cli.one_error_line(cli.invoke("avatar", *args, "--store", str(missing)))
    assert str(missing) in line and "no such memory store" in line
    assert not missing.parent.exists()


def test_the_default_store_is_not_created_by_a_search(tmp_path: Path, monkeypatch, cli) -> None:
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path))
    monkeypatch.delenv("PERSONALM_AVATAR_STORE", raising=False)
    cli.one_error_line(cli.invoke("avatar", "search", "ada", "tea"))
    assert list(tmp_path.iterdir()) == []


class CountingEmbedder:
    """Counts the texts it is asked to embed; `inner` embeds them."""

    def __init__(self, inner) -> None:
        self.inner, self.texts = inner, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str], progress=None) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed(texts, progress)


@pytest.mark.parametrize("line", ["a" * 5_000_000, "word " * 1_000_000], ids=["one-word", "no-sentence-break"])
def test_one_huge_line_embeds_each_distinct_chunk_once(tmp_path: Path, line: str, word_hash_embedder) -> None:
    (tmp_path / "huge.txt").write_text(line)
    embedder = CountingEmbedder(word_hash_embedder())
    memory = AvatarMemory(SQLiteStore(tmp_path / "m.db", embedder.dimension), embedder)
    start = time.perf_counter()
    report = memory.ingest("ada", [tmp_path / "huge.txt"])
    seconds = time.perf_counter() - start
    stored = memory.list("ada", limit=100)
    assert embedder.texts == len(stored) <= 3  # thousands of identical chunks, embedded once each
    assert report.added == len(stored) and report.duplicates > 10_000
    assert memory.store.sources("ada")[0].memories == len(stored)
    assert all(m.source == memory.store.sources("ada")[0].key for m in stored)
    assert seconds < 30, f"ingest took {seconds:.0f}s"
    memory.close()
