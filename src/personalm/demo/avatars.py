"""The avatar step of `personalm demo`: `avatar create` on a few texts written here (ingest,
profile, a voice adapter trained on the person's own words), then `avatar update` with a later
note (only the new file ingested; the adapter continues as v2 with a replay share of the old
rows), then chat with the latest version two turns (the second asks about what the first one taught
it), then take a fact back and show that memory keeps it in its history, reads it as of before, and
no longer answers from it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from personalm.avatars import voice
from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import AvatarChat
from personalm.avatars.facts import ModelFactExtractor
from personalm.avatars.profile import refresh_profile
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.voice import AdapterVersion, Hooks, VoiceOptions, adapter_versions
from personalm.models.base import SamplingParams, TextModel

NAME = "mara_keel"
TEXTS = {
    "2024-03-02-harbour-notes.md": "I have sailed out of this harbour for thirty years. The sea does not care about "
    "your plans, so you learn to listen before you speak. Every knot I tie, my father tied the same way.",
    "2024-04-18-logbook.md": "Fog all morning, so we waited at the mooring. A skipper who hurries in fog buys "
    "the rocks a new boat. By noon the wind came round and we took the long way past the point.",
    "2024-06-10-letter.txt": "Dear Ana, the garden is finally green. I planted tomatoes by the wall, where the "
    "wind cannot reach them. Patience, as always, is the whole trick.",
}
LATER = {
    "2024-09-15-regatta.md": "We took the regatta by a boat length. I baked four loaves for the crew, as I always "
    "do, and not a crumb came home. Next spring I will teach Ana to steer.",
}
CHAT = [
    {"speaker": "Ana", "text": "Are you coming to the regatta?"},
    {"speaker": "Mara Keel", "text": "Wouldn't miss it. I'll bring bread, as I always do."},
]
TURNS = ["I started keeping bees this spring.", "What do you do in the garden?"]
TAKE_BACK = ["Please forget that I started keeping bees.", "Do you keep bees?"]
VOICE = VoiceOptions(max_steps=4, batch_size=4, save_every=2, replay=0.5)  # a few steps: the path, not a voice


def _voice_model(version: AdapterVersion) -> TextModel:
    from personalm.models import load_model

    return load_model(version.base, adapter=version.path)


def run(console: Console, model: TextModel, out: Path, embedder=None,
        speaker: Callable[[AdapterVersion], TextModel] = _voice_model, train: Callable | None = None) -> None:  # fmt: skip
    """`speaker` gives the model that answers with a version's adapter; `train` replaces the trainer."""
    sources, later = out / "avatar-sources", out / "avatar-sources-later"
    for folder, texts in ((sources, TEXTS), (later, LATER)):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (folder / name).write_text(text + "\n", encoding="utf-8")
    (sources / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in CHAT), encoding="utf-8")
    db = out / "avatar-memory.db"
    db.unlink(missing_ok=True)  # the demo makes its avatar afresh each time
    memory = AvatarMemory(SQLiteStore(db, embedder.dimension if embedder else 384), embedder)
    voice.remove_versions(memory.store, NAME)
    hooks = Hooks(log=lambda m: console.print(f"  [dim]{m}[/]"), train=train,
                  profile=lambda m, name: console.print(f"[bold]profile:[/] {refresh_profile(m, name, model).text}"))  # fmt: skip
    console.print(f"$ personalm avatar create {NAME} {sources}")
    _published(console, voice.create(memory, NAME, [sources], options=VOICE, hooks=hooks).version)
    console.print(f"$ personalm avatar update {NAME} {sources} {later}")
    _published(console, voice.update(memory, NAME, [sources, later], options=VOICE, hooks=hooks).version)
    for version in adapter_versions(memory.store, NAME):
        console.print(f"  {version.label}: {version.trained} utterances trained, {version.replayed} replayed, "
                      f"{version.heldout} held out, {version.steps} steps, loss {version.final_loss:.2f}")  # fmt: skip
    newest = adapter_versions(memory.store, NAME)[-1]
    spoken = speaker(newest)
    console.print(f"chatting with avatar:{NAME} (voice {newest.label} + retrieved memories)")
    # as the server answers: proxy-tuned, the base reading the retrieved memories (VOICE_FUSION)
    chat = AvatarChat(memory, NAME, spoken, ModelFactExtractor(model), SamplingParams(max_tokens=64, temperature=0.7),
                      voice_base=model if spoken is not model else None)  # fmt: skip
    try:
        for message in TURNS:
            _say(console, chat, message)
        before = time.time()
        for message in TAKE_BACK:
            _say(console, chat, message)
        now = {m.id for m in memory.list(NAME, kind="fact")}
        for old in [m for m in memory.list(NAME, kind="fact", as_of=before) if m.id not in now]:
            versions = memory.history(NAME, old.id)
            states = ", ".join(f"{v.status} '{v.text}'" for v in versions)
            console.print(f"  [dim]believed before, not now (as_of reads it; history {len(versions)} version(s): "
                          f"{states})[/]")  # fmt: skip
    finally:
        if spoken is not model:
            spoken.close()
        memory.close()


def _published(console: Console, version: AdapterVersion | None) -> None:
    if version is not None:
        console.print(f"{version.label} published: avatar:{NAME} now answers with it")


def _say(console: Console, chat: AvatarChat, message: str) -> None:
    turn = chat.send(message)
    console.print(f"[cyan]you:[/] {message}\n[green]{chat.who}:[/] {turn.reply}")
    for hit in turn.recall.facts + turn.recall.exemplars:
        console.print(f"  [dim]remembered ({hit.memory.kind}, {hit.similarity:.2f}): {hit.memory.text}[/]")
    if turn.recall.forgotten:
        console.print(f"  [dim]closest is a fact you took back: '{turn.recall.taken_back.memory.text}'[/]")
    for update in turn.updates:
        console.print(f"  [dim]memory {update.op}: {update.fact} ({update.rule})[/]")
