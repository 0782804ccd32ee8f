"""The Persona Hub: build from files (lineage, duplicate counts), filters, seeded sample, search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalm.errors import PersonalmError
from personalm.personas import hub

PERSONAS = [
    {"id": "n1", "persona": "A night-shift nurse in a children's hospital", "origin": "text", "source_text_id": "t1"},
    {"id": "c1", "persona": "A pastry chef who runs a small bakery in Lyon", "origin": "text", "source_text_id": "t2"},
    {
        "id": "p1",
        "persona": "A retired physics teacher who builds telescopes",
        "origin": "text",
        "source_text_id": "t3",
    },
    {
        "id": "n2",
        "persona": "The nurse's teenage son who helps at the hospital on weekends",
        "origin": "expansion",
        "parent_id": "n1",
        "relation": "family",
        "round": 1,
        "source_text_id": "t1",
    },
]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def table(tmp_path: Path):
    source = write(tmp_path / "kept.jsonl", PERSONAS)
    write(tmp_path / "kept.dropped.jsonl", [{"id": "x", "persona": "a nurse", "duplicate_of": "n1"}] * 1)
    return hub.build([source], embed=False)


def test_build_fills_lineage_and_counts_duplicates(table):
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["n2"]["parent_id"] == "n1" and rows["n2"]["round"] == 1
    assert rows["c1"]["parent_id"] is None
    assert rows["n1"]["duplicates"] == 1 and rows["c1"]["duplicates"] == 0


def test_ids_must_be_unique_across_files(tmp_path: Path):
    a = write(tmp_path / "a.jsonl", PERSONAS[:1])
    b = write(tmp_path / "b.jsonl", PERSONAS[:1])
    with pytest.raises(PersonalmError, match="appears in more than one input"):
        hub.build([a, b], embed=False)


def test_filters_and_seeded_sample(table):
    assert hub.sample(table, 10, 0, ["origin=expansion"]).column("id").to_pylist() == ["n2"]
    assert hub.sample(table, 10, 0, ["persona~NURSE"]).column("id").to_pylist() == ["n1", "n2"]
    first = hub.sample(table, 2, seed=7).column("id").to_pylist()
    assert first == hub.sample(table, 2, seed=7).column("id").to_pylist()
    assert len(set(first)) == 2
    with pytest.raises(PersonalmError, match="filter 'age=3'"):
        hub.sample(table, 1, 0, ["age=3"])


def test_search_ranks_by_meaning(tmp_path: Path, embedder):
    path = tmp_path / "hub.parquet"
    hub.save(path, hub.build([write(tmp_path / "p.jsonl", PERSONAS)]))
    loaded = hub.load(path)
    found = hub.search(loaded, "someone who bakes bread and cakes", k=2)
    assert found.column("id").to_pylist()[0] == "c1"
    assert found.column("score").to_pylist()[0] > found.column("score").to_pylist()[1]
    assert hub.search(loaded, "hospital", k=5, filters=["origin=expansion"]).column("id").to_pylist() == ["n2"]
