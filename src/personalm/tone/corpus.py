"""A source of facts: any text corpus cut into short passages, split into train, validation and
test by document so no held-out question comes from a document seen in training, and settings are
chosen on validation documents, never on the test ones."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from personalm.errors import PersonalmError
from personalm.tables import read_rows

TEXT_SUFFIXES = {".txt", ".md"}
_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_HEADER = re.compile(r"^[A-Z][\w ]{0,30}:\s*\S.{0,80}$")


@dataclass(frozen=True)
class Passage:
    id: str
    doc: str
    text: str
    split: str


def documents(source: str | Path, text_column: str = "text") -> list[tuple[str, str]]:
    """(document id, text) from a folder of .txt/.md (recursive), one such file, or a JSONL /
    Parquet table with a text column (row id from an `id` column, else the line number)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise PersonalmError("no .txt or .md files in this folder", source=str(path))
        return [(str(p.relative_to(path)), _read_text(p)) for p in files]
    if path.suffix.lower() in TEXT_SUFFIXES:
        if not path.is_file():
            raise PersonalmError("no such file", source=str(path))
        return [(path.name, _read_text(path))]
    docs = []
    for line, row in read_rows(path):
        text = row.get(text_column)
        if not isinstance(text, str):
            raise PersonalmError(f"expected a string column '{text_column}'", source=str(path), line=line)
        docs.append((str(row.get("id", line)), text))
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PersonalmError(f"not UTF-8 text (byte {err.start})", source=str(path)) from None


def passages(text: str, words: int = 60, min_words: int = 25) -> list[str]:
    """Consecutive whole sentences grouped to about `words` words; a short header line
    ("President: Name", "Title: ...") is not a fact and is skipped."""
    lines = [line for line in text.splitlines() if line.strip() and not _HEADER.match(line.strip())]
    sentences = [s.strip() for s in _SENTENCES.split(" ".join(" ".join(lines).split())) if s.strip()]
    out, current = [], []
    for sentence in sentences:
        current.append(sentence)
        if sum(len(s.split()) for s in current) >= words:
            out.append(" ".join(current))
            current = []
    if current and sum(len(s.split()) for s in current) >= min_words:
        out.append(" ".join(current))
    return [p for p in out if min_words <= len(p.split()) <= 3 * words]


def split_of(doc: str, test_fraction: float, seed: int, val_fraction: float = 0.0) -> str:
    """A document's split from a hash of its id: adding a validation share leaves the test
    documents as they were (validation takes the hash range just above the test range)."""
    position = int(hashlib.sha256(f"{seed}:{doc}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"


def load_passages(
    source: str | Path,
    words: int = 60,
    per_doc: int = 2,
    test_fraction: float = 0.15,
    seed: int = 0,
    text_column: str = "text",
    val_fraction: float = 0.0,
) -> list[Passage]:
    """Up to `per_doc` passages per document (spread over many documents), in a seeded order.
    Each document's picks depend only on the seed and its own id, so raising `per_doc` keeps the
    earlier picks and adding documents changes no other document's."""
    out = []
    for doc, text in documents(source, text_column):
        chunks = passages(text, words)
        order = random.Random(f"{seed}:{doc}").sample(range(len(chunks)), len(chunks))
        split = split_of(doc, test_fraction, seed, val_fraction)
        out += [Passage(f"{doc}#{i}", doc, chunks[i], split) for i in sorted(order[:per_doc])]
    if not out:
        raise PersonalmError("no passage of at least 25 words in the corpus", source=str(source))
    random.Random(seed).shuffle(out)
    return out
