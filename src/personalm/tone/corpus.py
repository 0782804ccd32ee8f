"""A source of facts: any text corpus cut into short passages, split into train, validation and
test by document so no held-out question comes from a document seen in training, and settings are
chosen on validation documents, never on the test ones."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from personalm.corpus import read_texts
from personalm.errors import PersonalmError

_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_HEADER = re.compile(r"^[A-Z][\w ]{0,30}:\s*\S.{0,80}$")


@dataclass(frozen=True)
class Passage:
    id: str
    doc: str
    text: str
    split: str


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
    for doc, text in read_texts(source, text_column, whole_file=True):
        chunks = passages(text, words)
        order = random.Random(f"{seed}:{doc}").sample(range(len(chunks)), len(chunks))
        split = split_of(doc, test_fraction, seed, val_fraction)
        out += [Passage(f"{doc}#{i}", doc, chunks[i], split) for i in sorted(order[:per_doc])]
    if not out:
        raise PersonalmError("no passage of at least 25 words in the corpus", source=str(source))
    random.Random(seed).shuffle(out)
    return out
