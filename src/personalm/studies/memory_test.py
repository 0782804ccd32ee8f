"""`personalm avatar memory-test`: does the avatar's memory keep up with a person whose facts
change, who takes things back and who repeats themselves, over many conversations?

Scripted histories, generated (seeded) from persona sets: each person is a persona_chat profile
(its lines are told as background, its conversation lines as chit-chat) plus PrefEval preferences,
and two facts that change over the weeks (where they live, their job, a favourite food, colour or
sport: stated, then changed once or twice), two facts they take back (a pet, a game, a language:
stated, then retracted by "Please forget that ..." or by saying it no longer holds), and two
preferences stated and later repeated. One conversation a week; every message goes through the
memory as a chat turn would (facts extracted by the embedded model, the rules as fallback).

Then probes, each a multiple-choice question answered by the embedded model as the person
(options scored by likelihood, calibrated by each option's likelihood after a content-free
prompt, Holtzman et al. 2021; "I don't know." is always an option):

* latest: a changed fact, asked now; right when the latest value is chosen;
* as_of: a changed fact, asked about a date when it had an earlier value; right when that value is chosen;
* retracted: a fact taken back; *asserted* when the retracted statement is chosen (lower is better);
* kept: a preference stated (and repeated), asked now.

Three memories answer the same probes with the same model and scorer:

* versioned: this memory (updates supersede, forget requests retract, `as_of` reads the past);
* overwrite: the behaviour before versions were kept: an update overwrites, a negation deletes the
  old fact and drops the new one, requests to forget are not understood, and there is no past to read
  (nor anything taken back to consult when answering);
* stuffing: no memory store, every past message in the context (dated, oldest first), cut from
  the oldest end to fit `window` tokens.

Accuracies carry 95% bootstrap intervals (eval.bootstrap) and the differences to each baseline
paired intervals over the same probes. Nothing here was tuned on these probes: the scorer, the
templates and the thresholds of memory_update were fixed before the first run. The chat's rule for
retracted facts came after seed 0's misses, so seed 1 (`--seed 1`) is its held-out run; its rule for
a stated denial came after seed 2's (`--seed 2 --people 48`), so seed 3 (`--seed 3 --people 48`) is
that rule's held-out run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from personalm import report
from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import AvatarChat
from personalm.avatars.facts import Extraction, ModelFactExtractor, content_words, split_retractions
from personalm.avatars.ingest import memory_key
from personalm.avatars.memory_update import NEGATION, decide, learn, similar_facts
from personalm.avatars.sqlite_store import SQLiteStore
from personalm.avatars.store import NewMemory
from personalm.errors import PersonalmError
from personalm.eval.bootstrap import bootstrap_mean, paired_bootstrap
from personalm.eval.prefeval import CONTENT_FREE, load_prefeval
from personalm.models.base import Message, TextModel
from personalm.models.hf import logits_at
from personalm.studies.harness import Study

Log = Callable[[str], None]
DONT_KNOW = "I don't know."
START = datetime(2024, 1, 1, 9, 0, tzinfo=UTC).timestamp()
WEEK, DAY, MINUTE = 7 * 86400, 86400, 60
KINDS = ("latest", "as_of", "retracted", "kept")
STATE_KINDS = ("latest", "as_of", "retracted")
VERSION = 2
"""Bumped when the scripts, the memories or the scoring change, so cached answers are not reused."""
CONDITIONS = ("versioned", "overwrite", "stuffing")
REQUIRED = ("persona_chat/valid.csv", "prefeval/mcq_options")

CITIES = ("Lisbon", "Porto", "Madrid", "Vienna", "Oslo", "Dublin", "Prague", "Boston", "Denver", "Toronto", "Kyoto",
          "Seoul", "Nairobi", "Lima", "Perth", "Glasgow", "Munich", "Austin", "Seattle", "Helsinki")  # fmt: skip
JOBS = ("a teacher", "a nurse", "an engineer", "a baker", "a lawyer", "a pilot", "an architect", "a chef",
        "a librarian", "a plumber", "a dentist", "a journalist", "a farmer", "an accountant")  # fmt: skip
FOODS = ("sushi", "lasagna", "tacos", "ramen", "paella", "curry", "pizza", "dumplings", "falafel", "risotto")
COLOURS = ("blue", "green", "red", "yellow", "purple", "orange", "teal", "black", "white", "pink")
SPORTS = ("football", "basketball", "cricket", "rugby", "volleyball", "baseball", "hockey", "cycling", "rowing")
ANIMALS = ("dog", "cat", "parrot", "rabbit", "hamster", "turtle")
PET_NAMES = ("Rex", "Milo", "Luna", "Bella", "Oscar", "Coco", "Max", "Daisy", "Toby", "Nala")
GAMES = ("chess", "tennis", "golf", "poker", "squash", "badminton", "bridge", "darts")
LANGUAGES = ("Spanish", "Japanese", "German", "Italian", "Korean", "Portuguese", "Swahili", "Greek")
TOPICS = {
    "education_learning_styles": "learning", "entertain_games": "games", "entertain_shows": "shows and movies",
    "lifestyle_beauty": "beauty products", "lifestyle_fit": "exercise", "pet_ownership": "pets",
    "shop_fashion": "clothes", "shop_motors": "cars", "travel_activities": "travel activities",
    "travel_restaurant": "restaurants",
}  # fmt: skip


@dataclass
class MemoryTestConfig:
    data: Path
    out: Path = Path("reports/memory-test")
    model: str | None = None
    people: int = 16
    conversations: int = 5
    window: int = 2048
    seed: int = 0
    quick: bool = False


@dataclass(frozen=True)
class Slot:
    """A fact with one value at a time, stated and then changed."""

    name: str
    state: str
    change: str
    option: str
    question: str
    question_past: str
    values: tuple[str, ...]

    def question_then(self, date: str) -> str:
        return f"{self.question_past[:-1]} on {date}?"


SLOTS = (
    Slot("home", "I live in {v}.", "I moved to {v}.", "I live in {v}.", "Where do you live?",
         "Where did you live?", CITIES),
    Slot("job", "I work as {v}.", "I work as {v} now.", "I work as {v}.", "What do you do for a living?",
         "What did you do for a living?", JOBS),
    Slot("food", "My favourite food is {v}.", "My favourite food is {v} now.", "My favourite food is {v}.",
         "What is your favourite food?", "What was your favourite food?", FOODS),
    Slot("colour", "My favourite colour is {v}.", "My favourite colour is {v} now.", "My favourite colour is {v}.",
         "What is your favourite colour?", "What was your favourite colour?", COLOURS),
    Slot("sport", "My favourite sport is {v}.", "My favourite sport is {v} now.", "My favourite sport is {v}.",
         "What is your favourite sport?", "What was your favourite sport?", SPORTS),
)  # fmt: skip


@dataclass(frozen=True)
class Fact:
    """A fact that can be taken back: how it is stated, negated, asked about, asserted and denied."""

    state: str
    negate: str
    question: str
    asserted: str
    denied: str
    core: str  # the word a statement of it must contain


def retractable(kind: str, rng: random.Random) -> Fact:
    if kind == "pet":
        animal, name = rng.choice(ANIMALS), rng.choice(PET_NAMES)
        return Fact(f"I have a {animal} named {name}.", f"I don't have a {animal} anymore.", f"Do you have a {animal}?",
                    f"Yes, I have a {animal} named {name}.", f"No, I don't have a {animal}.", animal)  # fmt: skip
    if kind == "game":
        game = rng.choice(GAMES)
        return Fact(f"I play {game} every weekend.", f"I don't play {game} anymore.", f"Do you play {game}?",
                    f"Yes, I play {game} every weekend.", f"No, I don't play {game}.", game)  # fmt: skip
    language = rng.choice(LANGUAGES)
    return Fact(f"I am learning {language}.", f"I stopped learning {language}.", f"Are you learning {language}?",
                f"Yes, I am learning {language}.", f"No, I am not learning {language}.", language)  # fmt: skip


@dataclass
class Turn:
    conversation: int
    at: float
    text: str


@dataclass
class Probe:
    """One question: its options in the order shown, the right one (-1: any but `asserted`), the
    option that asserts a retracted fact (-1: none), and the moment asked about (None: now), then
    asked of a memory that reads the past as the question without its date (`asked`, the date
    going in as `as_of`, as `?as_of=` takes it). `value`: the word the right memory holds (for
    retracted: the word of the fact that must not be held), `others`: the other stated values."""

    avatar: str
    kind: str
    question: str
    options: list[str]
    answer: int
    asserted: int = -1
    as_of: float | None = None
    detail: str = ""
    asked: str = ""
    value: str = ""
    others: list[str] = field(default_factory=list)


@dataclass
class Script:
    avatar: str
    turns: list[Turn] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)


def date_of(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d")


def read_personas(data: Path) -> list[tuple[list[str], list[str]]]:
    """(profile lines, the person's lines of its conversation) of every persona_chat row."""
    path = data / "persona_chat" / "valid.csv"
    people = []
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            profile = [" ".join(line.split()) for line in (row.get("user 1 personas") or "").splitlines()]
            talk = (row.get("Best Generated Conversation") or "").splitlines()
            said = [line.split(":", 1)[1].strip() for line in talk if line.startswith("User 1:") and len(line) > 16]
            profile = [p for p in profile if 10 <= len(p) <= 120]
            if len(profile) >= 3 and len(said) >= 3:
                people.append((profile, said))
    if not people:
        raise PersonalmError("no usable persona_chat rows (profiles and conversations)", source=str(path))
    return people


def scripts(config: MemoryTestConfig) -> list[Script]:
    """The scripted histories and their probes, all drawn from one seeded generator."""
    rng = random.Random(config.seed)
    people = read_personas(config.data)
    prefs: dict[str, list[str]] = {}
    for item in load_prefeval(config.data / "prefeval" / "mcq_options"):
        if item.preference.startswith("I ") and len(item.preference) <= 200:
            prefs.setdefault(item.topic, []).append(item.preference)
    prefs = {t: sorted(set(p)) for t, p in prefs.items() if len(set(p)) >= 3}
    if not prefs:
        raise PersonalmError("no usable PrefEval preferences", source=str(config.data / "prefeval"))
    chosen = rng.sample(people, min(config.people, len(people)))
    return [script(f"person{i}", profile, said, prefs, rng, config.conversations)
            for i, (profile, said) in enumerate(chosen)]  # fmt: skip


def script(avatar: str, profile: list[str], said: list[str], prefs: dict[str, list[str]], rng: random.Random,
           conversations: int) -> Script:  # fmt: skip
    """One person's history (messages by conversation) and the probes asked after it."""
    out = Script(avatar)
    plan: list[list[str]] = [[] for _ in range(conversations)]
    last = conversations - 1
    for line in profile:
        plan[rng.randrange(2)].append(line)
    for conversation in range(conversations):
        plan[conversation].append(rng.choice(said))
    for slot in rng.sample(SLOTS, 2):
        changes = 2 if conversations >= 4 and rng.random() < 0.5 else 1
        values = rng.sample(slot.values, changes + 2)  # the values it takes, and one never stated
        at = sorted(rng.sample(range(1, conversations), changes))
        first = rng.randrange(0, at[0])
        plan[first].append(slot.state.format(v=values[0]))
        for step, conversation in enumerate(at, start=1):
            plan[conversation].append(slot.change.format(v=values[step]))
        stated, never = values[: changes + 1], values[changes + 1]
        timeline = [first, *at]
        options = [slot.option.format(v=v) for v in [*stated, never]] + [DONT_KNOW]
        core = [v.split()[-1] for v in stated]  # "an engineer": engineer
        out.probes.append(Probe(avatar, "latest", slot.question, options, changes, detail=slot.name,
                                asked=slot.question, value=core[-1], others=core[:-1]))  # fmt: skip
        then = rng.randrange(timeline[0], timeline[-1])  # a week whose value was not the latest
        held = max(i for i, c in enumerate(timeline) if c <= then)
        moment = START + then * WEEK + DAY
        out.probes.append(Probe(avatar, "as_of", slot.question_then(date_of(moment)), options, held, as_of=moment,
                                detail=slot.name, asked=slot.question_past, value=core[held],
                                others=[c for i, c in enumerate(core) if i != held]))  # fmt: skip
    for number, kind in enumerate(rng.sample(["pet", "game", "language"], 2)):
        fact = retractable(kind, rng)
        stated = rng.randrange(0, last)
        taken_back = rng.randrange(stated + 1, conversations)
        plan[stated].append(fact.state)
        forget = (number + rng.randrange(2)) % 2 == 0
        plan[taken_back].append(
            f"Please forget that {fact.state[0].lower()}{fact.state[1:]}" if forget else fact.negate
        )
        options = [fact.asserted, fact.denied, DONT_KNOW]
        out.probes.append(Probe(avatar, "retracted", fact.question, options, -1, asserted=0, asked=fact.question,
                                detail=f"{kind}, {'forget' if forget else 'negation'}", value=fact.core))  # fmt: skip
    for topic in rng.sample(sorted(prefs), min(2, len(prefs))):
        mine, *others = rng.sample(prefs[topic], 3)
        stated = rng.randrange(0, last)
        plan[stated].append(mine)
        plan[rng.randrange(stated + 1, conversations)].append("As I said, " + mine[0].lower() + mine[1:])
        out.repeated.append(mine)
        question = f"What do you prefer when it comes to {TOPICS.get(topic, topic.replace('_', ' '))}?"
        out.probes.append(Probe(avatar, "kept", question, [mine, *others, DONT_KNOW], 0, detail=topic, asked=question))
    for conversation, messages in enumerate(plan):
        rng.shuffle(messages)
        start = START + conversation * WEEK
        out.turns += [Turn(conversation, start + i * MINUTE, text) for i, text in enumerate(messages)]
    for probe in out.probes:  # the options in a seeded order
        order = list(range(len(probe.options)))
        rng.shuffle(order)
        probe.options = [probe.options[i] for i in order]
        probe.answer = order.index(probe.answer) if probe.answer >= 0 else -1
        probe.asserted = order.index(probe.asserted) if probe.asserted >= 0 else -1
    return out


class Extracted:
    """Extractions computed beforehand in batches (the model batches them), served per message."""

    def __init__(self, found: dict[str, Extraction]):
        self.found = found

    def extraction(self, message: str) -> Extraction:
        return self.found[message]

    def extract(self, message: str) -> list[str]:
        return self.found[message].facts


class Remembered:
    """An embedder that embeds in batches once (`warm`) and serves repeats from memory: the memory
    update embeds one fact at a time, which costs MiniLM a call each."""

    def __init__(self, embedder: Any):
        self.embedder, self.name, self.cache = embedder, embedder.name, {}

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def warm(self, texts: list[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embedder.embed(missing), strict=True))

    def embed(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        self.warm(list(texts))
        return np.stack([self.cache[t] for t in texts])


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def extract_all(model: TextModel, histories: list[Script], log: Log) -> dict[str, Extraction]:
    """Every message as this memory reads it (requests to forget taken out) and as the memory
    before versions read it (the whole message), extracted once each."""
    texts = {t.text for s in histories for t in s.turns}
    wanted = sorted(texts | {split_retractions(t)[0] for t in texts} - {""})
    log(f"memory test: extracting facts from {len(wanted)} distinct messages with the model")
    found = ModelFactExtractor(model).extractions(wanted)
    return dict(zip(wanted, found, strict=True))


class OverwriteMemory(AvatarMemory):
    """The memory before versions were kept, for reading: a deleted row was gone, so there is no
    fact taken back to consult when answering (the store underneath keeps it, unread)."""

    def taken_back(self, avatar: str, vector: np.ndarray, as_of: float | None = None) -> None:
        return None


def overwrite_apply(memory: AvatarMemory, avatar: str, facts: list[str]) -> list[str]:
    """The memory update before versions were kept: the same decisions, but a negation deleted the
    old fact and dropped the new one, and an update overwrote (only the current rows are ever read).
    Returns the facts judged duplicates of a stored one."""
    duplicates = []
    for fact in facts:
        vector, similar = similar_facts(memory, avatar, fact)
        update = decide(fact, similar)
        new = NewMemory("fact", fact, memory_key("fact", fact), vector)
        if update.op == "UPDATE" and update.rule.startswith("negation"):
            memory.store.delete(avatar, [update.target])
        elif update.op == "UPDATE":
            memory.store.update(avatar, update.target, new)
        elif update.op == "ADD":
            memory.store.add(avatar, [new])
        else:
            duplicates.append(fact)
    return duplicates


def build(memory: AvatarMemory, clock: Clock, histories: list[Script], found: dict[str, Extraction],
          versioned: bool) -> dict[str, Any]:  # fmt: skip
    """Tell every message to the memory in order, at its scripted time."""
    extractor, paths, ops, merged = Extracted(found), Counter(), Counter(), []
    for history in histories:
        for turn in history.turns:
            clock.now = turn.at
            if versioned:
                learned = learn(memory, history.avatar, turn.text, extractor, ts=turn.at)
                paths[learned.extractor or "none"] += 1
                ops.update(u.op for u in learned.updates)
                merged += [[history.avatar, u.fact] for u in learned.updates if u.op == "NONE" and u.target]
            else:
                facts = found[turn.text].facts if turn.text in found else []
                merged += [[history.avatar, f] for f in overwrite_apply(memory, history.avatar, facts)]
    return {"extraction_paths": dict(paths), "operations": dict(ops), "duplicates": merged}


def memory_checks(memory: AvatarMemory, path: Path, histories: list[Script], found: dict[str, Extraction],
                  duplicates: list[list[str]]) -> dict[str, Any]:  # fmt: skip
    """No stated fact lost: every extracted fact has a version of its own words, or (versioned
    memory) was judged a duplicate of a stored one and recorded nothing; repeated statements
    recorded once."""
    store = memory.store
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT avatar, text FROM memories").fetchall()
    versions = {(a, t) for a, t in rows}
    nothing = Extraction([], "")
    stated = {(h.avatar, f) for h in histories for t in h.turns
              for f in found.get(split_retractions(t.text)[0], nothing).facts}  # fmt: skip
    repeated = Counter((a, t) for a, t in rows)
    verbatim = stated & versions
    merged = (stated - verbatim) & {(a, f) for a, f in duplicates}
    return {
        "stated_facts": len(stated),
        "stated_facts_kept": len(verbatim),
        "stated_facts_merged": len(merged),
        "stated_facts_lost": len(stated - verbatim - merged),
        "versions": len(rows),
        "current": sum(store.count(h.avatar) for h in histories),
        "repeated_statements": sum(len(h.repeated) for h in histories),
        "recorded_twice": sum(1 for h in histories for p in h.repeated if repeated[(h.avatar, p)] > 1),
        "integrity": store.integrity(),
    }


def stuffed(who: str, history: Script, question: str, model: TextModel, window: int) -> list[Message]:
    """Every message said before the probes, dated, oldest first, cut from the oldest end to fit."""
    lines = [f"[{date_of(t.at)}] {t.text}" for t in history.turns]
    head = (f"You are {who}. Answer in the first person as {who}. Everything you have told your assistant, "
            "oldest first:\n")  # fmt: skip
    tail = "\n\nUse only what you said. If it does not answer the question, say you don't know."
    while True:
        messages = [
            {"role": "system", "content": head + "\n".join(lines) + tail},
            {"role": "user", "content": question},
        ]
        if len(model.encode_prompt(messages)) + 48 <= window or not lines:
            return messages
        lines = lines[1:]


def contexts(condition: str, probes: list[Probe], memories: dict[str, AvatarMemory], histories: dict[str, Script],
             model: TextModel, window: int) -> list[list[Message] | str | None]:  # fmt: skip
    """What the model sees for each probe, or (a string) the reply memory gives without the model:
    a denial the person stated, or the avatar's "I don't know" (None)."""
    out = []
    for probe in probes:
        if condition == "stuffing":
            out.append(stuffed(probe.avatar.capitalize(), histories[probe.avatar], probe.question, model, window))
            continue
        chat = AvatarChat(memories[condition], probe.avatar, model)
        # the overwrite memory cannot read the past: it gets the dated question, as stuffing does
        prepared = chat.prepare(probe.asked, probe.as_of) if condition == "versioned" else chat.prepare(probe.question)
        out.append(prepared.messages if prepared.messages is not None else prepared.answer)
    return out


def shared_context_scores(model: Any, contexts: list[list[Message]], options: list[list[str]]) -> list[list[float]]:
    """Total log-probability of each option after its context, every option of one context in
    one row: the context runs once and a 4D mask lets each option see the context and itself only,
    its positions continuing from the context (as `train.data.collate_pairs` packs DPO pairs), so
    each option scores what context + option alone would. Rows are batched up to a token budget."""
    rows = []
    for context, choices in zip(contexts, options, strict=True):
        ids = model.encode_prompt(context)
        rows.append((ids, [model.tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in choices]))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + sum(map(len, rows[i][1])))
    out: list[list[float]] = [[] for _ in rows]
    batch: list[int] = []
    for i in [*order, None]:
        width = None if i is None else len(rows[i][0]) + sum(map(len, rows[i][1]))
        if batch and (i is None or width * (len(batch) + 1) > SCORE_TOKENS):
            with torch.inference_mode():
                _score_rows(model, [rows[j] for j in batch], batch, out)
            batch = []
        if i is not None:
            batch.append(i)
    return out


SCORE_TOKENS = 8192
"""Tokens per scoring forward (rows x width): bounds the activations of one batch."""


def _score_rows(model: Any, rows: list[tuple[list[int], list[list[int]]]], indices: list[int], out: list) -> None:
    """One batch of packed rows: each option's total log-probability into `out` at its index."""
    width = max(len(ctx) + sum(map(len, opts)) for ctx, opts in rows)
    pad = model.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    at_row, at_col, labels, which = [], [], [], []
    for r, (ctx, opts) in enumerate(rows):
        seq, pos, seg = list(ctx), list(range(len(ctx))), [0] * len(ctx)
        for k, opt in enumerate(opts, start=1):
            start = len(seq)
            for t, token in enumerate(opt):
                at_row.append(r)
                at_col.append(len(ctx) - 1 if t == 0 else start + t - 1)
                labels.append(token)
                which.append((r, k - 1))
            seq += opt
            pos += range(len(ctx), len(ctx) + len(opt))
            seg += [k] * len(opt)
        ids[r, : len(seq)] = torch.tensor(seq)
        positions[r, : len(seq)] = torch.tensor(pos)
        segment[r, : len(seq)] = torch.tensor(seg)
    query, key = segment[:, :, None], segment[:, None, :]
    visible = ((key == query) | (key == 0)) & (key >= 0) & (positions[:, None, :] <= positions[:, :, None])
    visible |= torch.eye(width, dtype=torch.bool)
    logits = logits_at(model.model, ids, visible[:, None], (torch.tensor(at_row), torch.tensor(at_col)), positions)
    token = (-F.cross_entropy(logits.float(), torch.tensor(labels), reduction="none")).tolist()
    totals: dict[tuple[int, int], float] = {}
    for key_, value in zip(which, token, strict=True):
        totals[key_] = totals.get(key_, 0.0) + value
    for r, index in enumerate(indices):
        out[index] = [totals[(r, k)] for k in range(len(rows[r][1]))]


def prior_scores(model: Any, texts: list[str], per_row: int = 16) -> dict[str, float]:
    """log P(option | a content-free question) of every option text (calibration, Holtzman et al.)."""
    free = [{"role": "user", "content": CONTENT_FREE}]
    groups = [texts[i : i + per_row] for i in range(0, len(texts), per_row)]
    scores = shared_context_scores(model, [free] * len(groups), groups)
    return {t: v for group, row in zip(groups, scores, strict=True) for t, v in zip(group, row, strict=True)}


def choose(model: Any, probes: list[Probe], seen: list[list[Message] | str | None],
           prior: dict[str, float]) -> list[int]:  # fmt: skip
    """The option each probe's answer picks: best calibrated likelihood; for a reply memory gave
    by itself, the option it says (`reply_option`); "I don't know." unasked."""
    asked = [i for i, context in enumerate(seen) if isinstance(context, list)]
    scores = shared_context_scores(model, [seen[i] for i in asked], [probes[i].options for i in asked])
    by_probe = {
        i: int(np.argmax([s - prior[o] for s, o in zip(row, probes[i].options, strict=True)]))
        for i, row in zip(asked, scores, strict=True)
    }
    by_probe |= {i: reply_option(probes[i].options, reply) for i, reply in enumerate(seen) if isinstance(reply, str)}
    return [by_probe.get(i, p.options.index(DONT_KNOW)) for i, p in enumerate(probes)]


NO_OR_NOT = re.compile(r"^no\b|\bnot\b|n't\b", re.IGNORECASE)


def denies(text: str) -> bool:
    """A statement that something is not so: "No, ...", "not", or a negation memory updates read."""
    return bool(NO_OR_NOT.search(text) or NEGATION.search(text))


def topic_words(text: str) -> set[str]:
    """Content words besides the negation ("I don't play darts anymore." → play, darts)."""
    return content_words(NEGATION.sub(" ", NO_OR_NOT.sub(" ", text)))


def reply_option(options: list[str], reply: str) -> int:
    """The option a reply from memory says: of the options that deny when it denies (affirm when it
    affirms), the one sharing the most topic words with it; "I don't know." when none shares any."""
    said, denied = topic_words(reply), denies(reply)
    ranked = [(len(topic_words(o) & said), -i) for i, o in enumerate(options)
              if o != DONT_KNOW and denies(o) == denied]  # fmt: skip
    best = max(ranked, default=(0, 0))
    return -best[1] if best[0] else options.index(DONT_KNOW)


def memory_state(memory: AvatarMemory, probe: Probe, versioned: bool) -> float:
    """Whether the memory itself holds the right belief, whatever the model then answers: for a
    changed fact, the facts believed (now, or at `as_of` when the memory can read the past) name
    the right value and no other stated one; for a retracted fact, none asserts it any more.
    (Kept preferences are not checked: the model may store them in its own words.)"""
    as_of = probe.as_of if versioned else None
    facts = [m.text for m in memory.list(probe.avatar, "fact", limit=100_000, as_of=as_of)]

    def names(word: str) -> list[str]:
        return [f for f in facts if re.search(rf"\b{re.escape(word)}\b", f, re.IGNORECASE)]

    if probe.kind == "retracted":
        return float(not any(not NEGATION.search(f) for f in names(probe.value)))
    return float(bool(names(probe.value)) and not any(names(other) for other in probe.others))


def outcome(probe: Probe, picked: int) -> float:
    """1 when right (for retracted: when the retracted statement was asserted)."""
    return float(picked == probe.asserted) if probe.kind == "retracted" else float(picked == probe.answer)


def summarize(probes: list[Probe], picks: dict[str, list[int]], seed: int) -> tuple[dict, dict]:
    """Per condition and probe kind: the mean with its interval; and ours minus each baseline."""
    summary: dict[str, dict] = {}
    differences: dict[str, dict] = {}
    for condition, picked in picks.items():
        scores = [outcome(p, c) for p, c in zip(probes, picked, strict=True)]
        summary[condition] = {}
        for kind in KINDS:
            values = [s for s, p in zip(scores, probes, strict=True) if p.kind == kind]
            if values:
                summary[condition][kind] = bootstrap_mean(values, seed=seed).to_dict()
    ours = [outcome(p, c) for p, c in zip(probes, picks["versioned"], strict=True)]
    for baseline in (c for c in picks if c != "versioned"):
        theirs = [outcome(p, c) for p, c in zip(probes, picks[baseline], strict=True)]
        differences[baseline] = {}
        for kind in KINDS:
            mine = [o for o, p in zip(ours, probes, strict=True) if p.kind == kind]
            other = [o for o, p in zip(theirs, probes, strict=True) if p.kind == kind]
            if mine:  # for retracted, lower is better: the difference is baseline minus ours
                a, b = (other, mine) if kind == "retracted" else (mine, other)
                differences[baseline][kind] = paired_bootstrap(a, b, seed=seed).to_dict()
    return summary, differences


def extractions(study: Study, model: TextModel, histories: list[Script], log: Log) -> dict[str, Extraction]:
    """The model's extraction of every message, kept in the study's cache under a hash of the
    messages, the model and the extractor's version (the same messages are never extracted twice)."""
    messages = sorted({t.text for h in histories for t in h.turns})
    key = hashlib.sha256(json.dumps([model.model_id, ModelFactExtractor.version, messages]).encode()).hexdigest()[:12]

    def compute() -> dict[str, list]:
        return {text: [e.facts, e.path] for text, e in extract_all(model, histories, log).items()}

    return {text: Extraction(*kept) for text, kept in study.unit(f"extractions/{key}", compute).items()}


def run(config: MemoryTestConfig, log: Log = lambda message: None) -> dict[str, Any]:
    from personalm.models import load_model
    from personalm.models.embedder import Embedder

    if config.quick:
        config = MemoryTestConfig(**{**asdict(config), "people": min(config.people, 6), "conversations": 4})
    if config.conversations < 3:
        raise PersonalmError("the memory test needs at least 3 conversations per person")
    study = Study(config.out, config, packages=("personalm", "torch", "transformers"))
    histories = scripts(config)
    probes = [p for h in histories for p in h.probes]
    by_avatar = {h.avatar: h for h in histories}
    fingerprint = hashlib.sha256(json.dumps([study.settings, VERSION], sort_keys=True).encode()).hexdigest()[:12]
    log(f"memory test: {len(histories)} people, {sum(len(h.turns) for h in histories)} messages, {len(probes)} probes")
    seconds: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        seconds[name] = round(time.perf_counter() - mark, 1)
        mark = time.perf_counter()

    embedder = Remembered(Embedder())
    with load_model(config.model) if config.model else load_model() as model:
        lap("load")
        found = extractions(study, model, histories, log)
        lap("extract")
        facts = [f for e in found.values() for f in e.facts]
        forgets = [f for h in histories for t in h.turns for f in split_retractions(t.text)[1]]
        embedder.warm(facts + forgets + [p.question for p in probes])
        with tempfile.TemporaryDirectory(prefix="personalm-memory-test-") as tmp:
            clocks = {c: Clock() for c in ("versioned", "overwrite")}
            kinds = {"versioned": AvatarMemory, "overwrite": OverwriteMemory}
            memories = {c: kinds[c](SQLiteStore(Path(tmp) / f"{c}.db", embedder.dimension, clocks[c]), embedder)
                        for c in clocks}  # fmt: skip
            log("memory test: telling every message to both memories")
            built = {c: build(memories[c], clocks[c], histories, found, c == "versioned") for c in memories}
            merged = {c: built[c].pop("duplicates") for c in built}
            checks = {c: memory_checks(memories[c], Path(tmp) / f"{c}.db", histories, found, merged[c])
                      for c in memories}  # fmt: skip
            state = {c: [memory_state(memories[c], p, c == "versioned") if p.kind in STATE_KINDS else 0.0
                         for p in probes] for c in memories}  # fmt: skip
            lap("remember")
            prior = prior_scores(model, sorted({o for p in probes for o in p.options}))
            picks = {}
            for condition in CONDITIONS:
                log(f"memory test: answering {len(probes)} probes from {condition}")
                seen = contexts(condition, probes, memories, by_avatar, model, config.window)
                # cached by what the model was shown, so a change in what memory recalls is never served stale
                shown = hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:12]
                picks[condition] = study.unit(f"{fingerprint}/picks/{condition}-{shown}",
                                              lambda seen=seen: choose(model, probes, seen, prior))  # fmt: skip
                lap(f"answer_{condition}")
            for memory in memories.values():
                memory.close()
    summary, differences = summarize(probes, picks, config.seed)
    results = {
        "people": len(histories),
        "conversations": config.conversations,
        "messages": sum(len(h.turns) for h in histories),
        "probes": dict(Counter(p.kind for p in probes)),
        "window": config.window,
        "model": model.model_id,
        "scorer": f"total log P(option | context, question) - log P(option | {CONTENT_FREE!r})",
        "conditions": summary,
        "differences": differences,
        "memory": {c: built[c] | checks[c] for c in built},
        "memory_state": {
            c: {
                k: bootstrap_mean(
                    [v for v, p in zip(state[c], probes, strict=True) if p.kind == k], seed=config.seed
                ).to_dict()
                for k in STATE_KINDS
            }
            for c in state
        },
        "headline": {
            "latest": summary["versioned"]["latest"],
            "as_of": summary["versioned"]["as_of"],
            "retracted_asserted": summary["versioned"]["retracted"],
        },
        **headline_keys(summary, differences),
        "seconds": seconds,
        "examples": [asdict(p) | {c: p.options[picks[c][i]] for c in CONDITIONS} for i, p in enumerate(probes[:12])],
    }
    title = "Memory test: changed, retracted and repeated facts over many conversations"
    return study.finish(results, title, page(study, results))


def headline_keys(summary: dict, differences: dict) -> dict[str, Any]:
    """Flat keys for each headline rate of this memory and each difference to a baseline, with its
    95% interval (`*_ci`) and item count (`*_items`), as every study's results carry them."""
    out: dict[str, Any] = {}

    def put(name: str, interval: dict) -> None:
        out[name] = round(interval["mean"], 4)
        out[f"{name}_ci"] = [round(interval["low"], 4), round(interval["high"], 4)]
        out[f"{name}_items"] = interval["n"]

    for kind, interval in summary["versioned"].items():
        put("retracted_asserted" if kind == "retracted" else f"{kind}_acc", interval)
    for baseline, kinds in differences.items():
        for kind, interval in kinds.items():
            put(f"{kind}_vs_{baseline}", interval)
    return out


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """The table: one row per condition, one column per probe kind, as mean [low, high] (n)."""
    out = []
    for condition in CONDITIONS:
        row = {"memory": condition}
        for kind in KINDS:
            cell = results["conditions"][condition].get(kind)
            label = "retracted asserted" if kind == "retracted" else kind
            row[label] = f"{cell['mean']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}] (n {cell['n']})" if cell else ""
        out.append(row)
    return out


def page(study: Study, results: dict[str, Any]) -> list[str]:
    fig, axis = report.figure(width=8.0)
    width = 0.26
    for offset, condition in enumerate(CONDITIONS):
        cells = [results["conditions"][condition][k] for k in KINDS]
        means = [c["mean"] for c in cells]
        errors = [[c["mean"] - c["low"] for c in cells], [c["high"] - c["mean"] for c in cells]]
        axis.bar(np.arange(len(KINDS)) + (offset - 1) * width, means, width, yerr=errors, capsize=3, label=condition)
    axis.set_xticks(range(len(KINDS)), ["latest", "as of", "retracted asserted\n(lower is better)", "kept"])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("share of probes (95% interval)")
    axis.legend()
    png = study.save(fig, "memory_test.png")
    memory = results["memory"]["versioned"]
    return [
        report.paragraph(
            f"{results['people']} people, {results['conversations']} conversations each, "
            f"{results['messages']} messages; probes {results['probes']}; scorer: {results['scorer']}; "
            f"stuffing window {results['window']} tokens."
        ),
        report.section("Accuracy by probe kind", report.table(rows(results)), report.image(png)),
        report.section(
            "What the memory itself holds (no model): the right value believed now / then, a retracted fact "
            "no longer held",
            report.table(
                [
                    {
                        "memory": c,
                        **{
                            k: f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}] (n {v['n']})"
                            for k, v in kinds.items()
                        },
                    }
                    for c, kinds in results["memory_state"].items()
                ]
            ),
        ),
        report.section(
            "Versioned minus baseline (paired bootstrap; retracted: baseline minus versioned)",
            report.table(
                [
                    {
                        "baseline": b,
                        **{k: f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for k, d in diffs.items()},
                    }
                    for b, diffs in results["differences"].items()
                ]
            ),
        ),
        report.section(
            "Memory",
            report.paragraph(
                f"stated facts kept in their own words {memory['stated_facts_kept']} of {memory['stated_facts']}, "
                f"judged duplicates of a stored fact {memory['stated_facts_merged']}, lost "
                f"{memory['stated_facts_lost']}; repeated statements "
                f"recorded twice {memory['recorded_twice']} of {memory['repeated_statements']}; {memory['versions']} "
                f"versions, {memory['current']} current; extraction paths {memory['extraction_paths']}; "
                f"operations {memory['operations']}; integrity problems {memory['integrity'] or 'none'}."
            ),
        ),
        report.section(
            "First probes",
            report.table([{k: str(v) for k, v in e.items() if k not in ("avatar",)} for e in results["examples"]]),
        ),
    ]
