"""Persona files in and out: JSONL or Parquet with a `persona` column (and optionally `id`).

Ids are strings; a file without ids gets its line (JSONL) or row (Parquet) numbers. Every
problem is one PersonalmError naming the file and the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
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
    check_dedup_outputs(path)
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


def manifest_path(out: str | Path) -> Path:
    """Where dedup records the run that wrote OUTPUT and its sidecar: OUTPUT's stem + `.dedup.json`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.dedup.json")


def write_dedup_outputs(out: str | Path, kept: pa.Table, dropped: pa.Table) -> Path:
    """Write the kept rows to OUT and the dropped rows to its sidecar as one commit; returns the sidecar.

    Two renames cannot be one atomic step, so the commit is made checkable: both tables are written
    under temporary names, then a manifest naming both files with their SHA-256 replaces the old one,
    and only then are the two files renamed into place. A kill before the manifest leaves the previous
    pair and its manifest as they were; a kill after it leaves files the manifest does not describe,
    which `check_dedup_outputs` (and so every `read_personas`) refuses until dedup is re-run."""
    out = Path(out)
    run = secrets.token_hex(8)
    targets = {sidecar_path(out): dropped, out: kept}
    pending = {path: path.with_name(f".{path.name}.{run}.pending{path.suffix}") for path in targets}
    try:
        for path, table in targets.items():
            write_table(pending[path], table)
        files = {path.name: _sha256(pending[path]) for path in targets}
        _write_json(manifest_path(out), {"run": run, "sha256": files})
        for path in targets:
            os.replace(pending[path], path)
    finally:
        for temporary in pending.values():
            temporary.unlink(missing_ok=True)
    return sidecar_path(out)


def check_dedup_outputs(path: str | Path) -> None:
    """Refuse a dedup output (kept rows or their sidecar) that its run's manifest does not describe:
    the kept rows and dropped rows would come from two different runs. Files without a manifest
    (not written by dedup, or by an older personalm) are not checked."""
    path = Path(path)
    candidates = [path]
    if path.stem.endswith(".dropped"):  # a sidecar: the manifest sits beside its kept file
        candidates.append(path.with_name(path.stem.removesuffix(".dropped") + path.suffix))
    for kept in candidates:
        manifest = manifest_path(kept)
        if not manifest.is_file():
            continue
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["sha256"]
        except (ValueError, KeyError, TypeError):
            raise PersonalmError(
                "unreadable dedup manifest; re-run `personalm personas dedup`", source=str(manifest)
            ) from None
        if path.name not in files:
            continue
        for name, digest in files.items():
            member = path.with_name(name)
            if not member.is_file() or _sha256(member) != digest:
                raise PersonalmError(
                    f"not the file the last dedup run wrote (see {manifest.name}): that run was interrupted or the "
                    f"file changed since; re-run `personalm personas dedup` (or delete {manifest.name} to use the "
                    "files as they are)",
                    source=str(member),
                )
        return


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        temporary.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
