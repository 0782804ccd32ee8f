"""Persona-chat (Synthetic-Persona-Chat CSV) → PerCE examples, split by conversation.

Each conversation has two speakers, each with persona lines. From one speaker's side, that
speaker's turns are the assistant's and the other's are the user's; the speaker's persona lines
are the profile. Training rows are windows of consecutive turns (every reply of the speaker in the
window is supervised); test rows are one reply each, with the turns before it as context. Train and
test never share a conversation.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path

from personalm.errors import PersonalmError

COLUMNS = {"user 1 personas": "1", "user 2 personas": "2"}
CONVERSATION = "Best Generated Conversation"
TURN = re.compile(r"^[\s*]*user\s*([12])\s*[:*]+\s*(.*?)[\s*]*$", re.IGNORECASE)
STAGE_DIRECTION = re.compile(r"^\s*(\[.*\]|[\s*]+)\s*$")


@dataclass
class Conversation:
    line: int
    personas: dict[str, list[str]]
    turns: list[tuple[str, str]]

    def persona(self, speaker: str) -> str:
        return "\n".join(self.personas[speaker])


def parse_turns(text: str) -> list[tuple[str, str]]:
    """(speaker, text) turns from `User 1: ...` lines; stage directions are skipped and other lines
    continue the turn before them."""
    turns: list[tuple[str, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or STAGE_DIRECTION.match(raw):
            continue
        match = TURN.match(raw)
        if match:
            if match.group(2):
                turns.append((match.group(1), match.group(2)))
        elif turns:
            speaker, said = turns[-1]
            turns[-1] = (speaker, f"{said}\n{raw.strip()}")
    return turns


def load_conversations(path: str | Path) -> list[Conversation]:
    """Every conversation of the CSV that has persona lines for both speakers and at least two turns."""
    source = str(path)
    if not Path(path).is_file():
        raise PersonalmError("no such file (persona-chat CSV expected)", source=source)
    conversations = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (*COLUMNS, CONVERSATION) if c not in (reader.fieldnames or [])]
        if missing:
            raise PersonalmError(f"missing column(s) {', '.join(repr(c) for c in missing)}", source=source, line=1)
        line = reader.line_num
        for row in reader:
            personas = {s: [p.strip() for p in (row[c] or "").splitlines() if p.strip()] for c, s in COLUMNS.items()}
            turns = parse_turns(row[CONVERSATION] or "")
            if all(personas.values()) and len(turns) >= 2:
                conversations.append(Conversation(line + 1, personas, turns))
            line = reader.line_num
    if not conversations:
        raise PersonalmError("no usable conversations", source=source)
    return conversations


def split(conversations: list[Conversation], test_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split by conversation: (train, test)."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    cut = round(len(order) * test_fraction)
    return [conversations[i] for i in order[cut:]], [conversations[i] for i in order[:cut]]


def as_messages(turns: list[tuple[str, str]], speaker: str) -> list[dict[str, str]]:
    return [{"role": "assistant" if s == speaker else "user", "content": text} for s, text in turns]


def window_rows(conversations: list[Conversation], window: int) -> list[dict]:
    """Windows of `window` turns from each speaker's side (windows start on the other's turn)."""
    rows = []
    for conversation in conversations:
        for speaker in ("1", "2"):
            turns = conversation.turns
            first = 1 if turns[0][0] == speaker else 0
            for start in range(first, len(turns) - 1, window):
                chunk = turns[start : start + window]
                if any(s == speaker for s, _ in chunk):
                    rows.append(
                        {
                            "persona": conversation.persona(speaker),
                            "messages": as_messages(chunk, speaker),
                            "conversation": conversation.line,
                        }
                    )
    return rows


def reply_rows(conversations: list[Conversation], window: int) -> list[dict]:
    """One row per reply with a context: the `window - 1` turns before it, ending with the other's."""
    rows = []
    for conversation in conversations:
        for index in range(1, len(conversation.turns)):
            speaker, reply = conversation.turns[index]
            context = conversation.turns[max(0, index - window + 1) : index]
            if context[-1][0] == speaker:
                continue
            rows.append(
                {
                    "persona": conversation.persona(speaker),
                    "context": as_messages(context, speaker),
                    "reply": reply,
                    "conversation": conversation.line,
                    "turn": index,
                }
            )
    return rows
