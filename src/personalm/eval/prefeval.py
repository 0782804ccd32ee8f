"""PrefEval's multiple-choice items, and the ways to score their options by likelihood.

An item states a preference, asks a later question, and offers four options of which the first
respects the preference. Options are scored from *passes*: one model.score call over every option
of every question, computed on first use and kept, so scoring only the chosen scorers costs only
their passes. The passes:

* answer: the option as the assistant's reply to the question, memories in the system turn;
* prior: the option after a content-free question (how likely it is regardless of the user);
* channel: the memories and question after the option, the noisy-channel direction;
* stated: the option as the reply to one user turn that states the memories, then asks.

A small model's raw option likelihood mostly measures how common an option's words are, not
whether it fits the user, so a study picks among these scorers on validation items:

* mean / sum: log P(option | memories, question), per token or in total;
* calibrated: log P(option | memories, question) − log P(option | a content-free question), the
  domain-conditional PMI of Holtzman et al. (2021), which cancels how likely the option is anyway;
* channel: log P(memories, question | option), the noisy-channel direction of Min et al. (2022):
  which option best explains what the user said;
* memory_gain / memory_gain_mean: log P(option | memories, question) − log P(option | question),
  how much the memories raise the option, and channel_memory_gain, the same in the channel
  direction (all three defined only with memories).

`choice_accuracy` is the stated-preference framing on its own (mean token log-prob, options
shuffled), the PrefEval score of the PerCE study.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalm.errors import PersonalmError
from personalm.models.base import Prompt, TextModel

CONTENT_FREE = "Answer:"


@dataclass
class PrefEvalItem:
    """A PrefEval question: the preference, the question, and four options (first respects it),
    with the dataset's explanation of what a respecting answer does (empty when not given)."""

    topic: str
    preference: str
    question: str
    options: list[str]
    explanation: str = ""


LAYOUT = "a JSON list of objects with preference, question and classification_task_options (4 options)"


def load_prefeval(folder: str | Path, count: int | None = None, seed: int = 0) -> list[PrefEvalItem]:
    """The items of every topic file (prefeval/mcq_options/*.json): all of them in file order, or
    `count` drawn with `seed`. A file of another layout, or an item with an empty preference or
    question or without four options, is an error naming the file and row (never skipped)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise PersonalmError("no PrefEval topic files (*.json)", source=str(folder))
    items = []
    for path in files:
        try:
            rows = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise PersonalmError(f"not UTF-8 text (byte {err.start + 1})", source=str(path)) from None
        except json.JSONDecodeError as err:
            raise PersonalmError(f"invalid JSON ({err.msg})", source=str(path), line=err.lineno) from None
        if not isinstance(rows, list):
            raise PersonalmError(f"unknown PrefEval layout: expected {LAYOUT}", source=str(path))
        items += [_item(path, number, row) for number, row in enumerate(rows, start=1)]
    if count is None:
        return items
    random.Random(seed).shuffle(items)
    return items[:count]


def _item(path: Path, number: int, row: object) -> PrefEvalItem:
    where = f"item {number}: "
    if not isinstance(row, dict) or not {"preference", "question", "classification_task_options"} <= set(row):
        raise PersonalmError(where + f"unknown PrefEval layout: expected {LAYOUT}", source=str(path))
    for key in ("preference", "question"):
        if not _text(row[key]):
            raise PersonalmError(where + f"empty {key}", source=str(path))
    options = row["classification_task_options"]
    if not isinstance(options, list) or len(options) != 4 or not all(_text(o) for o in options):
        raise PersonalmError(where + "classification_task_options: expected 4 non-empty options", source=str(path))
    explanation = row.get("explanation")
    return PrefEvalItem(path.stem, row["preference"], row["question"], list(options),
                        explanation if isinstance(explanation, str) else "")  # fmt: skip


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


@dataclass
class Question:
    """One multiple-choice question: its options in the order shown and the memories that go with it."""

    question: str
    options: list[str]
    facts: list[str]


@dataclass
class Scored:
    """Log-likelihoods of one pass, one row per question and one column per option."""

    total: np.ndarray
    mean: np.ndarray


def memory_context(facts: list[str]) -> str:
    return "What you remember about the user:\n" + "\n".join(f"- {f}" for f in facts)


def answer_pass(q: Question, memory: bool) -> list[tuple[Prompt, str]]:
    """The option as the assistant's reply to the question (memories in the system turn)."""
    chat = [{"role": "user", "content": q.question}]
    if memory:
        chat.insert(0, {"role": "system", "content": memory_context(q.facts)})
    return [(chat, " " + option) for option in q.options]


def prior_pass(q: Question, memory: bool) -> list[tuple[Prompt, str]]:
    """The option after a content-free question: how likely it is regardless of the user."""
    return [([{"role": "user", "content": CONTENT_FREE}], " " + option) for option in q.options]


def channel_pass(q: Question, memory: bool) -> list[tuple[Prompt, str]]:
    """What the user said (memories and question) after the option."""
    said = (memory_context(q.facts) + "\n" if memory else "") + "Question: " + q.question
    return [(f"Answer: {option}\n", said) for option in q.options]


def stated_pass(q: Question, memory: bool) -> list[tuple[Prompt, str]]:
    """The option as the reply to one user turn that states the memories, then asks the question."""
    chat = [{"role": "user", "content": "\n\n".join([*(q.facts if memory else []), q.question])}]
    return [(chat, option) for option in q.options]


# name -> (requests of one question, whether the pass differs with and without memories)
PASSES: dict[str, tuple[Callable[[Question, bool], list[tuple[Prompt, str]]], bool]] = {
    "answer": (answer_pass, True),
    "prior": (prior_pass, False),
    "channel": (channel_pass, True),
    "stated": (stated_pass, True),
}


class Passes:
    """Passes over a fixed list of questions, each computed once on first use."""

    def __init__(self, model: TextModel, questions: list[Question], log: Callable[[str], None] = lambda m: None):
        self.model, self.questions, self.log = model, questions, log
        self.done: dict[tuple[str, bool], Scored] = {}

    def __call__(self, name: str, memory: bool) -> Scored:
        build, uses_memory = PASSES[name]
        key = (name, memory and uses_memory)
        if key not in self.done:
            requests = [r for q in self.questions for r in build(q, key[1])]
            self.log(f"scoring pass {name} ({'with' if key[1] else 'without'} memories): {len(requests)} options")
            scores = self.model.score([c for c, _ in requests], [t for _, t in requests])
            shape = (len(self.questions), -1)
            self.done[key] = Scored(
                np.array([s.total for s in scores]).reshape(shape), np.array([s.mean for s in scores]).reshape(shape)
            )
        return self.done[key]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Every computed pass as named arrays (for an .npz next to the results)."""
        out = {}
        for (name, memory), scored in self.done.items():
            tag = f"{prefix}_{name}_{'memory' if memory else 'nomemory'}"
            out[f"{tag}_total"], out[f"{tag}_mean"] = scored.total, scored.mean
        return out


@dataclass(frozen=True)
class Scorer:
    """A way to score options from passes; `score` returns None where it has no meaning
    (a memory gain without memories)."""

    name: str
    description: str
    score: Callable[[Passes, bool], np.ndarray | None]


def memory_gain(passes: Passes, memory: bool, name: str, field: str) -> np.ndarray | None:
    """A pass with memories minus the same pass without (None without memories)."""
    if not memory:
        return None
    return getattr(passes(name, True), field) - getattr(passes(name, False), field)


SCORERS: tuple[Scorer, ...] = (
    Scorer("mean", "mean token log P(option | memories, question)", lambda p, m: p("answer", m).mean),
    Scorer("sum", "total log P(option | memories, question)", lambda p, m: p("answer", m).total),
    Scorer(
        "calibrated",
        f"total log P(option | memories, question) - log P(option | {CONTENT_FREE!r})",
        lambda p, m: p("answer", m).total - p("prior", m).total,
    ),
    Scorer("channel", "total log P(memories, question | option)", lambda p, m: p("channel", m).total),
    Scorer(
        "memory_gain",
        "total log P(option | memories, question) - log P(option | question)",
        lambda p, m: memory_gain(p, m, "answer", "total"),
    ),
    Scorer(
        "memory_gain_mean",
        "mean token log P(option | memories, question) - mean token log P(option | question)",
        lambda p, m: memory_gain(p, m, "answer", "mean"),
    ),
    Scorer(
        "channel_memory_gain",
        "total log P(memories, question | option) - log P(question | option)",
        lambda p, m: memory_gain(p, m, "channel", "total"),
    ),
)


def scorer(name: str) -> Scorer:
    return next(s for s in SCORERS if s.name == name)


def accuracy(scores: np.ndarray, answers: list[int]) -> float:
    """Share of questions whose best-scored option is the right one (ties: the first option)."""
    return float(np.mean(scores.argmax(axis=1) == np.array(answers)))


def choice_correct(model: TextModel, items: list[PrefEvalItem], seed: int = 0) -> list[bool]:
    """Multiple choice by likelihood, item by item (paired intervals need the items): the preference
    and question as the user's turn, each option scored as the reply (mean log-prob per token),
    options shuffled; right when the top one is the option that respects the preference."""
    if not items:
        return []
    rng = random.Random(seed)
    questions, answers = [], []
    for item in items:
        order = list(range(4))
        rng.shuffle(order)
        answers.append(order.index(0))
        questions.append(Question(item.question, [item.options[i] for i in order], [item.preference]))
    scores = Passes(model, questions)("stated", True).mean
    return [bool(right) for right in scores.argmax(axis=1) == np.array(answers)]


def choice_accuracy(model: TextModel, items: list[PrefEvalItem], seed: int = 0) -> float:
    """The share of `choice_correct` items (NaN for none)."""
    return float(np.mean(choice_correct(model, items, seed))) if items else float("nan")
