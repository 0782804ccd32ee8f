"""Split a person's text into memory-sized chunks on sentence boundaries.

Defaults follow PersonaAI's finding that short chunks retrieve best (≤ 200 characters there):
300 characters keeps a whole sentence or two of someone's voice (a useful style exemplar) and
25% overlap keeps a thought that crosses a boundary findable from either side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from personalm.errors import PersonalmError

SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class Chunking:
    max_chars: int = 300
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.max_chars < 40:
            raise PersonalmError(f"chunk size {self.max_chars}: use at least 40 characters")
        if not 0 <= self.overlap < 0.9:
            raise PersonalmError(f"chunk overlap {self.overlap}: use a fraction in [0, 0.9)")


def sentences(text: str) -> list[str]:
    """Sentences (or paragraphs without end punctuation), whitespace-normalized."""
    parts = (" ".join(p.split()) for p in SENTENCE_END.split(text))
    return [p for p in parts if p]


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than a chunk is cut at word boundaries."""
    pieces, current = [], ""
    for word in sentence.split(" "):
        if current and len(current) + 1 + len(word) > max_chars:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
        if len(current) > max_chars:  # one word longer than a chunk: cut it, keeping 1..max_chars chars
            whole = (len(current) - 1) // max_chars * max_chars
            pieces += [current[i : i + max_chars] for i in range(0, whole, max_chars)]
            current = current[whole:]
    return pieces + ([current] if current else [])


def chunk_text(text: str, chunking: Chunking = Chunking()) -> list[str]:
    """Pack whole sentences into chunks of at most max_chars; each chunk starts with the last
    sentences of the previous one, up to overlap × max_chars characters of them."""
    units = [piece for s in sentences(text) for piece in _split_long(s, chunking.max_chars)]
    chunks: list[str] = []
    current: list[str] = []
    budget = int(chunking.max_chars * chunking.overlap)
    for unit in units:
        if current and len(" ".join([*current, unit])) > chunking.max_chars:
            chunks.append(" ".join(current))
            carried: list[str] = []
            for previous in reversed(current):
                if len(" ".join([previous, *carried, unit])) > chunking.max_chars or (
                    len(" ".join([previous, *carried])) > budget
                ):
                    break
                carried.insert(0, previous)
            current = carried
        current.append(unit)
    if current and (not chunks or " ".join(current) != chunks[-1]):
        chunks.append(" ".join(current))
    return chunks
