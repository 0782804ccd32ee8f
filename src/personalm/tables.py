"""Datasets as files: read rows from JSONL / Parquet / text with precise errors, write atomically.

Every stage exchanges data this way so any step can be re-run, inspected with pandas or duckdb, or
swapped for another tool. A write goes to a temporary file renamed into place at the end, so a
crash never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from personalm.errors import PersonalmError

READ_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
WRITE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}

Row = dict[str, Any]


def input_format(path: str | Path, declared: str | None = None) -> str:
    if declared:
        return declared
    if str(path) == "-":
        return "text"
    fmt = READ_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise PersonalmError(f"unsupported input type; expected one of {', '.join(READ_FORMATS)}", source=str(path))
    return fmt


def read_rows(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int, Row]]:
    """Yield (line number or row number, row). Text files give {"text": line} per non-empty line."""
    fmt = input_format(path, fmt)
    source = "<stdin>" if str(path) == "-" else str(path)
    if str(path) != "-" and not Path(path).is_file():
        raise PersonalmError("no such file", source=source)
    if fmt == "parquet":
        yield from _read_parquet(Path(path))
        return
    for number, line in _text_lines(path, source):
        if not line.strip():
            continue
        if fmt == "text":
            yield number, {"text": line.rstrip("\n")}
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PersonalmError(
                f"invalid JSON ({err.msg} at column {err.colno})", source=source, line=number
            ) from None
        if not isinstance(row, dict):
            raise PersonalmError("expected a JSON object per line", source=source, line=number)
        yield number, row


def _text_lines(path: str | Path, source: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file or stdin, decoded line by line so that a bad byte is
    reported on its own line (stdin too: its text layer would let bad bytes in as surrogates)."""
    if str(path) == "-":
        handle = getattr(sys.stdin, "buffer", None)
        if handle is None:  # a text-only stream (e.g. io.StringIO): already decoded
            yield from enumerate(sys.stdin, start=1)
            return
        yield from _decode_lines(handle, source)
        return
    with open(path, "rb") as handle:
        yield from _decode_lines(handle, source)


def _decode_lines(handle: IO[bytes], source: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(handle, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PersonalmError(
                f"not UTF-8 text ({err.reason} at byte {err.start + 1} of the line)", source=source, line=number
            ) from None
        yield number, (line[:-2] + "\n" if line.endswith("\r\n") else line)


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (a template, a description); a missing file, a folder or a bad
    byte is one PersonalmError naming the file (and the line of the bad byte)."""
    source = str(path)
    if not Path(path).is_file():
        raise PersonalmError("no such file", source=source)
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PersonalmError(
            f"not UTF-8 text ({err.reason} at byte {err.start + 1})", source=source, line=line
        ) from None


def _read_parquet(path: Path) -> Iterator[tuple[int, Row]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise PersonalmError(f"not a readable Parquet file ({err})", source=str(path)) from None
    yield from enumerate(table.to_pylist(), start=1)


def require(row: Row, column: str, kind: type | tuple[type, ...], source: str, line: int) -> Any:
    """The value of a required column, or one clear error naming file, row and expectation."""
    value = row.get(column)
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        got = "missing" if column not in row else f"got {type(value).__name__}"
        raise PersonalmError(f"expected column '{column}' to hold a {names} ({got})", source=source, line=line)
    return value


def output_format(path: str | Path) -> str:
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise PersonalmError(f"unsupported output type; expected one of {', '.join(WRITE_FORMATS)}", source=str(path))
    return fmt


def write_rows(path: str | Path, rows: Iterable[Row]) -> int:
    """Write rows atomically as JSONL or Parquet (by extension); returns the number written."""
    path = Path(path)
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    # Not mkstemp: its private 0600 mode would end up on the dataset; 0666 here honours the umask.
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if fmt == "parquet":
            try:
                table = pa.Table.from_pylist(rows)
            except pa.ArrowException as err:
                raise PersonalmError(f"cannot write these rows as Parquet ({err})", source=str(path)) from None
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(rows)
