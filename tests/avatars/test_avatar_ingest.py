"""Ingestion: every format, only the person's words as utterances, idempotence, clear errors,
and a real SIGKILL of `personalm avatar ingest` leaving a consistent store."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime

import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chunking import Chunking, chunk_text
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.errors import PersonalmError
from personalm.paths import data_dir


@pytest.fixture
def memory(tmp_path, word_hash_embedder):
    embedder = word_hash_embedder()
    memory = AvatarMemory(SQLiteStore(tmp_path / "m.db", embedder.dimension), embedder)
    yield memory
    memory.close()


def texts(memory, avatar="ada"):
    return [m.text for m in memory.list(avatar, limit=1000)]


def test_chunking_keeps_sentences_and_overlaps():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_text(text, Chunking(120, 0.25))
    assert all(len(c) <= 120 for c in chunks) and len(chunks) > 5
    assert all(c.endswith(".") for c in chunks)
    assert all(a.split(". ")[-1] in b for a, b in zip(chunks, chunks[1:], strict=False))
    assert chunk_text("x" * 500, Chunking(100, 0))[0] == "x" * 100
    with pytest.raises(PersonalmError, match="chunk size"):
        Chunking(10)


def test_text_markdown_and_speeches_layout(memory, tmp_path):
    folder = tmp_path / "speeches"
    folder.mkdir()
    (folder / "1861-03-04-first-inaugural.txt").write_text("President: Abe\n\nWe are not enemies, but friends.\n")
    (folder / "notes.md").write_text("# Notes\n\nI like long walks.")
    report = memory.ingest("ada", [folder])
    assert (report.files, report.added) == (2, 2)
    stored = {m.text: m for m in memory.list("ada")}
    assert "We are not enemies, but friends." in stored  # header line dropped
    assert stored["We are not enemies, but friends."].ts == datetime(1861, 3, 4, tzinfo=UTC).timestamp()
    assert stored["# Notes I like long walks."].ts is None


def test_jsonl_chat_keeps_only_own_words_with_context(memory, tmp_path):
    log = tmp_path / "chat.jsonl"
    rows = [
        {"speaker": "Bob", "text": "What do you drink in the morning?", "timestamp": "2024-01-02T08:00:00Z"},
        {"speaker": "Ada", "text": "Green tea, always.", "timestamp": "2024-01-02T08:01:00Z"},
        {"speaker": "Ada", "text": "Never coffee.", "timestamp": 1704182470},
        {"speaker": "Bob", "text": "Why not coffee?"},
        {"speaker": "ada", "text": "It makes me jittery."},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    memory.ingest("ada", [log])
    stored = memory.list("ada")
    assert [m.text for m in stored] == ["Green tea, always. Never coffee.", "It makes me jittery."]
    assert stored[0].context == "What do you drink in the morning?" and stored[1].context == "Why not coffee?"
    assert stored[0].ts == datetime(2024, 1, 2, 8, 1, tzinfo=UTC).timestamp()
    assert not any("Why not" in t for t in texts(memory))
    memory.ingest("bob", [log], speakers=["Bob"])
    assert texts(memory, "bob") == ["What do you drink in the morning?", "Why not coffee?"]


def test_csv_and_whatsapp(memory, tmp_path):
    (tmp_path / "log.csv").write_text('speaker,text,timestamp\nBob,"Hi, Ada!",\nAda,"Hello, Bob.",2024-05-01\n')
    android = (
        "12/31/23, 9:41 PM - Messages and calls are end-to-end encrypted.\n"
        "12/31/23, 9:42 PM - Bob: Happy new year!\n"
        "12/31/23, 9:43 PM - Ada Lovelace: Same to you.\nSee you tomorrow.\n"
    )
    (tmp_path / "wa.txt").write_text(android)
    ios = "[31.12.23, 21:41:05] Bob: Ready?\n[31.12.23, 21:42:10] Ada Lovelace: Almost there.\n"
    (tmp_path / "wa_ios.txt").write_text(ios)
    memory.ingest("ada", [tmp_path / "log.csv"])
    memory.ingest("ada", [tmp_path / "wa.txt", tmp_path / "wa_ios.txt"], speakers=["Ada Lovelace"])
    stored = {m.text: m for m in memory.list("ada")}
    assert set(stored) == {"Hello, Bob.", "Same to you. See you tomorrow.", "Almost there."}
    assert stored["Same to you. See you tomorrow."].context == "Happy new year!"
    assert stored["Same to you. See you tomorrow."].ts == datetime(2023, 12, 31, 21, 43, tzinfo=UTC).timestamp()
    assert stored["Almost there."].ts == datetime(2023, 12, 31, 21, 42, 10, tzinfo=UTC).timestamp()


def test_reingest_adds_nothing(memory, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(" ".join(f"Thing {i} is said." for i in range(50)))
    (folder / "b.txt").write_text("Another thing entirely, said once.")
    first = memory.ingest("ada", [folder])
    again = memory.ingest("ada", [folder])
    assert first.added > 1 and (again.added, again.skipped_files) == (0, 2)
    (folder / "c.txt").write_text("Another thing entirely, said once.\n")  # same words, other bytes
    third = memory.ingest("ada", [folder])
    assert (third.added, third.duplicates, third.skipped_files) == (0, 1, 2)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("data.pdf", b"%PDF", "unknown format '.pdf'"),
        ("latin.txt", "first line\ncaf\xe9 au lait".encode("latin-1"), r"latin.txt:2: not UTF-8 text"),
        ("empty.txt", b"  \n\n", "empty source"),
        ("bad.jsonl", b'{"speaker": "Ada", "text": "ok"}\n{oops\n', r"bad.jsonl:2: invalid JSON"),
        ("nospeaker.jsonl", b'{"text": "hi"}\n', r"nospeaker.jsonl:1: expected column 'speaker'"),
        ("cols.csv", b"who,words\nAda,hi\n", r"cols.csv:1: expected a header with columns speaker, text"),
        ("others.jsonl", b'{"speaker": "Bob", "text": "hi"}\n', r"no messages by ada \(speakers here: Bob\)"),
        (
            "when.jsonl",
            b'{"speaker": "Ada", "text": "hi", "timestamp": "soon"}\n',
            r"when.jsonl:1: expected 'timestamp'",
        ),
    ],
)
def test_bad_sources_fail_clearly_and_keep_what_was_stored(memory, tmp_path, name, content, message):
    (tmp_path / "good.txt").write_text("Kept words.")
    memory.ingest("ada", [tmp_path / "good.txt"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "fine.txt").write_text("These would be new.")
    (tmp_path / "bad" / name).write_bytes(content)
    with pytest.raises(PersonalmError, match=message):
        memory.ingest("ada", [tmp_path / "bad"])
    assert texts(memory) == ["Kept words."]  # nothing of the failed run, all of the earlier one


def test_cli_error_is_one_line_exit_2(tmp_path, cli):
    (tmp_path / "x.docx").write_bytes(b"PK")
    result = cli.invoke("avatar", "ingest", "ada", str(tmp_path / "x.docx"), "--store", str(tmp_path / "m.db"))
    err = result.stderr.strip()
    assert result.returncode == 2 and err.count("\n") == 0 and "x.docx: unknown format" in err
    bad_name = cli.invoke("avatar", "ingest", "../bad", str(tmp_path), "--store", str(tmp_path / "m.db"))
    assert bad_name.returncode != 0 and "avatar name" in bad_name.stderr


def test_real_speeches_folder(memory):
    folder = data_dir() / "speeches" / "george_washington"
    if not folder.is_dir():
        pytest.skip(f"speeches data not found at {folder} (set PERSONALM_DATA)")
    report = memory.ingest("george_washington", [folder])
    stored = memory.list("george_washington", limit=5)
    assert report.files == len(list(folder.glob("*.txt"))) and report.added > 100
    assert all(m.ts is not None and not m.text.startswith("President:") for m in stored)


@pytest.mark.slow
def test_sigkill_during_ingest_leaves_a_consistent_store(tmp_path, cli):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        body = " ".join(f"File {i} sentence {j} talks about topic {i * 31 + j}." for j in range(12))
        (folder / f"{i:03d}.txt").write_text(body)
    db = tmp_path / "m.db"
    args = ["avatar", "ingest", "ada", str(folder), "--store", str(db), "--chunk-chars", "80", "--no-profile"]
    process = subprocess.Popen([*cli.command, *args], env=cli.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    committed = 0
    while committed < 3:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "ingest did not commit 3 files in time"
        time.sleep(0.2)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as probe:
                    committed = probe.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
            except sqlite3.OperationalError:
                continue
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    store = SQLiteStore(db, 384)
    assert store.integrity() == []
    sources = store.sources("ada")
    assert 3 <= len(sources) < 40
    with sqlite3.connect(db) as probe:
        per_source = dict(probe.execute("SELECT source, COUNT(*) FROM memories GROUP BY source").fetchall())
    assert per_source == {s.key: s.memories for s in sources}  # whole files only
    store.close()
    rerun = cli.run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({len(sources)} already ingested)" in rerun.stderr
    store = SQLiteStore(db, 384)
    assert len(store.sources("ada")) == 40 and store.integrity() == []
    assert store.count("ada") == sum(s.memories for s in store.sources("ada"))


def test_cli_list_and_forget(tmp_path, cli, word_hash_embedder):
    store = tmp_path / "m.db"
    memory = AvatarMemory(SQLiteStore(store, 384), word_hash_embedder(384))
    (tmp_path / "a.txt").write_text("First words. " + "Second words here, and more of them to fill a chunk. " * 8)
    memory.ingest("ada", [tmp_path / "a.txt"])
    memory.remember("ada", "I prefer green tea.")
    memory.close()
    assert json.loads(cli.invoke("avatar", "list", "--store", str(store), "--json").stdout) == {
        "avatar": "ada", "memories": 3, "facts": 1}  # fmt: skip
    fact = json.loads(cli.invoke("avatar", "list", "ada", "--kind", "fact", "--store", str(store), "--json").stdout)
    assert fact["text"] == "I prefer green tea." and fact["kind"] == "fact"
    assert (
        "1 memories retracted" in cli.invoke("avatar", "forget", "ada", str(fact["id"]), "--store", str(store)).stderr
    )
    history = cli.invoke("avatar", "memories", "ada", "--history", str(fact["id"]), "--store", str(store), "--json")
    assert [json.loads(line)["status"] for line in history.stdout.splitlines()] == ["retracted"]
    undone = json.loads(cli.invoke("avatar", "undo", "ada", str(fact["id"]), "--store", str(store), "--json").stdout)
    assert undone["action"] == "restored" and undone["text"] == "I prefer green tea."
    now = cli.invoke("avatar", "memories", "ada", "--kind", "fact", "--store", str(store), "--json").stdout
    assert [(r["text"], r["replaces"]) for r in map(json.loads, now.splitlines())] == [
        ("I prefer green tea.", fact["id"])
    ]
    assert (
        cli.invoke("avatar", "memories", "ada", "--as-of", "2000-01-01", "--store", str(store), "--json").stdout == ""
    )
    for bad in (["--as-of", "last tuesday"], ["--history", "1", "--as-of", "2024-01-01"], ["--history", "999"]):
        wrong = cli.invoke("avatar", "memories", "ada", *bad, "--store", str(store))
        assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    refused = cli.invoke("avatar", "forget", "ada", "--store", str(store))
    assert refused.returncode == 2 and "give memory ids" in refused.stderr
    cli.invoke("avatar", "forget", "ada", "--all", "--store", str(store))
    assert cli.invoke("avatar", "list", "--store", str(store), "--json").stdout == ""


def test_sft_data_export(memory, tmp_path):
    from personalm.avatars.adapter_data import training_examples

    (tmp_path / "talk.jsonl").write_text(
        '{"speaker": "Bob", "text": "Tea or coffee?"}\n{"speaker": "Ada", "text": "Tea, always."}\n'
    )
    (tmp_path / "essay.txt").write_text("Engines weave patterns. They compute what we cannot. Single.")
    memory.ingest("ada", [tmp_path / "talk.jsonl", tmp_path / "essay.txt"])
    rows = list(training_examples(memory, "ada"))
    pairs = [(r["messages"][1]["content"], r["messages"][2]["content"]) for r in rows]
    assert ("Tea or coffee?", "Tea, always.") in pairs
    assert any(
        user.endswith('"Engines weave patterns."') and reply == "They compute what we cannot. Single."
        for user, reply in pairs
    )
    assert (
        all(r["messages"][0]["role"] == "system" for r in rows) and len(list(training_examples(memory, "ada", 1))) == 1
    )
