"""Dedup's two outputs (kept rows, dropped rows) are one commit: a run killed between writing them
never leaves a pair from two runs that a reader accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from personalm.cli.app import main
from personalm.errors import PersonalmError
from personalm.personas import hub
from personalm.personas.io import read_personas
from personalm.tables import read_rows

FIRST = [
    {"id": "a", "persona": "A retired nurse who volunteers at a hospice."},
    {"id": "b", "persona": "a retired NURSE who volunteers at a hospice"},
    {"id": "c", "persona": "A software engineer who builds compilers."},
]
SECOND = [
    {"id": "x", "persona": "A beekeeper who sells honey at markets."},
    {"id": "y", "persona": "a BEEKEEPER who sells honey at markets"},
]


class Killed(KeyboardInterrupt):
    """Stands in for SIGKILL at one rename (KeyboardInterrupt: nothing in the CLI handles it as an error)."""


def dedup(tmp_path: Path, rows: list[dict]) -> int:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        main(["personas", "dedup", str(source), "-o", str(tmp_path / "kept.jsonl"), "--no-embedding"])
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def kill_at_rename(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Die when a file is renamed onto `target` (the name of a final output)."""
    real = os.replace

    def replace(src, dst) -> None:
        if Path(dst).name == target:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def ids(path: Path) -> list[str]:
    return [row["id"] for _, row in read_rows(path)]


def test_a_finished_run_reads_back_with_its_sidecar(tmp_path: Path) -> None:
    assert dedup(tmp_path, FIRST) == 0
    assert read_personas(tmp_path / "kept.jsonl").column("id").to_pylist() == ["a", "c"]
    table = hub.build([tmp_path / "kept.jsonl"], embed=False)
    assert table.column("duplicates").to_pylist() == [1, 0]


def test_kill_between_the_two_renames_is_detected(tmp_path: Path, monkeypatch, capsys) -> None:
    assert dedup(tmp_path, FIRST) == 0
    kill_at_rename(monkeypatch, "kept.jsonl")  # the sidecar is already renamed, kept is not
    assert dedup(tmp_path, SECOND) == 130
    monkeypatch.undo()
    # the files on disk really are from two runs: new dropped rows, old kept rows
    assert ids(tmp_path / "kept.jsonl") == ["a", "c"] and ids(tmp_path / "kept.dropped.jsonl") == ["y"]
    for path in (tmp_path / "kept.jsonl", tmp_path / "kept.dropped.jsonl"):
        with pytest.raises(PersonalmError, match="re-run `personalm personas dedup`"):
            read_personas(path)
    capsys.readouterr()
    assert main_code(["personas", "hub", str(tmp_path / "kept.jsonl"), "-o", str(tmp_path / "h.parquet"),
                      "--no-embed"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kept.jsonl: not the file the last dedup run wrote" in err
    assert dedup(tmp_path, SECOND) == 0  # re-running commits a consistent pair
    assert read_personas(tmp_path / "kept.jsonl").column("id").to_pylist() == ["x"]


def test_kill_before_any_rename_is_detected_and_a_kill_before_the_manifest_changes_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    assert dedup(tmp_path, FIRST) == 0
    kill_at_rename(monkeypatch, "kept.dedup.json")
    assert dedup(tmp_path, SECOND) == 130
    monkeypatch.undo()
    assert read_personas(tmp_path / "kept.jsonl").column("id").to_pylist() == ["a", "c"]  # the old pair, intact
    kill_at_rename(monkeypatch, "kept.dropped.jsonl")
    assert dedup(tmp_path, SECOND) == 130
    monkeypatch.undo()
    with pytest.raises(PersonalmError, match="interrupted"):
        read_personas(tmp_path / "kept.jsonl")
    assert not [p.name for p in tmp_path.iterdir() if ".pending" in p.name]


def test_files_without_a_manifest_are_read_as_before(tmp_path: Path) -> None:
    (tmp_path / "kept.jsonl").write_text(json.dumps(FIRST[0]) + "\n")
    (tmp_path / "kept.dropped.jsonl").write_text(json.dumps(FIRST[1] | {"duplicate_of": "a"}) + "\n")
    assert hub.build([tmp_path / "kept.jsonl"], embed=False).column("duplicates").to_pylist() == [1]


def main_code(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as done:
        return int(done.code or 0)
    return 0
