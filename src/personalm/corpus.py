"""THE reader of folders of text: persona mining, tone passages and avatar sources find and decode
their files here, so one set of suffixes, one decoding rule and one error form hold for all three.

Positions are 1-based, as editors show them: line 1 is a file's first line and byte 1 its first
byte, in error messages (`file:line: message`) and in the ids of rows read from a file.
Text is UTF-8; a leading byte-order mark is not part of it.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from personalm.errors import PersonalmError
from personalm.tables import input_format, read_rows, require

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
_BOM = b"\xef\xbb\xbf"


def files(folder: Path, suffixes: Collection[str] | None = None) -> list[Path]:
    """The files under `folder`, recursively and sorted; hidden ones (name starting with '.') are
    left out, and with `suffixes` so is every file whose suffix (any case) is not one of them."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and (suffixes is None or p.suffix.lower() in suffixes)
    )


def decode(data: bytes, source: str | Path) -> str:
    """UTF-8 text of a file's bytes; a bad byte fails with its line and its byte in the file."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = skip + err.start
        line = data.count(b"\n", 0, at) + 1
        raise PersonalmError(f"not UTF-8 text ({err.reason} at byte {at + 1})", source=str(source), line=line) from None


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PersonalmError("no such file", source=str(path)) from None
    except OSError as err:
        raise PersonalmError(f"cannot read ({err.strerror})", source=str(path)) from None


def read_text(path: str | Path) -> str:
    """A text file's content (newlines as written): a corpus file, a template, a description."""
    return decode(read_bytes(path), path)


def read_texts(path: str | Path, column: str = "text", whole_file: bool = False) -> list[tuple[str, str]]:
    """(text id, text) pairs, blank texts left out:
    * a folder: one text per text file (id: its path relative to the folder, with '/');
    * a JSONL/Parquet table: one per row, from `column` (id: the `id` column, else the line number);
    * one text file: one text per line (id: the line number), or the whole file as one text
      (id: the file name) with `whole_file`."""
    path = Path(path)
    if path.is_dir():
        found = files(path, TEXT_SUFFIXES)
        if not found:
            raise PersonalmError(f"no {' or '.join(TEXT_SUFFIXES)} files in this folder", source=str(path))
        texts = [(file.relative_to(path).as_posix(), read_text(file)) for file in found]
    elif whole_file and path.suffix.lower() in TEXT_SUFFIXES:
        texts = [(path.name, read_text(path))]
    else:
        fmt = input_format(path)
        texts = [
            (str(row.get("id", line)), row["text"] if fmt == "text" else require(row, column, str, str(path), line))
            for line, row in read_rows(path, fmt)
        ]
    texts = [(i, t) for i, t in texts if t.strip()]
    if not texts:
        raise PersonalmError("no texts found (empty input)", source=str(path))
    ids = [i for i, _ in texts]
    if len(set(ids)) != len(ids):
        raise PersonalmError("text ids must be unique", source=str(path))
    return texts
