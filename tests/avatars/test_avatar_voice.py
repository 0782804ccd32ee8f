"""`avatar create` / `avatar update` / `avatar versions`: the stages, only new text ingested, versions
with their data windows, held-out and replay shares, resuming after a kill (the previous version
serving until the new one is recorded), and one-line errors. The fast tests stand a recording fake in
for the trainer; the slow one trains the real model for a step or two through the CLI and kills it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from personalm.avatars.adapter_data import training_examples
from personalm.avatars.api import AvatarMemory
from personalm.avatars.chunking import Chunking
from personalm.avatars.voice import (
    HELDOUT,
    WINDOW,
    WORK,
    Hooks,
    VoiceOptions,
    adapter_root,
    adapter_versions,
    create,
    latest,
    pick,
    update,
)
from personalm.errors import PersonalmError

EARLY = [
    "I love the sea. The waves calm me every single morning.",
    "My dog is called Rex. He runs along the beach with me.",
    "I teach physics at the village school. My students ask great questions.",
    "Bread from the corner bakery is the best. I buy it warm at seven.",
    "The lighthouse keeper is my oldest friend. We play chess on Sundays.",
    "Storms come in from the west in autumn. I watch them from the pier.",
]
LATER = [
    "We moved to Oslo last spring. The light there is strange in June.",
    "I now teach at a big city school. The classes are twice as large.",
    "Rex hates the snow at first. Now he rolls in it every morning.",
    "The fjord is colder than the sea at home. I still swim in it.",
]
CHUNKING = Chunking(80, 0.0)  # one memory per paragraph


def write_corpus(path: Path, paragraphs: list[str]) -> Path:
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


class FakeTrainer:
    """Writes what the trainer writes (a LoRA adapter folder, last train_config.json) and records
    each config and its training rows; `kill_after` raises KeyboardInterrupt (a kill) mid-run."""

    def __init__(self) -> None:
        self.configs: list = []
        self.rows: list[list[dict]] = []
        self.kill_next = False

    def __call__(self, config):
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        if self.kill_next:
            self.kill_next = False
            raise KeyboardInterrupt
        self.configs.append(config)
        self.rows.append([json.loads(line) for line in open(config.data)])
        (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": config.rank,
                                                             "lora_alpha": config.alpha}))  # fmt: skip
        summary = {"config": asdict(config), "steps": 2, "seconds": 0.5, "final_loss": 1.25}
        (out / "train_config.json").write_text(json.dumps(summary))


@pytest.fixture
def setup(tmp_path, word_hash_embedder):
    memory = AvatarMemory(tmp_path / "memory.db", word_hash_embedder())
    trainer = FakeTrainer()
    stages: list[str] = []
    hooks = Hooks(log=stages.append, train=trainer, profile=lambda m, name: stages.append(f"profile of {name}"))
    yield memory, trainer, hooks, stages
    memory.close()


def test_create_trains_v1_on_own_utterances_and_keeps_a_held_out_share(tmp_path, setup):
    memory, trainer, hooks, stages = setup
    early = write_corpus(tmp_path / "early.txt", EARLY)
    outcome = create(memory, "ann", [early], chunking=CHUNKING, options=VoiceOptions(heldout=0.3), hooks=hooks)
    v1 = outcome.version
    assert outcome.published and v1.label == "v1" and v1.parent is None
    assert [s for s in stages if s.startswith("[")] == ["[1/5] ingest", "[2/5] profile", "[3/5] data", "[4/5] train",
                                                        "[5/5] publish"]  # fmt: skip
    assert "profile of ann" in stages
    usable = len(list(training_examples(memory, "ann")))  # a one-sentence chunk makes no row
    assert v1.utterances == memory.count("ann", "utterance") and usable >= 4
    assert (v1.trained, v1.heldout, v1.replayed) == (usable - round(0.3 * usable), round(0.3 * usable), 0)
    assert v1.sources == [str(early.resolve())] and v1.steps == 2 and v1.final_loss == 1.25
    assert trainer.configs[0].init_adapter is None and len(trainer.rows[0]) == v1.trained
    folder = Path(v1.path)
    assert folder == adapter_root(memory.store, "ann") / "v1" and (folder / "adapter_config.json").is_file()
    window = json.loads((folder / WINDOW).read_text())
    held = [json.loads(line) for line in open(folder / HELDOUT)]
    assert sorted(int(r["id"]) for r in held) == window["heldout_ids"]
    trained_ids = {int(r["id"]) for r in trainer.rows[0]}
    assert trained_ids == set(window["train_ids"]) and not trained_ids & set(window["heldout_ids"])
    assert all(r["messages"][-1]["role"] == "assistant" for r in trainer.rows[0])
    assert not (folder.parent / WORK).exists()
    assert pick(memory.store, "ann", None) == pick(memory.store, "ann", "v1") == v1 == latest(memory.store, "ann")
    assert pick(memory.store, "ann", "base") is None
    with pytest.raises(PersonalmError, match="no adapter version 'v7'"):
        pick(memory.store, "ann", "v7")
    with pytest.raises(PersonalmError, match="already has a voice adapter"):
        create(memory, "ann", [early], chunking=CHUNKING, hooks=hooks)


def test_update_ingests_only_new_text_and_continues_from_the_last_version(tmp_path, setup):
    memory, trainer, hooks, _ = setup
    early = write_corpus(tmp_path / "early.txt", EARLY)
    later = write_corpus(tmp_path / "later.txt", LATER)
    v1 = create(memory, "ann", [early], chunking=CHUNKING, options=VoiceOptions(heldout=0.2), hooks=hooks).version
    outcome = update(memory, "ann", [early, later], chunking=CHUNKING,
                     options=VoiceOptions(heldout=0.25, replay=0.5), hooks=hooks)  # fmt: skip
    v2 = outcome.version
    assert outcome.ingested["skipped_files"] == 1 and outcome.ingested["added"] == len(LATER)
    assert v2.sources == [str(later.resolve())] and v2.parent == 1 and v2.label == "v2"
    new_rows = [r for r in training_examples(memory, "ann") if int(r["id"]) > v1.last_id]
    assert v2.first_id > v1.last_id and v2.utterances == memory.count("ann", "utterance") - v1.utterances
    assert v2.heldout == round(0.25 * len(new_rows)) >= 1 and v2.trained == len(new_rows) - v2.heldout
    assert trainer.configs[1].init_adapter == v1.path
    v1_trained = set(json.loads((Path(v1.path) / WINDOW).read_text())["train_ids"])
    window = json.loads((Path(v2.path) / WINDOW).read_text())
    rows = {int(r["id"]) for r in trainer.rows[1]}
    assert rows == set(window["train_ids"]) | set(window["replay_ids"])
    assert len(window["replay_ids"]) == v2.replayed == min(v2.trained, len(v1_trained)) >= 1  # replay 0.5: 1:1
    assert set(window["replay_ids"]) <= v1_trained
    assert all(i > v1.last_id for i in window["train_ids"])
    assert [v.label for v in adapter_versions(memory.store, "ann")] == ["v1", "v2"]
    assert latest(memory.store, "ann") == v2
    assert Path(v1.path).is_dir()  # every version is kept

    again = update(memory, "ann", [early, later], chunking=CHUNKING, hooks=hooks)
    assert not again.published and again.version == v2 and again.ingested["added"] == 0 and len(trainer.configs) == 2


def test_a_killed_update_leaves_the_previous_version_serving_and_resumes(tmp_path, setup, monkeypatch):
    memory, trainer, hooks, stages = setup
    early = write_corpus(tmp_path / "early.txt", EARLY)
    later = write_corpus(tmp_path / "later.txt", LATER)
    v1 = create(memory, "ann", [early], chunking=CHUNKING, hooks=hooks).version
    trainer.kill_next = True
    with pytest.raises(KeyboardInterrupt):
        update(memory, "ann", [later], chunking=CHUNKING, hooks=hooks)
    assert latest(memory.store, "ann") == v1 == pick(memory.store, "ann", None)
    state = json.loads((adapter_root(memory.store, "ann") / WORK / "state.json").read_text())
    assert state["done"] == ["ingest", "profile", "data"] and state["version"] == 2

    stages.clear()
    original = memory.store.set_settings

    def killed_at_the_switch(avatar, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(memory.store, "set_settings", killed_at_the_switch)
    with pytest.raises(KeyboardInterrupt):  # the new folder is in place, the switch never happened
        update(memory, "ann", [later], chunking=CHUNKING, hooks=hooks)
    assert "resuming: ingest, profile, data already done" in stages and "[1/5] ingest" not in stages
    assert (adapter_root(memory.store, "ann") / "v2").is_dir() and latest(memory.store, "ann") == v1

    monkeypatch.setattr(memory.store, "set_settings", original)
    v2 = update(memory, "ann", [later], chunking=CHUNKING, hooks=hooks).version
    assert v2.label == "v2" and v2.parent == 1 and latest(memory.store, "ann") == v2 and len(trainer.configs) == 2
    assert not (adapter_root(memory.store, "ann") / WORK).exists()


def test_no_adapter_bad_sources_and_names_fail_before_anything_is_written(tmp_path, setup):
    memory, trainer, hooks, _ = setup
    early = write_corpus(tmp_path / "early.txt", EARLY)
    done = create(memory, "bo", [early], chunking=CHUNKING, adapter=False, hooks=hooks)
    assert done.version is None and not trainer.configs and memory.count("bo", "utterance") == len(EARLY)
    assert update(memory, "bo", [early], chunking=CHUNKING, hooks=hooks).version is None  # no adapter: none trained
    (tmp_path / "empty.txt").write_text("")
    for sources, message in (([tmp_path / "nope.txt"], "no such file"), ([tmp_path / "empty.txt"], "empty")):
        with pytest.raises(PersonalmError, match=message):
            create(memory, "cy", [early, *sources], hooks=hooks)
        assert "cy" not in memory.names()
    with pytest.raises(PersonalmError, match="avatar name"):
        create(memory, "../x", [early], hooks=hooks)
    with pytest.raises(PersonalmError, match="does not exist"):
        update(memory, "dee", [early], hooks=hooks)
    with pytest.raises(PersonalmError, match="a share in"):
        VoiceOptions(replay=1.0)


@pytest.mark.slow
def test_cli_create_update_killed_and_resumed_versions_and_chat(tmp_path, cli):
    """The real trainer through the CLI: create (1 step), an update killed after its first
    checkpoint (v1 still the latest), the same update again resuming from the checkpoint, the
    versions listing and a chat answering with the pinned version."""
    store = str(tmp_path / "memory.db")
    early = write_corpus(tmp_path / "early.txt", EARLY)
    later = write_corpus(tmp_path / "later.txt", LATER * 3)
    small = ["--store", store, "--max-len", "192", "--batch-size", "1", "--chunk-chars", "80", "--overlap", "0"]
    created = cli.run("avatar", "create", "ann", str(early), "--max-steps", "1", "--rank", "2", *small, "--json")
    assert created.returncode == 0, str(created)
    assert json.loads(created.stdout.splitlines()[-1])["version"]["steps"] == 1
    assert "[4/5] train" in created.stderr and "[5/5] publish" in created.stderr

    work = tmp_path / "memory-adapters" / "ann" / WORK / "train" / "checkpoints"
    update = ["avatar", "update", "ann", str(early), str(later), "--max-steps", "4", "--save-every", "1", *small]
    proc = subprocess.Popen([*cli.command, *update], env=cli.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(work.glob("step-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the update ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    listed = [
        json.loads(line)
        for line in cli.run("avatar", "versions", "ann", "--store", store, "--json").stdout.splitlines()
    ]
    assert [(v["version"], v["latest"]) for v in listed] == [(1, True)]

    resumed = cli.run(*update, "--json")
    assert resumed.returncode == 0, str(resumed)
    assert "resuming: ingest, profile, data already done" in resumed.stderr and "resumed from step" in resumed.stderr
    v2 = json.loads(resumed.stdout.splitlines()[-1])["version"]
    assert (v2["version"], v2["parent"], v2["steps"], v2["rank"]) == (2, 1, 4, 2)
    assert v2["sources"] == [str(later.resolve())]
    table = cli.run("avatar", "versions", "ann", "--store", store)
    assert table.returncode == 0 and "v1" in table.stdout and "v2" in table.stdout and "latest" in table.stdout

    chat = cli.run("avatar", "chat", "ann", "-M", "Tell me about the sea.", "--no-learn", "--max-tokens", "8",
                   "--temperature", "0", "--version", "v1", "--store", store)  # fmt: skip
    assert chat.returncode == 0 and "voice adapter v1" in chat.stderr and "Ann:" in chat.stdout, str(chat)
