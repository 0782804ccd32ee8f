"""`personalm avatar ...`: build an avatar of one person from their own words, search its
memory, chat with it, and measure how much it sounds like them."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personalm.progress import progress_bar, stderr

app = typer.Typer(help="Avatars of real people: memory of their own words, retrieval, chat.", no_args_is_help=True)

# Ids, offsets and counts are SQLite (and PostgreSQL bigint) integers: larger ones are refused here.
INT64_MAX = 2**63 - 1
STORE_HELP = "Memory store: a SQLite file or postgresql://... (default PERSONALM_AVATAR_STORE or PERSONALM_HOME/avatars/memory.db)."


def _memory(store: str | None, create: bool = False):
    """The avatar memory; only `ingest` (create=True) may start a new store."""
    from personalm.avatars.api import DEFAULT_DIMENSION, AvatarMemory
    from personalm.avatars.store import open_store

    url = store or os.environ.get("PERSONALM_AVATAR_STORE")
    return AvatarMemory(open_store(url, DEFAULT_DIMENSION, must_exist=not create))


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


@app.command("ingest")
def ingest_cmd(
    name: str = typer.Argument(..., help="Avatar name (letters, digits, _ . -)."),
    sources: list[Path] = typer.Argument(
        ..., help="Files or folders: .txt/.md, .jsonl/.csv chat logs, WhatsApp exports."
    ),
    speaker: list[str] = typer.Option(
        [], "--speaker", "-s", help="The person's name in chat logs (repeatable; default: the avatar name)."
    ),
    chunk_chars: int = typer.Option(300, help="Longest memory chunk in characters (sentences are kept whole)."),
    overlap: float = typer.Option(0.25, help="Fraction of a chunk repeated at the start of the next."),
    store: str = typer.Option(None, help=STORE_HELP),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="Refresh the persona profile when memory grew."),
    model: str = typer.Option(None, "--model", "-m", help="Model writing the profile (default: the embedded one)."),
) -> None:
    """Add a person's texts and chats to their avatar's memory (re-running adds nothing twice)."""
    from personalm.avatars.chunking import Chunking
    from personalm.avatars.sources import discover
    from personalm.avatars.store import check_avatar

    check_avatar(name)
    chunking = Chunking(chunk_chars, overlap)
    files = discover(sources)
    memory = _memory(store, create=True)
    with progress_bar(f"ingesting into {name}", len(files)) as advance:
        report = memory.ingest(name, sources, speaker, chunking, advance)
    stderr.print(
        f"{name}: {report.files} files ({report.skipped_files} already ingested), {report.added} new memories, "
        f"{report.duplicates} duplicates skipped; {memory.count(name)} memories in all",
        markup=False,
    )
    if profile and report.added:
        _refresh_profile(memory, name, model, force=False)


SOURCES_HELP = "Files or folders: .txt/.md, .jsonl/.csv chat logs, WhatsApp exports."
SPEAKER_HELP = "The person's name in chat logs (repeatable; default: the avatar name)."


def _voice_hooks(model: str | None):
    """Progress for each stage on stderr, the profile refreshed when memory grew, training with a bar."""
    from personalm.avatars.voice import Hooks
    from personalm.progress import training_bar
    from personalm.train.loop import train

    def trained(config):
        with training_bar() as progress:
            result = train(config, progress, log=lambda m: stderr.print(m, markup=False))
        stderr.print(f"trained {result.steps} steps in {result.seconds:.0f} s", markup=False)
        return result

    return Hooks(
        log=lambda m: stderr.print(m, markup=False),
        bar=progress_bar,
        profile=lambda memory, name: _refresh_profile(memory, name, model, force=False),
        train=trained,
    )


def _report_outcome(outcome, as_json: bool) -> None:
    version = outcome.version
    if as_json:
        typer.echo(json.dumps({"avatar": outcome.avatar, "ingested": outcome.ingested, "published": outcome.published,
                               "version": version.to_dict() if version else None}, ensure_ascii=False))  # fmt: skip
        return
    if version is None:
        stderr.print(f"{outcome.avatar}: no voice adapter; `avatar:{outcome.avatar}` answers with the base model "
                     "and the retrieved memories", markup=False)  # fmt: skip
    elif outcome.published:
        stderr.print(f"{outcome.avatar}: {version.label} published ({version.trained} utterances trained, "
                     f"{version.replayed} replayed, {version.heldout} held out; {version.steps} steps); "
                     f"`avatar:{outcome.avatar}` now answers with it", markup=False)  # fmt: skip


@app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="Avatar name (letters, digits, _ . -)."),
    sources: list[Path] = typer.Argument(..., help=SOURCES_HELP),
    adapter: bool = typer.Option(
        True, "--adapter/--no-adapter", help="Train a voice adapter on the person's utterances (v1)."
    ),
    speaker: list[str] = typer.Option([], "--speaker", "-s", help=SPEAKER_HELP),
    model: str = typer.Option(
        None, "--model", "-m", help="Base model of the adapter and profile writer (default: the embedded one)."
    ),
    rank: int = typer.Option(16, min=1, max=512, help="LoRA rank (updates keep it)."),
    alpha: int = typer.Option(32, min=1, help="LoRA alpha (updates keep it)."),
    lr: float = typer.Option(2e-4, min=0.0),
    epochs: int = typer.Option(1, min=1),
    max_steps: int = typer.Option(None, min=1, help="Train exactly this many steps (overrides --epochs)."),
    batch_size: int = typer.Option(8, min=1),
    max_len: int = typer.Option(512, min=8, help="Longest training example in tokens."),
    save_every: int = typer.Option(50, min=1, help="Checkpoint every N steps (a killed run resumes from it)."),
    heldout: float = typer.Option(0.1, min=0.0, max=0.9, help="Share of the utterances kept out of training."),
    seed: int = typer.Option(0, min=0),
    chunk_chars: int = typer.Option(300, help="Longest memory chunk in characters (sentences are kept whole)."),
    overlap: float = typer.Option(0.25, help="Fraction of a chunk repeated at the start of the next."),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as one JSON line."),
) -> None:
    """From the person's own writing to `avatar:NAME` in one command: ingest, profile, a voice
    adapter trained on their utterances (a held-out share kept aside), registered for chat and the
    server. Progress for each stage; re-run the same command after a kill to continue."""
    from personalm.avatars.chunking import Chunking
    from personalm.avatars.voice import VoiceOptions, check_sources, create
    from personalm.models.registry import DEFAULT_MODEL

    check_sources(sources, name, speaker)
    options = VoiceOptions(model=model or DEFAULT_MODEL, rank=rank, alpha=alpha, lr=lr, epochs=epochs,
                           max_steps=max_steps, batch_size=batch_size, max_len=max_len, save_every=save_every,
                           heldout=heldout, seed=seed)  # fmt: skip
    memory = _memory(store, create=True)
    outcome = create(memory, name, sources, speaker, Chunking(chunk_chars, overlap), options, adapter,
                     _voice_hooks(model))  # fmt: skip
    _report_outcome(outcome, as_json)


@app.command("update")
def update_cmd(
    name: str = typer.Argument(..., help="An avatar made by `avatar create` (or `avatar ingest`)."),
    sources: list[Path] = typer.Argument(..., help=SOURCES_HELP + " Only what is new is ingested."),
    adapter: bool = typer.Option(
        None, "--adapter/--no-adapter", help="Train the next adapter version (default: when the avatar has one)."
    ),
    speaker: list[str] = typer.Option([], "--speaker", "-s", help=SPEAKER_HELP),
    model: str = typer.Option(None, "--model", "-m", help="Profile writer, and the base of a first adapter."),
    replay: float = typer.Option(
        0.25, min=0.0, max=0.9, help="Share of the training rows replayed from earlier versions."
    ),
    lr: float = typer.Option(2e-4, min=0.0),
    epochs: int = typer.Option(1, min=1),
    max_steps: int = typer.Option(None, min=1, help="Train exactly this many steps (overrides --epochs)."),
    batch_size: int = typer.Option(8, min=1),
    max_len: int = typer.Option(512, min=8, help="Longest training example in tokens."),
    save_every: int = typer.Option(50, min=1, help="Checkpoint every N steps (a killed run resumes from it)."),
    heldout: float = typer.Option(0.1, min=0.0, max=0.9, help="Share of the new utterances kept out of training."),
    seed: int = typer.Option(0, min=0),
    chunk_chars: int = typer.Option(300, help="Longest memory chunk in characters (sentences are kept whole)."),
    overlap: float = typer.Option(0.25, help="Fraction of a chunk repeated at the start of the next."),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as one JSON line."),
) -> None:
    """Keep an avatar up to date: ingest only the new text and continue the adapter from its latest
    version on the new utterances plus a replay share of old ones, as a new version (every version is
    kept; `avatar versions NAME` lists them). A killed update leaves the previous version serving."""
    from personalm.avatars.chunking import Chunking
    from personalm.avatars.voice import VoiceOptions, check_sources, update
    from personalm.models.registry import DEFAULT_MODEL

    check_sources(sources, name, speaker)
    options = VoiceOptions(model=model or DEFAULT_MODEL, lr=lr, epochs=epochs, max_steps=max_steps,
                           batch_size=batch_size, max_len=max_len, save_every=save_every, heldout=heldout,
                           replay=replay, seed=seed)  # fmt: skip
    memory = _memory(store)
    outcome = update(memory, name, sources, speaker, Chunking(chunk_chars, overlap), options, adapter,
                     _voice_hooks(model))  # fmt: skip
    _report_outcome(outcome, as_json)


def _window(version) -> str:
    """A version's utterances: their memory ids and, when dated, their period."""
    ids = f"ids {version.first_id}-{version.last_id}" if version.first_id is not None else "no new ids"
    if not version.time_range:
        return ids
    return f"{ids}, {_when(version.time_range[0])}..{_when(version.time_range[1])}"


@app.command("versions")
def versions_cmd(
    name: str = typer.Argument(..., help="Avatar name."),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The avatar's voice adapter versions with their data windows (the last is the one served as
    `avatar:NAME`; `avatar:NAME@vN` pins one)."""
    from personalm.avatars.voice import adapter_versions
    from personalm.errors import PersonalmError

    memory = _memory(store)
    if name not in memory.names():
        raise PersonalmError(f"avatar '{name}' does not exist; make it with `personalm avatar create {name} FILES`")
    published = adapter_versions(memory.store, name)
    if as_json:
        for v in published:
            typer.echo(json.dumps(v.to_dict() | {"latest": v is published[-1]}, ensure_ascii=False))
        return
    rows = [{"version": v.label + (" (latest)" if v is published[-1] else ""), "created": _when(v.created_at),
             "sources": len(v.sources), "window": _window(v), "new + replayed": f"{v.trained} + {v.replayed}",
             "held out": v.heldout, "steps": v.steps} for v in published]  # fmt: skip
    if not rows:
        stderr.print(f"{name}: no voice adapter (make one with `personalm avatar update {name} FILES --adapter`)",
                     markup=False)  # fmt: skip
        return
    _print_rows(rows, False)


@app.command("list")
def list_cmd(
    name: str = typer.Argument(None, help="An avatar: list its memories. None: list the avatars."),
    kind: str = typer.Option(None, help="utterance or fact."),
    limit: int = typer.Option(20, min=1, max=INT64_MAX),
    offset: int = typer.Option(0, min=0, max=INT64_MAX),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The avatars in the store, or one avatar's memories."""
    memory = _memory(store)
    if name is None:
        rows = [{"avatar": n, "memories": memory.count(n), "facts": memory.count(n, "fact")} for n in memory.names()]
        _print_rows(rows, as_json)
        return
    rows = [
        {"id": m.id, "kind": m.kind, "date": _when(m.ts), "text": m.text}
        for m in memory.list(name, kind, limit, offset)
    ]
    _print_rows(rows, as_json)


@app.command("search")
def search_cmd(
    name: str = typer.Argument(...),
    query: str = typer.Argument(...),
    k: int = typer.Option(5, "-k", min=1, max=INT64_MAX),
    kind: str = typer.Option(None, help="utterance or fact (default both)."),
    recency: float = typer.Option(0.0, min=0.0, help="Weight of a newest-first list in the fusion (0: off)."),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Hybrid keyword + dense search in one avatar's memory."""
    from personalm.avatars.store import KINDS

    hits = _memory(store).search(name, query, k, [kind] if kind else KINDS, recency)
    rows = [
        {"id": h.memory.id, "kind": h.memory.kind, "score": round(h.score, 4), "similarity": round(h.similarity, 3),
         "date": _when(h.memory.ts), "text": h.memory.text}
        for h in hits
    ]  # fmt: skip
    _print_rows(rows, as_json)


@app.command("forget")
def forget_cmd(
    name: str = typer.Argument(...),
    ids: list[int] = typer.Argument(None, min=1, max=INT64_MAX, help="Memory ids to delete (see `avatar list NAME`)."),
    everything: bool = typer.Option(False, "--all", help="Delete the whole avatar."),
    store: str = typer.Option(None, help=STORE_HELP),
) -> None:
    """Retract memories of one avatar (no longer believed, kept in their history), or erase the avatar."""
    from personalm.errors import PersonalmError

    memory = _memory(store)
    if everything:
        from personalm.avatars.voice import remove_versions

        remove_versions(memory.store, name)
        stderr.print(f"{name}: deleted with {memory.delete_avatar(name)} memories and its voice adapters", markup=False)
    elif ids:
        stderr.print(f"{name}: {memory.delete(name, ids)} memories retracted (kept in their history; "
                     "`avatar undo NAME ID` restores one)", markup=False)  # fmt: skip
    else:
        raise PersonalmError("give memory ids to delete, or --all")


@app.command("profile")
def profile_cmd(
    name: str = typer.Argument(...),
    refresh: bool = typer.Option(False, "--refresh", help="Rewrite it now (otherwise only when memory grew)."),
    model: str = typer.Option(None, "--model", "-m", help="Model writing the profile (default: the embedded one)."),
    store: str = typer.Option(None, help=STORE_HELP),
) -> None:
    """Show the avatar's persona profile, written from the person's own words and facts."""
    from personalm.errors import PersonalmError

    memory = _memory(store)
    if memory.count(name) == 0:
        raise PersonalmError(f"avatar '{name}' has no memories; run `personalm avatar ingest {name} FILES` first")
    _refresh_profile(memory, name, model, force=refresh)
    profile = memory.store.get_profile(name)
    typer.echo(profile.text)
    stderr.print(
        f"written from {profile.memory_count} memories by {profile.extra.get('model')}"
        + ("" if profile.extra.get("from_model", True) else " (model reply unusable: keyword profile)"),
        markup=False,
    )


@app.command("preferences")
def preferences_cmd(
    name: str = typer.Argument(...),
    apply: bool = typer.Option(
        None, "--apply/--no-apply", help="Turn preference-aware answering on or off for this avatar's chats."
    ),
    candidates: int = typer.Option(None, min=1, max=16, help="Answers sampled per turn; the critic keeps the best."),
    store: str = typer.Option(None, help=STORE_HELP),
) -> None:
    """Show or set the avatar's default for preference-aware answering (chat and server requests may override it)."""
    from personalm.avatars.preferences import PreferenceSettings, avatar_settings, save_avatar_settings
    from personalm.errors import PersonalmError

    memory = _memory(store)
    if name not in memory.names():
        raise PersonalmError(f"avatar '{name}' does not exist; run `personalm avatar ingest {name} FILES` first")
    settings = avatar_settings(memory.store, name)
    if apply is not None or candidates is not None:
        settings = PreferenceSettings(
            apply=settings.apply if apply is None else apply, candidates=candidates or settings.candidates
        )
        save_avatar_settings(memory.store, name, settings)
    typer.echo(json.dumps({"avatar": name} | settings.to_dict()))


def _refresh_profile(memory, name: str, model: str | None, force: bool, loaded=None) -> None:
    """Rewrite the profile with text-to-persona when forced or when memory grew enough."""
    from personalm.avatars.profile import profile_is_stale, refresh_profile
    from personalm.models import load_model

    if not force and not profile_is_stale(memory, name):
        return
    if loaded is not None:
        profile = refresh_profile(memory, name, loaded)
    else:
        with load_model(model) if model else load_model() as lm:
            profile = refresh_profile(memory, name, lm)
    stderr.print(f"{name}: profile updated from {profile.memory_count} memories", markup=False)


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        stderr.print("nothing found", markup=False)
        return
    table = Table(*rows[0].keys(), show_lines=False)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)


@app.command("chat")
def chat_cmd(
    name: str = typer.Argument(...),
    message: list[str] = typer.Option(
        [], "--message", "-M", help="Send these messages in order and exit (default: read lines from stdin)."
    ),
    model: str = typer.Option(None, "--model", "-m", help="Model answering (default: the embedded one)."),
    adapter: Path = typer.Option(None, help="A personal LoRA adapter (default: the avatar's voice adapter, if any)."),
    version: str = typer.Option(
        "latest", "--version", help="The avatar's adapter version: latest, vN, or base (no adapter)."
    ),
    learn: bool = typer.Option(True, "--learn/--no-learn", help="Extract facts from your messages into memory."),
    extractor: str = typer.Option("model", help="Fact extractor: model (grounded, rules as fallback) or rules."),
    show_memory: bool = typer.Option(False, "--show-memory", help="Print the retrieved memories and updates."),
    temperature: float = typer.Option(0.7, min=0.0),
    max_tokens: int = typer.Option(128, min=1),
    seed: int = typer.Option(0),
    store: str = typer.Option(None, help=STORE_HELP),
    preferences: bool = typer.Option(
        None,
        "--preferences/--no-preferences",
        help="Answer with the best of --candidates for your stated preferences (default: the avatar's setting, "
        "see `avatar preferences`).",
    ),
    candidates: int = typer.Option(None, min=1, max=16, help="Answers sampled per turn with --preferences."),
    voice_candidates: int = typer.Option(
        None,
        min=1,
        max=16,
        help="With a voice adapter: answers sampled per turn, the one most in the person's voice "
        "kept (default: 1, one sample, as `avatar experiment` chose on validation persons).",
    ),
    voice_fusion: float = typer.Option(
        None,
        min=0.0,
        max=4.0,
        help="With a voice adapter: answer by proxy-tuned decoding at this weight (the base model reads the "
        "retrieved passages, the adapter's shift over it is added; default: the adapter reads them itself).",
    ),
    critic: Path = typer.Option(None, help="Preference critic folder (default PERSONALM_HOME/critic)."),
) -> None:
    """Talk with the avatar; you are taken to be the person, so facts you state are remembered."""
    import sys

    from personalm.avatars.chat import AvatarChat
    from personalm.avatars.facts import ModelFactExtractor, RuleFactExtractor
    from personalm.avatars.preferences import (
        VOICE_CANDIDATES,
        VOICE_FUSION,
        PreferenceSettings,
        avatar_settings,
        load_critic,
    )
    from personalm.errors import PersonalmError
    from personalm.models import SamplingParams, load_model

    if extractor not in {"model", "rules"}:
        raise PersonalmError(f"--extractor {extractor}: expected model or rules")
    preference_critic = load_critic(critic) if critic is not None else None
    memory = _memory(store)
    if memory.count(name) == 0:
        raise PersonalmError(f"avatar '{name}' has no memories; run `personalm avatar ingest {name} FILES` first")
    stored = avatar_settings(memory.store, name)
    settings = PreferenceSettings(apply=stored.apply if preferences is None else preferences,
                                  candidates=candidates or stored.candidates)  # fmt: skip
    if settings.apply and preference_critic is None:
        preference_critic = load_critic()
    if adapter is None:
        from personalm.avatars.voice import pick

        voice = pick(memory.store, name, version)
        if voice is not None:
            adapter, model = Path(voice.path), model or voice.base
            stderr.print(f"{name}: voice adapter {voice.label}", markup=False)
    lm = load_model(model, adapter=adapter) if model else load_model(adapter=adapter)
    voice_candidates = voice_candidates or VOICE_CANDIDATES
    voice_fusion = VOICE_FUSION if voice_fusion is None else voice_fusion
    needs_base = adapter is not None and (voice_candidates > 1 or voice_fusion is not None)
    base = (load_model(model) if model else load_model()) if needs_base else None
    facts = None
    if learn:
        facts = ModelFactExtractor(lm) if extractor == "model" else RuleFactExtractor()
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=0.9, seed=seed)
    chat = AvatarChat(memory, name, lm, facts, params, critic=preference_critic, preferences=settings,
                      voice_base=base, voice_candidates=voice_candidates, voice_fusion=voice_fusion)  # fmt: skip
    interactive = not message and sys.stdin.isatty()
    lines = message or (line.rstrip("\n") for line in sys.stdin)
    if interactive:
        stderr.print(f"chatting with {chat.who} (empty line or Ctrl-D ends)", markup=False)
    for line in lines:
        if not line.strip():
            if interactive:
                break
            continue
        turn = chat.send(line)
        if show_memory:
            for hit in turn.recall.facts + turn.recall.exemplars:
                stderr.print(f"  [{hit.memory.kind} {hit.similarity:.2f}] {hit.memory.text}", markup=False)
        typer.echo(f"{chat.who}: {turn.reply}")
        if turn.choice is not None and turn.choice.preferences:
            stderr.print(f"  preferences applied (best of {len(turn.choice.answers)}): "
                         + "; ".join(turn.choice.preferences), markup=False)  # fmt: skip
        elif turn.choice is not None and show_memory and chat.fused is not None:
            stderr.print(f"  voice: proxy-tuned at weight {voice_fusion:g}", markup=False)
        elif turn.choice is not None and show_memory:
            stderr.print(f"  voice: best of {len(turn.choice.answers)} by voice likelihood", markup=False)
        for update in turn.updates:
            if show_memory or update.op != "NONE":
                target = f" (was: {update.target_text})" if update.target_text and update.op != "NONE" else ""
                stderr.print(f"  memory {update.op}: {update.fact}{target}", markup=False)
    if learn:
        _refresh_profile(memory, name, None, force=False, loaded=lm)
    lm.close()
    if base is not None:
        base.close()


@app.command("experiment")
def experiment_cmd(
    out: Path = typer.Option(
        Path("reports/avatar"), "--out", "-o", help="Folder for results.json, avatar.png, report.html."
    ),
    data: Path = typer.Option(
        None, help="Data folder with speeches/, prefeval/, persona_chat/ (default: PERSONALM_DATA or ../shared/data)."
    ),
    model: str = typer.Option(None, "--model", "-m", help="Model for every condition (default: the embedded one)."),
    persons: int = typer.Option(0, min=0, help="Use the first N persons (0: all with three or more speeches)."),
    memory_fraction: float = typer.Option(
        0.75, min=0.1, max=0.95, help="Share of each person's speeches (earliest) in memory."
    ),
    memory_chunks: int = typer.Option(300, min=10, help="Memory chunks per person (spread over the memory period)."),
    prompts: int = typer.Option(10, min=1, help="Held-out prompts per person."),
    max_tokens: int = typer.Option(64, min=8),
    prefeval_items: int = typer.Option(
        0, min=0, help="PrefEval test questions, drawn from the critic's test topics (0: all of them)."
    ),
    validation_items: int = typer.Option(
        100, min=1, help="PrefEval validation questions, from the critic's validation topics (settings chosen on them)."
    ),
    distractors: int = typer.Option(50, min=10, help="Distractor memories stored with each preference."),
    free_items: int = typer.Option(0, min=0, help="Free-answer questions (0: every test question)."),
    candidates: int = typer.Option(4, min=1, max=16, help="Candidates per free answer (preference-aware answering)."),
    critic: Path = typer.Option(None, help="The trained preference critic (default PERSONALM_HOME/critic)."),
    judge: str = typer.Option(None, help="A larger model judging the free answers (default: the embedding rule)."),
    voice_persons: int = typer.Option(
        8, min=0, help="Persons given a voice adapter, trained as `avatar create` trains (0: no voice conditions)."
    ),
    voice_steps: int = typer.Option(
        0, min=0, help="At most this many steps per voice adapter (0: the setting's epochs)."
    ),
    voice_grid: str = typer.Option(
        None, help="Voice settings EPOCHS:LR,... chosen among on validation persons (default: the study's grid)."
    ),
    voice_candidates: str = typer.Option(
        "1,4,8",
        help="Answers sampled per prompt by adapter + retrieval, the best by voice likelihood: counts chosen "
        "among on validation persons.",
    ),
    voice_fusion: str = typer.Option(
        "0.5,1",
        help="Proxy-tuning weights for adapter + retrieval (the base reads the passages, the adapter's shift over "
        "it is added at the weight), chosen among with the candidate counts on validation persons ('': none).",
    ),
    voice_validation_persons: int = typer.Option(
        3, min=0, help="Persons (not voice or update persons) the voice setting is chosen on (0: the first setting)."
    ),
    voice_rows: int = typer.Option(
        600, min=0, help="Training passages per voice, spread over the memory-period speeches (0: the memory's)."
    ),
    update_persons: int = typer.Option(
        0, min=0, help="Persons in the update check: create on earlier speeches, update with later ones (0: none)."
    ),
    update_speeches: int = typer.Option(3, min=1, help="Speeches in each window of the update check."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="A small run: 4 persons, 40 test and 40 validation questions, 20 free answers, 2 voices of 2 steps, chosen on 1 person.",
    ),
    seed: int = typer.Option(0),
    prefeval_only: bool = typer.Option(
        False, "--prefeval-only", help="Rerun PrefEval only; keep the likeness part of OUT/results.json."
    ),
) -> None:
    """Likeness on held-out speeches (attribution, similarity) and PrefEval preference memory on the critic's unseen topics."""
    from personalm.avatars.preferences import load_critic
    from personalm.cli.inputs import data_folder
    from personalm.studies.avatar_experiment import VOICE_GRID, ExperimentConfig, headline_rows, run, voice_table_rows
    from personalm.studies.avatar_likeness import parse_candidates, parse_fusion, parse_voice_grid

    grid = parse_voice_grid(voice_grid) if voice_grid is not None else VOICE_GRID
    counts = parse_candidates(voice_candidates)
    weights = parse_fusion(voice_fusion)
    needed = ["prefeval/mcq_options", "persona_chat/valid.csv"] + ([] if prefeval_only else ["speeches"])
    folder = data_folder(data, required=needed)
    loaded = load_critic(critic)
    if quick:
        persons, memory_chunks, prompts = persons or 4, min(memory_chunks, 100), min(prompts, 2)
        prefeval_items, validation_items = prefeval_items or 40, min(validation_items, 40)
        free_items = free_items or 20
        voice_persons, voice_steps = min(voice_persons, 2), voice_steps or 2
        voice_validation_persons = min(voice_validation_persons, 1)
        update_persons, update_speeches = min(update_persons, 1), 1
    config = ExperimentConfig(
        data=folder, out=out, model=model, persons=persons, memory_fraction=memory_fraction,
        memory_chunks=memory_chunks, prompts_per_person=prompts, max_tokens=max_tokens,
        prefeval_items=prefeval_items, prefeval_validation_items=validation_items, distractors=distractors,
        seed=seed, prefeval_only=prefeval_only, critic=critic, free_items=free_items, candidates=candidates,
        judge=judge, voice_persons=voice_persons, voice_steps=voice_steps, update_persons=update_persons,
        update_speeches=update_speeches, voice_grid=grid, voice_candidates=counts, voice_fusion=weights,
        voice_validation_persons=voice_validation_persons, voice_rows=voice_rows,
    )  # fmt: skip
    results = run(config, log=lambda m: stderr.print(m, markup=False), critic=loaded)
    table = Table("answers by", "attribution accuracy", "similarity to real passage")
    for row in headline_rows(results):
        table.add_row(*row)
    if "voice" in results["likeness"]:
        table.add_section()
        for row in voice_table_rows(results):
            table.add_row(*row)
    console = Console()
    console.print(table)
    if results["likeness"].get("update", {}).get("persons"):
        from personalm.studies.avatar_update import update_rows

        console.print(
            f"update check ({', '.join(results['likeness']['update']['persons'])}): update {results['update_seconds']} s"
            f" vs create from scratch {results['update_scratch_seconds']} s",
            markup=False,
        )
        for row in update_rows(results):
            console.print("  " + "; ".join(f"{k}: {v}" for k, v in row.items()), markup=False)

    def ci(key: str) -> str:
        low, high = results[f"{key}_ci"]
        return f"{results[key]:.3f} [{low:.3f}, {high:.3f}]"

    pref = results["prefeval"]
    console.print(
        f"chance {results['chance_attribution']:.3f}; RAG 8-gram copy rate {results['rag_copy_rate']:.3f}\n"
        f"PrefEval on the critic's unseen topics ({results['prefeval_items']} questions, chance 0.25): with memory "
        f"{ci('prefeval_acc_memory')}, without {ci('prefeval_acc_nomemory')}, difference "
        f"{ci('prefeval_acc_difference')}; retrieval recall@5 {results['retrieval_recall_at_5']:.3f} "
        f"({pref['fusion']['label']})\n"
        f"free answers respecting the preference ({results['free_answer_items']} questions, judged by "
        f"{pref['free_answers']['judge']}): plain {ci('free_answer_respect_plain')}, best of {candidates} "
        f"{ci('free_answer_respect_preferences')}, difference {ci('free_answer_difference')}\n"
        f"report: {out / 'report.html'}",
        markup=False,
    )


@app.command("sft-data")
def sft_data_cmd(
    name: str = typer.Argument(...),
    out: Path = typer.Option(..., "--out", "-o", help="Output .jsonl or .parquet with a `messages` column."),
    limit: int = typer.Option(0, min=0, max=INT64_MAX, help="At most this many examples (0: all)."),
    store: str = typer.Option(None, help=STORE_HELP),
) -> None:
    """Export the person's utterances as chat examples for `personalm train sft` (a personal adapter)."""
    from personalm.avatars.adapter_data import training_examples
    from personalm.errors import PersonalmError
    from personalm.tables import write_rows

    rows = list(training_examples(_memory(store), name, limit))
    if not rows:
        raise PersonalmError(f"avatar '{name}' has no utterances to train on")
    write_rows(out, rows)
    stderr.print(
        f"wrote {len(rows)} examples to {out}; next: personalm train sft {out} -o runs/{name}-adapter, "
        f"then personalm avatar chat {name} --adapter runs/{name}-adapter",
        markup=False,
    )


def _version_row(m) -> dict:
    """One version of a memory for the table: when it was learned and ended, why, from where."""
    learned = datetime.fromtimestamp(m.created_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    ended = "" if m.ended_at is None else datetime.fromtimestamp(m.ended_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return {"id": m.id, "kind": m.kind, "status": m.status, "learned": learned, "ended": ended,
            "replaces": m.replaces, "superseded_by": m.superseded_by, "text": m.text, "origin": m.origin,
            "rule": m.rule, "ended_by": m.end_rule}  # fmt: skip


@app.command("memories")
def memories_cmd(
    name: str = typer.Argument(..., help="Avatar name."),
    as_of: str = typer.Option(
        None, "--as-of", help="What memory believed then: an ISO date / date-time or epoch seconds."
    ),
    history: int = typer.Option(
        None, "--history", min=0, max=INT64_MAX, help="Every version of this memory id instead."
    ),
    kind: str = typer.Option(None, help="utterance or fact."),
    limit: int = typer.Option(50, min=1, max=INT64_MAX),
    offset: int = typer.Option(0, min=0, max=INT64_MAX),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The memories believed now (or --as-of a moment), with when each was learned and what it
    replaced; or --history ID: every version of one memory, with its source and rule."""
    from personalm.avatars.store import parse_time
    from personalm.errors import PersonalmError

    when = parse_time(as_of) if as_of is not None else None
    if history is not None and (when is not None or kind or offset):
        raise PersonalmError("--history lists every version of one memory; it takes no --as-of, --kind or --offset")
    memory = _memory(store)
    if history is not None:
        versions = memory.history(name, history)
        if not versions:
            raise PersonalmError(f"avatar '{name}' has no memory {history}")
        _print_rows([_version_row(m) for m in versions], as_json)
        return
    _print_rows([_version_row(m) for m in memory.list(name, kind, limit, offset, when)], as_json)


@app.command("undo")
def undo_cmd(
    name: str = typer.Argument(..., help="Avatar name."),
    memory_id: int = typer.Argument(
        None, min=0, max=INT64_MAX, help="Undo the last change of this memory (default: the avatar's last change)."
    ),
    store: str = typer.Option(None, help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Undo a change as a new change (nothing is erased): an added memory is retracted, an update
    reverted, a retraction restored. Run it again to redo."""
    memory = _memory(store)
    done = memory.undo(name, memory_id)
    current = memory.store.get(name, [done.current])[0] if done.current is not None else None
    row = {"action": done.action, "memory_id": done.memory_id, "current": done.current,
           "text": current.text if current else None}  # fmt: skip
    if as_json:
        typer.echo(json.dumps(row, ensure_ascii=False))
        return
    shown = f": now '{current.text}' (memory {current.id})" if current else ""
    stderr.print(f"{name}: memory {done.memory_id} {done.action}{shown}", markup=False)


@app.command("memory-test")
def memory_test_cmd(
    data: Path = typer.Option(
        None, help="Data folder with persona_chat/ and prefeval/ (default: PERSONALM_DATA or ../shared/data)."
    ),
    out: Path = typer.Option(
        Path("reports/memory-test"), "--out", "-o", help="Folder for results.json and report.html."
    ),
    quick: bool = typer.Option(False, "--quick", help="6 people, 4 conversations each (a smoke run)."),
    people: int = typer.Option(16, "--people", min=1, max=1000, help="People (persona_chat profiles) scripted."),
    conversations: int = typer.Option(5, min=3, max=50, help="Conversations per person (one a week)."),
    window: int = typer.Option(
        2048, min=256, max=1_000_000, help="Tokens of past messages the stuffing baseline keeps."
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Model answering and extracting (default: the embedded one)."
    ),
    seed: int = typer.Option(0, min=0, max=INT64_MAX),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON line."),
) -> None:
    """Scripted histories where facts change, are taken back and are repeated; probes of the latest
    value, of an earlier one (as of a date) and of retracted facts, on versioned memory against
    prompt stuffing and the overwrite behaviour (accuracies with 95% intervals)."""
    from personalm.cli.inputs import data_folder
    from personalm.studies.memory_test import REQUIRED, MemoryTestConfig, rows, run

    config = MemoryTestConfig(data=data_folder(data, required=REQUIRED), out=out, model=model, people=people,
                              conversations=conversations, window=window, seed=seed, quick=quick)  # fmt: skip
    results = run(config, log=lambda m: stderr.print(m, markup=False))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in results.items() if k != "examples"}, ensure_ascii=False, default=str))
        return
    _print_rows(rows(results), False)
    stderr.print(f"report: {out / 'report.html'}", markup=False)
