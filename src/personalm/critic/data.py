"""The critic's data: PrefEval items split by topic, and synthetic items of the same shape.

An item is one stated preference, one question and its answers, the first of which respects the
preference and the rest violate it (PrefEval's multiple-choice layout). Topics, not items, are
split into train, validation and test, so the critic is chosen on topics it was not trained on and
reported on topics it never saw; `check_no_leak` enforces it wherever training data is built.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalm.errors import PersonalmError
from personalm.eval.prefeval import load_prefeval

MCQ_FOLDER = Path("prefeval") / "mcq_options"
SPLITS = ("train", "validation", "test")
HELD_OUT_SHARE = 0.2  # of the topics, for validation and again for test
SYNTHETIC_TOPIC = "synthetic"


@dataclass(frozen=True)
class CriticItem:
    """A preference, a question and answers: `answers[0]` respects the preference, the rest violate it."""

    topic: str
    preference: str
    question: str
    answers: tuple[str, ...]
    source: str = "prefeval"

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "preference": self.preference,
            "question": self.question,
            "answers": list(self.answers),
            "source": self.source,
        }


def split_topics(topics: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic train/validation/test split of topic names: the sorted names shuffled with
    `seed`, then a fifth (at least one) for test, a fifth for validation, the rest for training."""
    names = sorted(set(topics))
    if len(names) < 3:
        raise PersonalmError(
            f"need at least 3 PrefEval topics to split into train, validation and test (got {len(names)})"
        )
    random.Random(seed).shuffle(names)
    held = max(1, round(HELD_OUT_SHARE * len(names)))
    return {
        "test": sorted(names[:held]),
        "validation": sorted(names[held : 2 * held]),
        "train": sorted(names[2 * held :]),
    }


def mcq_folder(data: str | Path) -> Path:
    """`data`/prefeval/mcq_options, checked: a folder of topic files (*.json)."""
    folder = Path(data) / MCQ_FOLDER
    if not folder.is_dir():
        raise PersonalmError(
            "unknown preference-file layout: expected prefeval/mcq_options/<topic>.json under the data folder",
            source=str(Path(data)),
        )
    if not any(folder.glob("*.json")):
        raise PersonalmError("no PrefEval topic files (*.json)", source=str(folder))
    return folder


def prefeval_items(data: str | Path) -> list[CriticItem]:
    """Every usable multiple-choice item under `data` (PrefEval's layout), in file order."""
    folder = mcq_folder(data)
    items = [CriticItem(i.topic, i.preference, i.question, tuple(i.options)) for i in load_prefeval(folder)]
    if not items:
        raise PersonalmError(
            "unknown preference-file layout: no item with 'preference', 'question' and four "
            "'classification_task_options'",
            source=str(folder),
        )
    return items


def in_topics(items: Iterable[CriticItem], topics: Iterable[str]) -> list[CriticItem]:
    wanted = set(topics)
    return [item for item in items if item.topic in wanted]


def check_no_leak(
    training: Iterable[CriticItem], topics: dict[str, list[str]], held_out_preferences: Iterable[str] = ()
) -> None:
    """Fail loudly if a training item comes from a validation or test topic, or repeats a held-out
    preference word for word (a synthetic item copied from somewhere it should not have been)."""
    banned = {t for split in ("validation", "test") for t in topics.get(split, [])}
    training = list(training)
    leaked = sorted({item.topic for item in training if item.topic in banned})
    if leaked:
        raise PersonalmError(f"training data holds items of held-out topics: {', '.join(leaked)}")
    held = {p.strip().lower() for p in held_out_preferences}
    copied = sum(item.preference.strip().lower() in held for item in training)
    if copied:
        raise PersonalmError(f"training data repeats {copied} held-out preference(s) word for word")


def shuffled(item: CriticItem, rng: random.Random) -> tuple[list[str], int]:
    """The item's answers in a random order, and where the respecting one went."""
    order = list(range(len(item.answers)))
    rng.shuffle(order)
    return [item.answers[i] for i in order], order.index(0)


def with_distractors(items: Sequence[CriticItem], pool: Sequence[str], count: int, seed: int) -> list[list[str]]:
    """For each item, its preference among `count` other preferences drawn from `pool` (never its
    own), in a random position: the several stated preferences a user's memory returns."""
    rng = random.Random(seed)
    out = []
    for item in items:
        others = [p for p in pool if p != item.preference]
        chosen = rng.sample(others, min(count, len(others)))
        chosen.insert(rng.randrange(len(chosen) + 1), item.preference)
        out.append(chosen)
    return out


def synthetic_items(rows: Iterable[dict[str, Any]]) -> tuple[list[CriticItem], dict[str, int]]:
    """Critic items from the synthesis stage's `preference` task rows (their `parsed` fields), the
    valid ones only, and a count of why the others were dropped."""
    items, dropped = [], {"invalid": 0, "duplicate": 0}
    seen: set[str] = set()
    for row in rows:
        parsed = row.get("parsed") or {}
        if not row.get("valid"):
            dropped["invalid"] += 1
            continue
        key = parsed["preference"].lower()
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        answers = (parsed["good answer"], *(parsed[f"bad answer {k}"] for k in (1, 2, 3)))
        items.append(CriticItem(SYNTHETIC_TOPIC, parsed["preference"], parsed["question"], answers, "synthetic"))
    return items, dropped
