"""An avatar's voice: a LoRA adapter trained on the person's own utterances, made in one command
and kept up to date as new text arrives, every version kept with its data window.

`create` runs the stages ingest → profile → data (training rows, a held-out share kept aside) →
train → publish, and `update` the same on what is new: only new files and chunks are ingested
(content hashes), and the adapter continues from its latest version on the new utterances plus a
replay share of earlier ones, so the voice does not drift to the newest text alone.

Crash safety: a job records each finished stage in ROOT/.work/state.json, and a killed job run
again with the same arguments continues from there (training from its last checkpoint). A version
is published by renaming its finished folder to ROOT/vN and then recording it in the avatar's
settings in the store, in one write: until that write the previous version is the latest, so a
killed update leaves it serving. Published folders are never written again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from personalm.avatars.adapter_data import training_examples
from personalm.avatars.api import AvatarMemory
from personalm.avatars.chunking import Chunking
from personalm.avatars.sources import discover, norm_speaker, read_source
from personalm.avatars.store import MemoryStore, check_avatar
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.tables import write_rows

SETTINGS_KEY = "voice"
WORK = ".work"
STATE = "state.json"
WINDOW = "window.json"
HELDOUT = "heldout.jsonl"
TRAIN_ROWS = "train.jsonl"
TRAINED = "train"  # the trainer's folder inside WORK (checkpoints, then the finished adapter)
PAGE = 500


@dataclass
class VoiceOptions:
    """How a version is trained. `heldout`: share of each window's utterances kept out of training
    (for measuring likeness on text the adapter never saw); `replay`: share of an update's training
    rows drawn from earlier windows. An update keeps the base, rank and alpha of the version it continues."""

    model: str = DEFAULT_MODEL
    rank: int = 16
    alpha: int = 32
    lr: float = 2e-4
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    max_len: int = 512
    save_every: int = 50
    heldout: float = 0.1
    replay: float = 0.25
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout < 1.0:
            raise PersonalmError(f"--heldout {self.heldout}: a share in [0, 1)")
        if not 0.0 <= self.replay < 1.0:
            raise PersonalmError(f"--replay {self.replay}: a share in [0, 1)")


@dataclass
class AdapterVersion:
    """One published version and its data window: the sources ingested for it, the memory ids and
    time range of its utterances, how many trained (new and replayed) and how many were held out,
    and how it was trained (`parent`: the version it continued)."""

    version: int
    path: str
    base: str
    rank: int
    alpha: int
    parent: int | None
    created_at: float
    sources: list[str]
    utterances: int
    trained: int
    replayed: int
    heldout: int
    first_id: int | None
    last_id: int | None
    time_range: list[float] | None
    steps: int
    seconds: float
    final_loss: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterVersion:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class Outcome:
    """What a create or update did: the ingest counts, and the version now latest (None: no adapter)."""

    avatar: str
    ingested: dict[str, Any]
    version: AdapterVersion | None
    published: bool


@dataclass
class Hooks:
    """What the caller supplies: messages, a progress bar (description, total) yielding advance(n),
    the profile stage and the trainer (personalm.train.loop.train by default)."""

    log: Callable[[str], None] = lambda message: None
    bar: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] = lambda d, n: nullcontext(lambda k: None)
    profile: Callable[[AvatarMemory, str], None] | None = None
    train: Callable[[Any], Any] | None = None


def adapter_versions(store: MemoryStore, avatar: str) -> list[AdapterVersion]:
    """The avatar's published versions, oldest first."""
    recorded = store.get_settings(check_avatar(avatar)).get(SETTINGS_KEY, {}).get("versions", [])
    return [AdapterVersion.from_dict(v) for v in recorded]


def latest(store: MemoryStore, avatar: str) -> AdapterVersion | None:
    published = adapter_versions(store, avatar)
    return published[-1] if published else None


def pick(store: MemoryStore, avatar: str, pin: str | None) -> AdapterVersion | None:
    """The version a request names: None or 'latest' → the latest (None without an adapter), 'base' →
    None (the base model, retrieval only), 'vN' → version N (PersonalmError when there is none)."""
    if pin in (None, "", "latest"):
        return latest(store, avatar)
    if pin == "base":
        return None
    number = pin[1:] if pin.startswith("v") else ""
    for version in adapter_versions(store, avatar):
        if number.isdigit() and version.version == int(number):
            return version
    raise PersonalmError(f"avatar '{avatar}' has no adapter version '{pin}' (expected latest, base or vN)")


def adapter_root(store: MemoryStore, avatar: str) -> Path:
    """Where the avatar's versions live: beside a SQLite store (memory.db → memory-adapters/NAME),
    else under PERSONALM_HOME/avatars/adapters/NAME."""
    from personalm.paths import home

    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return path.parent / f"{path.stem}-adapters" / check_avatar(avatar)
    return home() / "avatars" / "adapters" / check_avatar(avatar)


def remove_versions(store: MemoryStore, avatar: str) -> None:
    """Delete the avatar's adapter folders (its record goes with the avatar's settings)."""
    shutil.rmtree(adapter_root(store, avatar), ignore_errors=True)


def check_sources(paths: Sequence[str | Path], avatar: str, speakers: Sequence[str] = ()) -> list[Path]:
    """Every file under `paths`, each parsed once: a bad source fails here, before anything is written."""
    check_avatar(avatar)
    wanted = {norm_speaker(s) for s in speakers} or {norm_speaker(avatar)}
    files = discover([Path(p) for p in paths])
    for path in files:
        read_source(path, wanted)
    return files


def create(
    memory: AvatarMemory,
    avatar: str,
    sources: Sequence[str | Path],
    speakers: Sequence[str] = (),
    chunking: Chunking = Chunking(),
    options: VoiceOptions | None = None,
    adapter: bool = True,
    hooks: Hooks | None = None,
) -> Outcome:
    """A new avatar from the person's own words: memory, profile and (with `adapter`) version v1.
    Run again after a kill, it continues; once v1 is published, new text goes through `update`."""
    published = latest(memory.store, check_avatar(avatar))
    if published is not None:
        raise PersonalmError(f"avatar '{avatar}' already has a voice adapter ({published.label}); "
                             f"add new text with `personalm avatar update {avatar} FILES`")  # fmt: skip
    return _run(memory, avatar, "create", sources, speakers, chunking, options or VoiceOptions(), adapter,
                hooks or Hooks())  # fmt: skip


def update(
    memory: AvatarMemory,
    avatar: str,
    sources: Sequence[str | Path],
    speakers: Sequence[str] = (),
    chunking: Chunking = Chunking(),
    options: VoiceOptions | None = None,
    adapter: bool | None = None,
    hooks: Hooks | None = None,
) -> Outcome:
    """New text for an existing avatar: only what is new is ingested; the adapter (when it has one,
    or with `adapter=True`) continues from its latest version as the next version."""
    if check_avatar(avatar) not in memory.names():
        raise PersonalmError(f"avatar '{avatar}' does not exist; make it with `personalm avatar create {avatar} FILES`")
    train_adapter = latest(memory.store, avatar) is not None if adapter is None else adapter
    return _run(memory, avatar, "update", sources, speakers, chunking, options or VoiceOptions(), train_adapter,
                hooks or Hooks())  # fmt: skip


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One create or update of an avatar at a time (a second one fails at once, in one line)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PersonalmError(f"another create or update of avatar '{root.name}' is running") from None
        yield


def _run(memory: AvatarMemory, avatar: str, kind: str, sources: Sequence[str | Path], speakers: Sequence[str],
         chunking: Chunking, options: VoiceOptions, train_adapter: bool, hooks: Hooks) -> Outcome:  # fmt: skip
    files = check_sources(sources, avatar, speakers)
    root = adapter_root(memory.store, avatar)
    with _locked(root):
        parent = latest(memory.store, avatar)
        work = root / WORK
        wanted = {"kind": kind, "version": (parent.version if parent else 0) + 1, "adapter": train_adapter,
                  "sources": sorted(str(p.resolve()) for p in files), "speakers": sorted(speakers),
                  "chunking": [chunking.max_chars, chunking.overlap], "options": asdict(options)}  # fmt: skip
        state = _read_state(work)
        if state is not None and parent is not None and state["version"] <= parent.version:
            shutil.rmtree(work)  # published, then killed before the folder went: nothing left to do there
            state = None
        if state is not None and state["kind"] != kind:
            raise PersonalmError(f"avatar '{avatar}' has an unfinished {state['kind']}: run `personalm avatar "
                                 f"{state['kind']} {avatar} ...` again with the same files to finish it")  # fmt: skip
        if state is not None and any(state.get(k) != v for k, v in wanted.items()):
            hooks.log(f"discarding an unfinished {state.get('kind', 'job')} with other arguments")
            shutil.rmtree(work)
            state = None
        if state is not None and state["done"]:
            hooks.log(f"resuming: {', '.join(state['done'])} already done")
        if state is None:  # what was stored before: what the job adds is its window's, even across a kill
            before = [s.key for s in memory.store.sources(avatar)] if avatar in memory.names() else []
            state = wanted | {"done": [], "started_at": time.time(), "sources_before": before}
            _write_state(work, state)
        stages = ["ingest", "profile"] + (["data", "train", "publish"] if train_adapter else [])
        for number, stage in enumerate(stages, start=1):
            if stage in state["done"]:
                continue
            hooks.log(f"[{number}/{len(stages)}] {stage}")
            if stage == "ingest":
                state["ingested"] = _ingest(memory, avatar, files, speakers, chunking, hooks, state["sources_before"])
            elif stage == "profile" and hooks.profile is not None:
                hooks.profile(memory, avatar)
            elif stage == "data":
                state["window"] = _data(memory, avatar, work, parent, options, state["version"])
                if not state["window"]["train_ids"]:
                    shutil.rmtree(work)
                    if parent is None:
                        raise PersonalmError(f"avatar '{avatar}' has no utterances to train on (a passage needs "
                                             "two sentences, a chat message what was said before it)")  # fmt: skip
                    hooks.log(f"no new utterances to train on: {parent.label} stays the latest")
                    return Outcome(avatar, state["ingested"], parent, False)
            elif stage == "train":
                state["trained"] = _train(work, parent, options, hooks)
            elif stage == "publish":
                version = _publish(memory.store, avatar, root, work, parent, options, state)
                shutil.rmtree(work)
                return Outcome(avatar, state["ingested"], version, True)
            state["done"].append(stage)
            _write_state(work, state)
        shutil.rmtree(work, ignore_errors=True)
        return Outcome(avatar, state["ingested"], parent, False)


def _read_state(work: Path) -> dict[str, Any] | None:
    path = work / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_state(work: Path, state: dict[str, Any]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(work / STATE)


def _ingest(memory: AvatarMemory, avatar: str, files: list[Path], speakers: Sequence[str], chunking: Chunking,
            hooks: Hooks, before: list[str]) -> dict[str, Any]:  # fmt: skip
    """Ingest (skipping files and chunks already stored); the sources added since `before` are recorded."""
    with hooks.bar(f"ingesting into {avatar}", len(files)) as advance:
        report = memory.ingest(avatar, files, speakers, chunking, advance)
    new = [s.path for s in memory.store.sources(avatar) if s.key not in set(before)]
    hooks.log(f"{avatar}: {report.files} files ({report.skipped_files} already ingested), {report.added} new "
              f"memories, {report.duplicates} duplicates skipped")  # fmt: skip
    return {"files": report.files, "skipped_files": report.skipped_files, "added": report.added,
            "duplicates": report.duplicates, "new_sources": new}  # fmt: skip


def _utterances(memory: AvatarMemory, avatar: str) -> dict[int, tuple[str, float | None]]:
    """Every current utterance: id → (content hash, timestamp)."""
    found: dict[int, tuple[str, float | None]] = {}
    offset = 0
    while page := memory.list(avatar, "utterance", PAGE, offset):
        offset += len(page)
        found.update({m.id: (m.key, m.ts) for m in page})
    return found


def _held_out(ids: list[int], keys: dict[int, tuple[str, float | None]], share: float, seed: int) -> set[int]:
    """The window's held-out utterances: the share with the smallest seeded content hashes (the same
    ones however often the job runs), at least one when the window has two or more and share > 0."""
    if share <= 0 or len(ids) < 2:
        return set()
    count = min(len(ids) - 1, max(1, round(share * len(ids))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}\x00{keys[i][0]}".encode()).hexdigest())
    return set(ranked[:count])


def _earlier_training(store: MemoryStore, avatar: str) -> set[int]:
    """Utterance ids earlier versions trained on as new rows (their windows)."""
    ids: set[int] = set()
    for version in adapter_versions(store, avatar):
        window = Path(version.path) / WINDOW
        if window.is_file():
            ids.update(json.loads(window.read_text())["train_ids"])
    return ids


def _data(memory: AvatarMemory, avatar: str, work: Path, parent: AdapterVersion | None, options: VoiceOptions,
          number: int) -> dict[str, Any]:  # fmt: skip
    """The window's rows: utterances newer than the parent's window, less a held-out share, plus
    (for an update) a replay share of rows earlier versions trained on. Written to WORK."""
    utterances = _utterances(memory, avatar)
    rows = {int(row["id"]): row for row in training_examples(memory, avatar)}
    since = parent.last_id if parent is not None and parent.last_id is not None else -1
    window = sorted(i for i in utterances if i > since)
    usable = [i for i in window if i in rows]
    heldout = _held_out(usable, utterances, options.heldout, options.seed)
    train_ids = [i for i in usable if i not in heldout]
    replay_ids: list[int] = []
    if parent is not None and options.replay > 0 and train_ids:
        earlier = sorted(i for i in _earlier_training(memory.store, avatar) if i in rows)
        wanted = min(len(earlier), round(len(train_ids) * options.replay / (1 - options.replay)))
        replay_ids = sorted(random.Random(options.seed + number).sample(earlier, wanted))
    work.mkdir(parents=True, exist_ok=True)
    write_rows(work / TRAIN_ROWS, [rows[i] for i in train_ids + replay_ids])
    write_rows(work / HELDOUT, [rows[i] for i in sorted(heldout)])
    stamps = [utterances[i][1] for i in window if utterances[i][1] is not None]
    return {"train_ids": train_ids, "replay_ids": replay_ids, "heldout_ids": sorted(heldout),
            "utterances": len(window), "first_id": window[0] if window else None,
            "last_id": max(utterances) if utterances else None,
            "time_range": [min(stamps), max(stamps)] if stamps else None}  # fmt: skip


def train_config(rows: Path, out: Path, options: VoiceOptions, parent: AdapterVersion | None = None):
    """How a voice version trains on `rows` into `out` (a TrainConfig): a first version from the
    options' base, rank and alpha; an update from its parent's weights with the parent's base, rank
    and alpha. The likeness study trains its voice adapters with this too."""
    from personalm.train.loop import TrainConfig

    base, rank, alpha = (parent.base, parent.rank, parent.alpha) if parent else (options.model, options.rank,
                                                                                 options.alpha)  # fmt: skip
    return TrainConfig(
        data=str(rows), out=str(out), model=base, rank=rank, alpha=alpha, lr=options.lr, epochs=options.epochs,
        max_steps=options.max_steps, batch_size=options.batch_size, max_len=options.max_len,
        save_every=options.save_every, seed=options.seed, threads=options.threads,
        init_adapter=parent.path if parent else None,
    )  # fmt: skip


def train_adapter(rows: Path, out: Path, options: VoiceOptions, parent: AdapterVersion | None = None,
                  trainer: Callable[[Any], Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a voice adapter on `rows` into `out` with `trainer` (train.loop.train by default): a
    finished run with the same settings is kept, a killed one resumes from its last checkpoint.
    Returns the trainer's record of the run (train.loop.read_run)."""
    from personalm.train.loop import finished_run, read_run, train

    config = train_config(rows, out, options, parent)
    if not finished_run(config):
        (trainer or train)(config)
    return read_run(out)


def _train(work: Path, parent: AdapterVersion | None, options: VoiceOptions, hooks: Hooks) -> dict[str, Any]:
    """Train (or, after a kill, resume from the last checkpoint) into WORK/train."""
    summary = train_adapter(work / TRAIN_ROWS, work / TRAINED, options, parent, hooks.train)
    return {"steps": summary["steps"], "seconds": summary["seconds"], "final_loss": summary["final_loss"],
            "base": summary["config"]["model"], "rank": summary["config"]["rank"],
            "alpha": summary["config"]["alpha"]}  # fmt: skip


def _publish(store: MemoryStore, avatar: str, root: Path, work: Path, parent: AdapterVersion | None,
             options: VoiceOptions, state: dict[str, Any]) -> AdapterVersion:  # fmt: skip
    """Move the finished adapter to ROOT/vN (one rename), then record it: the switch to the new
    version is that one settings write. A folder left by a run killed between the two is reused."""
    number, window, trained = state["version"], state["window"], state["trained"]
    final = root / f"v{number}"
    staged = work / TRAINED
    if staged.is_dir():
        (staged / WINDOW).write_text(json.dumps({k: window[k] for k in ("train_ids", "replay_ids", "heldout_ids")})
                                     + "\n")  # fmt: skip
        shutil.copyfile(work / HELDOUT, staged / HELDOUT)
        if final.exists():  # published by a discarded earlier attempt, never recorded
            shutil.rmtree(final)
        staged.rename(final)
    version = AdapterVersion(
        version=number, path=str(final.resolve()), base=trained["base"], rank=trained["rank"],
        alpha=trained["alpha"], parent=parent.version if parent else None, created_at=time.time(),
        sources=state["ingested"]["new_sources"], utterances=window["utterances"], trained=len(window["train_ids"]),
        replayed=len(window["replay_ids"]), heldout=len(window["heldout_ids"]), first_id=window["first_id"],
        last_id=window["last_id"], time_range=window["time_range"], steps=trained["steps"],
        seconds=trained["seconds"], final_loss=trained["final_loss"],
        extra={"lr": options.lr, "max_len": options.max_len, "replay": options.replay, "heldout": options.heldout},
    )  # fmt: skip
    record(store, avatar, version)
    return version


def record(store: MemoryStore, avatar: str, version: AdapterVersion) -> None:
    """Publish `version` as the avatar's latest: one settings write, the switch readers see."""
    settings = store.get_settings(avatar)
    recorded = settings.get(SETTINGS_KEY, {}).get("versions", [])
    if any(v["version"] >= version.version for v in recorded):
        raise PersonalmError(f"avatar '{avatar}' already has a version {version.label} or later")
    store.set_settings(avatar, settings | {SETTINGS_KEY: {"versions": [*recorded, version.to_dict()]}})
