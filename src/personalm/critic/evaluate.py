"""Multiple choice with a critic: shuffle each item's answers, score them, right when the top one
is the respecting answer. Per-item results (1.0 right, 0.0 wrong), so a study can bootstrap them."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from personalm.critic.data import CriticItem, shuffled

Scorer = Callable[[Sequence[str], str, Sequence[str]], np.ndarray]
"""(preferences, question, answers) -> one score per answer, higher = respects more."""


def choice_correct(
    score: Scorer,
    items: Sequence[CriticItem],
    seed: int = 0,
    preferences: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """1.0 where the best-scored answer is the respecting one (ties: the first shown), per item;
    `preferences` replaces each item's own preference (e.g. it among distractors)."""
    rng = random.Random(seed)
    out = np.zeros(len(items))
    for k, item in enumerate(items):
        answers, right = shuffled(item, rng)
        stated = preferences[k] if preferences is not None else [item.preference]
        out[k] = float(int(np.argmax(score(stated, item.question, answers))) == right)
    return out


def cosine_scorer(embed: Callable[[list[str]], np.ndarray]) -> Scorer:
    """The zero-shot floor: cosine of each preference and each answer (unit vectors in), min over
    preferences. It cannot read negation: an answer about what the user dislikes scores high."""

    def score(preferences: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
        vectors = embed([*preferences, *answers])
        return (vectors[: len(preferences)] @ vectors[len(preferences) :].T).min(axis=0)

    return score
