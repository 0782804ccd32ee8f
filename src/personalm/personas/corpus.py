"""Texts to mine personas from: a folder of .txt/.md files, or a JSONL/Parquet/text file."""

from __future__ import annotations

from pathlib import Path

from personalm.errors import PersonalmError
from personalm.tables import input_format, read_rows, require

TEXT_SUFFIXES = (".txt", ".md")


def read_corpus(path: str | Path, column: str = "text") -> list[tuple[str, str]]:
    """(text id, text) pairs. A folder gives one text per file (id: its relative path); a .txt or
    .md file one text per line; JSONL/Parquet one per row (id: the `id` column or line number)."""
    path = Path(path)
    texts: list[tuple[str, str]] = []
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
            try:
                text = file.read_bytes().decode("utf-8")
            except UnicodeDecodeError as err:
                raise PersonalmError(f"not UTF-8 text (byte {err.start + 1})", source=str(file)) from None
            if text.strip():
                texts.append((file.relative_to(path).as_posix(), text))
    else:
        fmt = input_format(path)
        for line, row in read_rows(path, fmt):
            text = row["text"] if fmt == "text" else require(row, column, str, str(path), line)
            if text.strip():
                texts.append((str(row.get("id", line)), text))
    if not texts:
        raise PersonalmError("no texts found (empty input)", source=str(path))
    ids = [i for i, _ in texts]
    if len(set(ids)) != len(ids):
        raise PersonalmError("text ids must be unique", source=str(path))
    return texts
