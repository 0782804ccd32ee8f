"""Persona files in and out: JSONL or Parquet with a `persona` column (and optionally `id`).

Ids are strings; a file without ids gets its line (JSONL) or row (Parquet) numbers. Every
problem is one PersonalmError naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from personalm.errors import PersonalmError
from personalm.tables import input_format, read_rows, require, write_rows

TEXT_COLUMN = "persona"


def read_personas(path: str | Path, column: str = TEXT_COLUMN) -> pa.Table:
    """All rows with `id` (string, unique) and `column` (non-empty string) checked."""
    source = str(path)
    fmt = input_format(path)
    if fmt not in {"jsonl", "parquet"}:
        raise PersonalmError(f"expected a .jsonl or .parquet file with a '{column}' column", source=source)
    rows = []
    seen: dict[str, int] = {}
    for line, row in read_rows(path, fmt):
        require(row, column, str, source, line)
        row_id = str(row["id"]) if row.get("id") is not None else str(line)
        if row_id in seen:
            raise PersonalmError(f"duplicate id '{row_id}' (first on line {seen[row_id]})", source=source, line=line)
        seen[row_id] = line
        rows.append(row | {"id": row_id})
    if not rows:
        raise PersonalmError("no personas found (empty input)", source=source)
    columns = list(dict.fromkeys(key for row in rows for key in row))  # rows may differ in keys
    try:
        return pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows])
    except pa.ArrowException as err:
        raise PersonalmError(f"rows have inconsistent column types ({err})", source=source) from None


def sidecar_path(out: str | Path) -> Path:
    """Where dedup writes the dropped rows: OUTPUT's stem + `.dropped` + OUTPUT's suffix."""
    out = Path(out)
    return out.with_name(f"{out.stem}.dropped{out.suffix}")


def write_table(path: str | Path, table: pa.Table) -> int:
    """Atomic JSONL/Parquet write of an Arrow table (through personalm.tables)."""
    return write_rows(path, table.to_pylist())
