"""Checks of a command's input folders that must run before any model loads: a typo in --data
should cost one line on stderr, not a model load (or a benchmark run) first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from personalm.corpus import read_text
from personalm.errors import PersonalmError
from personalm.paths import data_dir
from personalm.tables import read_rows

PERSONAS_FILE = "personahub/tool_personas.jsonl"
CHECKED_AS_TEXT = {".txt", ".md", ".markdown", ".csv", ".json"}  # data files read whole as UTF-8


def data_folder(
    data: Path | None, required: Sequence[str] = (), optional: Sequence[str] = (), fallback: bool = False
) -> Path:
    """The data folder of a study or benchmark (--data, else PERSONALM_DATA or ../shared/data), with
    every `required` entry present and every named text file (required, or optional when present)
    readable: JSONL line by line, other text as UTF-8; a named folder is checked file by file.
    `fallback`: the command has built-in data, so a missing default folder is fine (a given one is not)."""
    folder = data or data_dir()
    if not folder.is_dir():
        if fallback and data is None:
            return folder
        raise PersonalmError("no such data folder (pass --data or set PERSONALM_DATA)", source=str(folder))
    for name in required:
        if not (folder / name).exists():
            raise PersonalmError(
                "no such file or folder (pass --data or set PERSONALM_DATA)", source=str(folder / name)
            )
    for name in [*required, *optional]:
        path = folder / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in (f for f in files if f.is_file()):
            _check_text(file)
    return folder


def _check_text(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for _ in read_rows(path):
            pass
    elif suffix in CHECKED_AS_TEXT:
        read_text(path)
