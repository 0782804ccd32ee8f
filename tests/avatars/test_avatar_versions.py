"""Versioned memory on both stores: updates supersede, deletes retract, nothing is ever lost (also
across a kill -9 mid-write), `as_of` reads the past, histories and undo, and stores written
before versions were kept migrate on open."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from personalm.avatars.api import AvatarMemory
from personalm.avatars.store import BEFORE_VERSIONS, NewMemory
from personalm.errors import PersonalmError

DATA = Path(__file__).parent / "data"


@pytest.fixture
def mem(unit):
    def make(text: str, seed: int | None = None, kind: str = "fact", **kw) -> NewMemory:
        seed = seed if seed is not None else sum(map(ord, text))
        return NewMemory(kind=kind, text=text, key=f"{kind}:{text}", embedding=unit(seed), **kw)

    return make


def texts(memories) -> list[str]:
    return [m.text for m in memories]


def test_update_supersedes_and_as_of_reads_the_past(make_store, mem, clock, unit):
    store = make_store(unit.dim, clock)
    first = clock.tick()  # each change happens at the clock's time
    tea, paris = store.add("ada", [mem("I prefer tea.", origin="chat: I prefer tea.", rule="new fact"),
                                   mem("I live in Paris.")])  # fmt: skip
    second = clock.tick()
    coffee = store.update("ada", tea, mem("I prefer coffee now.", origin="chat: coffee", rule="same slot"))
    now = clock.tick()
    assert store.delete("ada", [paris], "chat: forget Paris", "asked to forget") == 1
    assert texts(store.list("ada")) == ["I prefer coffee now."] and store.count("ada") == 1
    assert store.list("ada", as_of=first - 1) == [] and store.count("ada", as_of=first - 1) == 0
    assert texts(store.list("ada", as_of=first)) == ["I prefer tea.", "I live in Paris."]
    assert texts(store.list("ada", as_of=second)) == ["I live in Paris.", "I prefer coffee now."]
    assert store.count("ada", as_of=now) == 1
    # searches read the same moments
    assert [i for i, _ in store.vector_search("ada", mem("I prefer tea.").embedding, 5, as_of=first)][0] == tea
    assert tea not in [i for i, _ in store.vector_search("ada", mem("I prefer tea.").embedding, 5)]
    assert [i for i, _ in store.keyword_search("ada", "Paris", 5, as_of=second)] == [paris]
    assert store.keyword_search("ada", "Paris", 5) == []
    old, new = store.get("ada", [tea, coffee])
    assert (old.status, old.superseded_by, old.ended_at, old.end_rule) == ("superseded", coffee, second, "same slot")
    assert (new.status, new.replaces, new.chain, new.created_at) == ("current", tea, tea, second)
    gone = store.get("ada", [paris])[0]
    assert (gone.status, gone.end_origin, gone.end_rule) == ("retracted", "chat: forget Paris", "asked to forget")
    history = store.history("ada", coffee)
    assert [(m.text, m.status, m.origin, m.rule) for m in history] == [
        ("I prefer tea.", "superseded", "chat: I prefer tea.", "new fact"),
        ("I prefer coffee now.", "current", "chat: coffee", "same slot"),
    ]
    assert store.history("ada", tea) == history
    with pytest.raises(PersonalmError, match="as_of"):
        store.list("ada", as_of=float("nan"))


def test_retracted_lists_what_was_taken_back_by_then(make_store, mem, clock, unit):
    store = make_store(unit.dim, clock)
    clock.tick()
    chess, tea, paris = store.add("ada", [mem("I play chess."), mem("I prefer tea."), mem("I live in Paris.")])
    store.update("ada", tea, mem("I prefer coffee."))  # superseded, not taken back
    first = clock.tick()
    store.delete("ada", [chess], "chat: forget chess", "asked to forget")
    second = clock.tick()
    store.delete("ada", [paris])
    assert texts(store.retracted("ada")) == ["I play chess.", "I live in Paris."]
    assert texts(store.retracted("ada", as_of=first)) == ["I play chess."]
    assert store.retracted("ada", as_of=first - 1) == [] and store.retracted("ada", "utterance") == []
    assert texts(store.retracted("ada", "fact", second)) == ["I play chess.", "I live in Paris."]
    assert store.retracted("bob") == []


def test_a_value_can_come_back_and_duplicates_record_nothing(make_store, mem, clock, unit):
    store = make_store(unit.dim, clock)
    (tea,) = store.add("ada", [mem("I prefer tea.")])
    assert store.add("ada", [mem("I prefer tea.")]) == []  # already current: nothing recorded
    assert store.update("ada", tea, mem("I prefer tea.")) == tea  # the same words: nothing recorded
    clock.tick()
    coffee = store.update("ada", tea, mem("I prefer coffee."))
    clock.tick()
    tea_again = store.update("ada", coffee, mem("I prefer tea."))  # the old words, as a new version
    assert tea_again not in (tea, coffee) and texts(store.list("ada")) == ["I prefer tea."]
    assert [m.status for m in store.history("ada", tea)] == ["superseded", "superseded", "current"]
    assert store.update("ada", tea, mem("I prefer milk.")) is None  # only a current memory can be superseded
    assert len(store.history("ada", tea)) == 3


def test_restore_and_head(make_store, mem, clock, unit):
    store = make_store(unit.dim, clock)
    a, b = store.add("ada", [mem("I play tennis."), mem("I own a boat.")])
    clock.tick()
    store.delete("ada", [a])
    assert store.head("ada").id == a and store.head("ada", b).id == b
    assert store.restore("ada", b) is None  # current: nothing to restore
    clock.tick()
    again = store.restore("ada", a, "told", "undo")
    assert again not in (a, b) and sorted(texts(store.list("ada"))) == ["I own a boat.", "I play tennis."]
    copy = store.get("ada", [again])[0]
    assert (copy.replaces, copy.chain, copy.rule) == (a, a, "undo")
    np.testing.assert_allclose(store.embeddings("ada", [again])[0], store.embeddings("ada", [a])[0], atol=1e-6)
    assert store.head("ada").id == again and store.head("ada", a).id == again


def test_undo_reverts_retracts_and_restores(make_store, mem, clock, unit):
    memory = AvatarMemory(make_store(unit.dim, clock))
    (tea,) = memory.store.add("ada", [mem("I prefer tea.")])
    clock.tick()
    coffee = memory.store.update("ada", tea, mem("I prefer coffee."))
    clock.tick()
    undone = memory.undo("ada")
    assert (undone.action, undone.memory_id) == ("reverted", coffee)
    assert texts(memory.list("ada")) == ["I prefer tea."] and undone.current not in (tea, coffee)
    clock.tick()
    redone = memory.undo("ada", tea)  # undoing the undo brings the update back
    assert redone.action == "reverted" and texts(memory.list("ada")) == ["I prefer coffee."]
    clock.tick()
    (boat,) = memory.store.add("ada", [mem("I own a boat.")])
    clock.tick()
    assert memory.undo("ada", boat).action == "retracted" and memory.count("ada") == 1
    clock.tick()
    restored = memory.undo("ada", boat)
    assert restored.action == "restored" and sorted(texts(memory.list("ada"))) == ["I own a boat.", "I prefer coffee."]
    assert [m.status for m in memory.history("ada", tea)] == ["superseded"] * 3 + ["current"]
    assert [m.rule for m in memory.history("ada", boat)] == ["", "undo"]
    with pytest.raises(PersonalmError, match="no memory 999"):
        memory.undo("ada", 999)
    with pytest.raises(PersonalmError, match="nothing to undo"):
        memory.undo("bob")


def test_no_stated_fact_is_ever_lost_under_random_changes(make_store, mem, clock, unit):
    """Random adds, updates (some onto text already current), deletes and restores: every version
    ever written is still there with its words, and the current view is exactly what the changes
    left."""
    store = make_store(unit.dim, clock)
    rng = random.Random(7)
    written: dict[int, str] = {}
    current: dict[str, int] = {}
    for step in range(160):
        clock.tick(1)
        op = rng.choice(["add", "add", "update", "update", "delete", "restore"])
        text = f"I like thing {rng.randrange(40)}."
        if op == "add" or not current:
            ids = store.add("ada", [mem(text)])
            assert bool(ids) == (text not in current)
            if ids:
                written[ids[0]], current[text] = text, ids[0]
        elif op == "update":
            old_text = rng.choice(sorted(current))
            new_id = store.update("ada", current[old_text], mem(text))
            if text == old_text:
                assert new_id == current[text]
                continue
            if text in current:
                assert new_id == current[text]  # merged into the row that already says it
            else:
                written[new_id], current[text] = text, new_id
            del current[old_text]
        elif op == "delete":
            gone = rng.choice(sorted(current))
            assert store.delete("ada", [current.pop(gone)]) == 1
        else:
            ended = [i for i, t in written.items() if t not in current]
            if ended:
                pick = rng.choice(ended)
                again = store.restore("ada", pick)
                written[again], current[written[pick]] = written[pick], again
        assert {m.text: m.id for m in store.list("ada", limit=1000)} == current, step
    assert {m.id: m.text for m in store.get("ada", sorted(written))} == written
    everything = {m.id for i in written for m in store.history("ada", i)}
    assert everything >= set(written)


WRITER = r"""
import random, sys
import numpy as np
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import NewMemory

store = SQLiteStore(sys.argv[1], dimension=8)
rng = random.Random(int(sys.argv[2]))
def fact(text):
    v = np.random.default_rng(len(text)).standard_normal(8).astype(np.float32)
    return NewMemory("fact", text, "fact:" + text, v / np.linalg.norm(v))
step = 0
while True:
    step += 1
    text = f"I said thing {sys.argv[2]}-{step}."
    current = [m.id for m in store.list("ada", limit=50, offset=rng.randrange(5))]
    if current and rng.random() < 0.4:
        new = store.update("ada", rng.choice(current), fact(text))
    elif current and rng.random() < 0.2:
        store.delete("ada", [rng.choice(current)])
        continue
    else:
        new = store.add("ada", [fact(text)] + [fact(f"{text} extra {i}") for i in range(rng.randrange(30))])[0]
    print(new, text, flush=True)
"""


def test_kill_minus_9_during_writes_loses_no_committed_fact(tmp_path):
    """A writer process is killed (SIGKILL) mid-write, three times over: every fact it reported
    committed is still stored with its words, the file passes integrity_check, and the store
    opens and takes writes again."""
    from personalm.avatars.sqlite_store import SQLiteStore

    path = tmp_path / "memory.db"
    told: dict[int, str] = {}
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(round_)], stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        lines = []
        deadline = time.monotonic() + 60
        while len(lines) < 40 + 20 * round_ and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for line in lines:
            memory_id, text = line.rstrip("\n").split(" ", 1)
            told[int(memory_id)] = text
        assert len(lines) >= 40, "the writer did not get going"
    store = SQLiteStore(path, dimension=8)
    assert store.integrity() == []
    stored = {m.id: m.text for m in store.get("ada", sorted(told))}
    assert stored == told
    assert all(any(v.id == i for v in store.history("ada", i)) for i in list(told)[:50])
    assert store.add("ada", [NewMemory("fact", "After the kills.", "k", np.ones(8, np.float32) / np.sqrt(8))])
    store.close()


def test_a_store_written_before_versions_migrates_on_open(tmp_path, unit):
    """tests/avatars/data/memory-v1.db was written by personalm at 378a0cf (ada: three ingested
    utterances, facts tea -> coffee (updated in place) and tennis (deleted), Paris; bob: one fact)."""
    from personalm.avatars.sqlite_store import SQLiteStore

    path = tmp_path / "memory.db"
    shutil.copy(DATA / "memory-v1.db", path)
    store = SQLiteStore(path, dimension=unit.dim)
    assert store.integrity() == [] and store.avatar_names() == ["ada", "bob"]
    facts = store.list("ada", kind="fact")
    assert texts(facts) == ["I prefer coffee now.", "I live in Paris."]
    assert all(m.status == "current" and m.rule == BEFORE_VERSIONS and m.chain == m.id for m in facts)
    utterance = store.list("ada", kind="utterance")[0]
    assert utterance.origin == "file ada.txt" and store.has_source("ada", "src1")
    assert store.keyword_search("ada", "moon", 5)[0][0] == utterance.id
    coffee = facts[0]
    tea = store.update("ada", coffee.id, NewMemory("fact", "I prefer tea.", "fact:I prefer tea.", unit(10)))
    assert [m.status for m in store.history("ada", tea)] == ["superseded", "current"]
    assert store.add("ada", [NewMemory("fact", "I prefer coffee now.", "fact:I prefer coffee now.", unit(20))])
    store.close()
    again = SQLiteStore(path, dimension=unit.dim)  # opening a migrated store changes nothing
    assert again.count("ada", kind="fact") == 3 and again.count("bob") == 1
    again.close()


OLD_PG = [
    "CREATE SCHEMA {s}",
    "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE {s}.avatars (name text PRIMARY KEY, profile text, profile_count int,"
    " profile_at double precision, profile_extra jsonb)",
    "CREATE TABLE {s}.memories (id bigserial PRIMARY KEY, avatar text NOT NULL, kind text NOT NULL, text text NOT NULL,"
    " source text NOT NULL DEFAULT '', context text NOT NULL DEFAULT '', ts double precision,"
    " created_at double precision NOT NULL, key text NOT NULL, embedding vector(64) NOT NULL,"
    " tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED, UNIQUE (avatar, key))",
    "CREATE INDEX memories_avatar_kind ON {s}.memories (avatar, kind)",
    "CREATE INDEX memories_tsv ON {s}.memories USING gin (tsv)",
    "CREATE TABLE {s}.sources (avatar text NOT NULL, key text NOT NULL, path text NOT NULL, memories int NOT NULL,"
    " ingested_at double precision NOT NULL, PRIMARY KEY (avatar, key))",
    "INSERT INTO {s}.meta VALUES ('dimension', '64')",
    "INSERT INTO {s}.avatars (name) VALUES ('ada')",
    "INSERT INTO {s}.sources VALUES ('ada', 'src1', 'ada.txt', 1, 1.0)",
]


def test_a_postgres_schema_written_before_versions_migrates_on_open(pg_dsn, unit):
    """The tables as personalm at 378a0cf created them, with two rows, then opened by this store."""
    import psycopg

    from personalm.avatars.pg_store import PostgresStore

    dsn, schema = pg_dsn, f"t_{uuid.uuid4().hex[:12]}"
    vector = "[" + ",".join(str(x) for x in unit(1).tolist()) + "]"
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for statement in OLD_PG:
            db.execute(statement.format(s=schema))
        for text, source in (("We go to the moon.", "src1"), ("I live in Paris.", "")):
            db.execute(f"INSERT INTO {schema}.memories (avatar, kind, text, source, created_at, key, embedding)"
                       " VALUES ('ada', 'fact', %s, %s, 1.0, %s, %s::vector)", (text, source, text, vector))  # fmt: skip
    store = PostgresStore(dsn, dimension=unit.dim, schema=schema)
    try:
        rows = store.list("ada")
        assert [(m.text, m.rule, m.origin) for m in rows] == [
            ("We go to the moon.", BEFORE_VERSIONS, "file ada.txt"),
            ("I live in Paris.", BEFORE_VERSIONS, ""),
        ]
        rome = store.update("ada", rows[1].id, NewMemory("fact", "I live in Rome.", "I live in Rome.", unit(2)))
        back = store.update("ada", rome, NewMemory("fact", "I live in Paris.", "I live in Paris.", unit(1)))
        assert [m.text for m in store.history("ada", back)] == [
            "I live in Paris.",
            "I live in Rome.",
            "I live in Paris.",
        ]
        store.close()
        store = PostgresStore(dsn, dimension=unit.dim, schema=schema)  # opening again changes nothing
        assert store.list("ada")[1].rule == "" and store.count("ada") == 2
    finally:
        store.drop_schema()
        store.close()
