"""The memory store contract, run on SQLite and on PostgreSQL + pgvector."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.avatars.store import NewMemory, Profile, SourceRecord
from personalm.errors import PersonalmError


@pytest.fixture
def store(make_store, unit):
    return make_store(unit.dim)


@pytest.fixture
def mem(unit):
    def make(text: str, seed: int, kind: str = "utterance", **kw) -> NewMemory:
        return NewMemory(kind=kind, text=text, key=f"{kind}:{text}", embedding=unit(seed), **kw)

    return make


TEXTS = [
    "We choose to go to the moon in this decade.",
    "The economy grew and jobs returned to our towns.",
    "Our soldiers served with honor overseas.",
    "I prefer green tea in the morning.",
]


def test_add_is_idempotent_by_key_and_records_sources(store, mem):
    ids = store.add("ada", [mem(t, i) for i, t in enumerate(TEXTS)], SourceRecord("src1", "a.txt", 4))
    assert len(ids) == 4 and store.count("ada") == 4
    assert store.add("ada", [mem(TEXTS[0], 0), mem("A new line.", 9)]) != []
    assert store.count("ada") == 5
    assert store.add("ada", [mem(TEXTS[1], 1)]) == []
    assert store.has_source("ada", "src1") and not store.has_source("bob", "src1")
    assert [m.text for m in store.get("ada", ids[:2])] == TEXTS[:2]


def test_keyword_and_vector_search(store, mem, unit):
    ids = store.add("ada", [mem(t, i) for i, t in enumerate(TEXTS)])
    hits = store.keyword_search("ada", "When do we go to the moon?", 3)
    assert hits[0][0] == ids[0]
    assert store.keyword_search("ada", "the of and", 3) == [] or all(i in ids for i, _ in hits)
    dense = store.vector_search("ada", unit(2), 2)
    assert dense[0][0] == ids[2] and dense[0][1] == pytest.approx(1.0, abs=1e-4)
    assert dense[0][1] >= dense[1][1]


def test_kind_filter(store, mem, unit):
    ids = store.add("ada", [mem(TEXTS[3], 3, kind="fact"), mem(TEXTS[0], 0)])
    assert [i for i, _ in store.vector_search("ada", unit(3), 5, kinds=["utterance"])] == [ids[1]]
    assert [i for i, _ in store.keyword_search("ada", "tea morning", 5, kinds=["fact"])] == [ids[0]]
    assert [m.kind for m in store.list("ada", kind="fact")] == ["fact"]
    with pytest.raises(PersonalmError, match="unknown memory kind"):
        store.vector_search("ada", unit(3), 5, kinds=["secret"])


def test_strict_isolation_between_avatars(store, mem, unit):
    ada = store.add("ada", [mem(t, i) for i, t in enumerate(TEXTS)])
    bob = store.add("bob", [mem("Bob likes the moon too.", 0)])
    assert all(i in ada for i, _ in store.vector_search("ada", unit(0), 10))
    assert [i for i, _ in store.vector_search("bob", unit(0), 10)] == bob
    assert [i for i, _ in store.keyword_search("bob", "moon", 10)] == bob
    assert store.get("bob", ada) == [] and len(store.embeddings("bob", ada)) == 0
    assert store.delete("bob", ada) == 0 and store.count("ada") == 4
    assert store.update("bob", ada[0], mem("hijacked", 5)) is None
    assert (
        store.restore("bob", ada[0]) is None
        and store.history("bob", ada[0]) == []
        and store.head("bob", ada[0]) is None
    )
    assert store.get("ada", [ada[0]])[0].text == TEXTS[0] and store.history("ada", ada[0])[0].status == "current"
    assert store.delete_avatar("bob") == 1 and store.count("ada") == 4
    assert store.avatar_names() == ["ada"]


def test_update_and_delete_are_seen_by_searches(store, mem, unit):
    ids = store.add("ada", [mem(t, i) for i, t in enumerate(TEXTS)])
    store.vector_search("ada", unit(0), 1)  # warm any cache
    coffee = store.update("ada", ids[3], mem("I prefer black coffee now.", 42, kind="fact"))
    assert coffee not in ids and store.vector_search("ada", unit(42), 1)[0][0] == coffee
    assert store.keyword_search("ada", "coffee", 1)[0][0] == coffee
    assert store.keyword_search("ada", "green tea", 5) == []
    assert store.delete("ada", [ids[0]]) == 1 and store.delete("ada", [ids[0]]) == 0  # retracted once
    assert ids[0] not in [i for i, _ in store.vector_search("ada", unit(0), 10)]
    store.add("ada", [mem("Fresh words about rockets.", 77)])
    assert store.vector_search("ada", unit(77), 1)[0][1] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(store.embeddings("ada", [coffee])[0], unit(42), atol=1e-5)
    np.testing.assert_allclose(store.embeddings("ada", [ids[3]])[0], unit(3), atol=1e-5)  # the old version is kept


def test_update_onto_existing_text_merges_into_the_current_row(store, mem, unit):
    ids = store.add("ada", [mem(TEXTS[0], 0), mem(TEXTS[1], 1)])
    assert store.update("ada", ids[1], mem(TEXTS[0], 0)) == ids[0]
    assert store.count("ada") == 1
    old = store.get("ada", [ids[1]])[0]
    assert (old.status, old.superseded_by) == ("superseded", ids[0])
    assert [m.id for m in store.history("ada", ids[1])] == ids  # the row it merged into is in its history


def test_failed_add_leaves_nothing(store, mem, unit):
    bad = NewMemory(kind="utterance", text="bad", key="bad", embedding=np.ones(unit.dim + 1, dtype=np.float32))
    with pytest.raises(PersonalmError, match="dimensions"):
        store.add("ada", [mem(TEXTS[0], 0), bad], SourceRecord("s", "x", 2))
    assert store.count("ada") == 0 and not store.has_source("ada", "s")


def test_profile_round_trip(store):
    assert store.get_profile("ada") is None
    store.set_profile("ada", Profile("A careful speaker.", 12, extra={"model": "m"}))
    profile = store.get_profile("ada")
    assert (profile.text, profile.memory_count, profile.extra) == ("A careful speaker.", 12, {"model": "m"})


def test_bad_avatar_names_are_refused(store):
    for name in ["", "../etc", "a b", "x" * 65, "ada\n", "ada\r\n", "\nada"]:
        with pytest.raises(PersonalmError, match="avatar name"):
            store.count(name)


def test_integers_past_int64_are_refused_with_a_usable_error(store, mem, unit):
    ids = store.add("ada", [mem(TEXTS[0], 0)])
    huge = 2**70
    calls = [
        lambda: store.list("ada", offset=2**63),
        lambda: store.list("ada", limit=huge),
        lambda: store.delete("ada", [huge]),
        lambda: store.get("ada", [ids[0], -(2**63) - 1]),
        lambda: store.embeddings("ada", [huge]),
        lambda: store.update("ada", huge, mem("x", 1)),
        lambda: store.history("ada", huge),
        lambda: store.restore("ada", huge),
        lambda: store.vector_search("ada", unit(0), huge),
        lambda: store.keyword_search("ada", "moon", huge),
    ]
    for call in calls:
        with pytest.raises(PersonalmError, match="out of range"):
            call()
    assert store.count("ada") == 1 and store.list("ada", offset=2**63 - 1) == []


def test_sqlite_sees_writes_of_another_connection(tmp_path, mem, unit):
    from personalm.avatars.sqlite_store import SQLiteStore

    reader, writer = SQLiteStore(tmp_path / "m.db", unit.dim), SQLiteStore(tmp_path / "m.db", unit.dim)
    ids = writer.add("ada", [mem(TEXTS[0], 0)])
    assert reader.vector_search("ada", unit(0), 1)[0][0] == ids[0]
    more = writer.add("ada", [mem(TEXTS[1], 1)])
    assert reader.vector_search("ada", unit(1), 1)[0][0] == more[0]
    writer.delete("ada", more)
    assert [i for i, _ in reader.vector_search("ada", unit(1), 5)] == ids
    with pytest.raises(PersonalmError, match="64-d"):
        SQLiteStore(tmp_path / "m.db", 384)
    assert reader.integrity() == []
