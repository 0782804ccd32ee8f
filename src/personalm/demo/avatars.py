"""The avatar step of `personalm demo`: build an avatar from a few texts written here, then chat
two turns (the second asks about what the first one taught it), then take a fact back and show that
memory keeps it in its history, reads it as of before, and no longer answers from it."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import AvatarChat
from personalm.avatars.facts import ModelFactExtractor
from personalm.avatars.profile import refresh_profile
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.models.base import SamplingParams, TextModel

NAME = "mara_keel"
TEXTS = {
    "2024-03-02-harbour-notes.md": "I have sailed out of this harbour for thirty years. The sea does not care about "
    "your plans, so you learn to listen before you speak. Every knot I tie, my father tied the same way.",
    "2024-06-10-letter.txt": "Dear Ana, the garden is finally green. I planted tomatoes by the wall, where the "
    "wind cannot reach them. Patience, as always, is the whole trick.",
}
CHAT = [
    {"speaker": "Ana", "text": "Are you coming to the regatta?"},
    {"speaker": "Mara Keel", "text": "Wouldn't miss it. I'll bring bread, as I always do."},
]
TURNS = ["I started keeping bees this spring.", "What do you do in the garden?"]
TAKE_BACK = ["Please forget that I started keeping bees.", "Do you keep bees?"]


def run(console: Console, model: TextModel, out: Path, embedder=None) -> None:
    import json

    sources = out / "avatar-sources"
    sources.mkdir(parents=True, exist_ok=True)
    for name, text in TEXTS.items():
        (sources / name).write_text(text + "\n", encoding="utf-8")
    (sources / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in CHAT), encoding="utf-8")
    db = out / "avatar-memory.db"
    memory = AvatarMemory(SQLiteStore(db, embedder.dimension if embedder else 384), embedder)
    report = memory.ingest(NAME, [sources])
    console.print(f"ingested {report.files} files: {report.added} new memories ({memory.count(NAME)} in all) into {db}")
    profile = refresh_profile(memory, NAME, model)
    console.print(f"[bold]profile:[/] {profile.text}")
    chat = AvatarChat(memory, NAME, model, ModelFactExtractor(model), SamplingParams(max_tokens=64, temperature=0.7))
    for message in TURNS:
        _say(console, chat, message)
    before = time.time()
    for message in TAKE_BACK:
        _say(console, chat, message)
    now = {m.id for m in memory.list(NAME, kind="fact")}
    for old in [m for m in memory.list(NAME, kind="fact", as_of=before) if m.id not in now]:
        versions = memory.history(NAME, old.id)
        states = ", ".join(f"{v.status} '{v.text}'" for v in versions)
        console.print(f"  [dim]believed before, not now (as_of reads it; history {len(versions)} version(s): {states})[/]")
    memory.close()


def _say(console: Console, chat: AvatarChat, message: str) -> None:
    turn = chat.send(message)
    console.print(f"[cyan]you:[/] {message}\n[green]{chat.who}:[/] {turn.reply}")
    for hit in turn.recall.facts + turn.recall.exemplars:
        console.print(f"  [dim]remembered ({hit.memory.kind}, {hit.similarity:.2f}): {hit.memory.text}[/]")
    if turn.recall.forgotten:
        console.print(f"  [dim]closest is a fact you took back: '{turn.recall.taken_back.memory.text}'[/]")
    for update in turn.updates:
        console.print(f"  [dim]memory {update.op}: {update.fact} ({update.rule})[/]")
