"""Pairwise judges, one preference at a time: which of two responses better fits one pole?

`prefer(pole, prompts, first, second)` returns, per pair, 1.0 when the first response wins, 0.0 when
the second wins and 0.5 for a tie (LLM judges return the probability in between).

* ProgrammaticJudge: CPU scorers for the default dimensions, each a number along the dimension's axis
  — expertise: Flesch Reading Ease (higher reads as elementary); informativeness: distinct content
  words (information content); style: VADER compound sentiment (friendly vs unfriendly). Pairs closer
  than the axis's margin are ties.
* LLMJudge: asks a model which response fits the preference, compares log P("A") and log P("B"), and
  asks again with the responses swapped; averaging the two log-odds cancels position bias. A model
  that cannot score a chat (an OpenAI-compatible endpoint, which scores plain text only and does not
  know the served model's chat template) answers instead, greedily, in both orders: 1 when both
  answers pick the first response, 0 when both pick the second, 0.5 when they disagree.

`agreement` compares two judges on the same pairs (the programmatic and the LLM judge of a study).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np

from personalm.errors import PersonalmError
from personalm.eval.text import STOPWORDS, flesch_reading_ease, words
from personalm.models.base import SamplingParams, TextModel
from personalm.soups.preferences import Pole


class PairJudge(Protocol):
    name: str

    def prefer(self, pole: Pole, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Per pair: 1 = first fits the pole better, 0 = second does, 0.5 = tie."""


@cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def readability(text: str) -> float:
    """Flesch Reading Ease; empty text scores as unreadable."""
    score = flesch_reading_ease(text)
    return -100.0 if score == float("-inf") else score


def information_content(text: str) -> float:
    """Distinct content words: what a concise answer keeps few of and an informative one many."""
    return float(len({w.lower() for w in words(text) if len(w) > 2 and w.lower() not in STOPWORDS}))


def friendliness(text: str) -> float:
    """VADER compound sentiment in [-1, 1]: warm, cheerful text high; hostile, curt text low."""
    return float(_vader().polarity_scores(text)["compound"]) if text.strip() else 0.0


@dataclass(frozen=True)
class Axis:
    """A scorer for one dimension and, per pole, whether that pole wants the score high (+1) or low (-1)."""

    score: Callable[[str], float]
    directions: dict[str, int]
    margin: float


DEFAULT_AXES: dict[str, Axis] = {
    "expertise": Axis(readability, {"elementary": 1, "phd": -1}, margin=5.0),
    "informativeness": Axis(information_content, {"concise": -1, "informative": 1}, margin=3.0),
    "style": Axis(friendliness, {"friendly": 1, "unfriendly": -1}, margin=0.1),
}


class ProgrammaticJudge:
    name = "programmatic"

    def __init__(self, axes: dict[str, Axis] | None = None):
        self.axes = DEFAULT_AXES if axes is None else axes

    def supports(self, pole: Pole) -> bool:
        axis = self.axes.get(pole.dimension)
        return axis is not None and pole.name in axis.directions

    def axis(self, pole: Pole) -> Axis:
        if not self.supports(pole):
            raise PersonalmError(
                f"no programmatic judge for '{pole.key}' (built in: expertise, informativeness, style); use --judge MODEL"
            )
        return self.axes[pole.dimension]

    def scores(self, pole: Pole, texts: Sequence[str]) -> np.ndarray:
        """Each text's score along the pole's direction (higher = fits the pole better)."""
        axis = self.axis(pole)
        return np.array([axis.directions[pole.name] * axis.score(t) for t in texts], dtype=float)

    def prefer(self, pole: Pole, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        margin = self.axis(pole).margin
        diff = self.scores(pole, first) - self.scores(pole, second)
        return np.where(diff > margin, 1.0, np.where(diff < -margin, 0.0, 0.5))


class LLMJudge:
    """Pairwise judging by a model's log-probabilities of 'A' and 'B', averaged over both orders."""

    name = "llm"

    def __init__(self, model: TextModel):
        self.model = model

    @staticmethod
    def question(pole: Pole, prompt: str, a: str, b: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": "You compare two responses for one preference only. Answer A or B."},
            {
                "role": "user",
                "content": (
                    f"Preference: {pole.prompt}\n\nQuestion: {prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
                    "Which response follows the preference better? Answer A or B."
                ),
            },
        ]

    def _log_odds_a(self, pole: Pole, prompts, a_texts, b_texts) -> np.ndarray:
        contexts = [self.question(pole, p, a, b) for p, a, b in zip(prompts, a_texts, b_texts, strict=True)]
        a = self.model.score(contexts, ["A"] * len(contexts))
        b = self.model.score(contexts, ["B"] * len(contexts))
        return np.array([x.total - y.total for x, y in zip(a, b, strict=True)])

    def _answers_a(self, pole: Pole, prompts, a_texts, b_texts) -> np.ndarray:
        """1 where the model answers A, 0 where it answers B, 0.5 where it names neither."""
        contexts = [self.question(pole, p, a, b) for p, a, b in zip(prompts, a_texts, b_texts, strict=True)]
        replies = self.model.generate(contexts, SamplingParams(max_tokens=4, temperature=0.0))
        return np.array([_choice(r.text) for r in replies])

    def prefer(self, pole: Pole, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """σ of the mean log-odds over both orders (a constant pull towards 'A' cancels exactly), or,
        for a model that cannot score chats, the mean of its two answers."""
        if not scores_chats(self.model):
            return (
                self._answers_a(pole, prompts, first, second) + 1.0 - self._answers_a(pole, prompts, second, first)
            ) / 2
        shown_first = self._log_odds_a(pole, prompts, first, second)
        shown_second = self._log_odds_a(pole, prompts, second, first)
        return 1.0 / (1.0 + np.exp(-(shown_first - shown_second) / 2.0))


def _choice(text: str) -> float:
    found = re.search(r"\b([AB])\b", text)
    return 0.5 if found is None else float(found.group(1) == "A")


def scores_chats(model: TextModel) -> bool:
    """False for an OpenAI-compatible endpoint without a chat renderer (it scores plain text only)."""
    while hasattr(model, "inner"):
        model = model.inner
    return getattr(model, "render_chat", True) is not None


def agreement(first: Sequence[float], second: Sequence[float]) -> dict[str, float | int | None]:
    """Two judges' verdicts on the same pairs (1 = first response wins, 0 = second, 0.5 = tie; an
    LLM judge's probabilities count by the side of 0.5 they fall on). On the pairs both decided:
    the share where they name the same winner, and Cohen's kappa (that share corrected for the
    agreement two judges with these win rates would reach by chance; None when chance is 1)."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"two judges' verdicts on different pairs ({a.shape} vs {b.shape})")
    decided = (a != 0.5) & (b != 0.5)
    wins_a, wins_b = a[decided] > 0.5, b[decided] > 0.5
    n = int(decided.sum())
    result: dict[str, float | int | None] = {"pairs": len(a), "decided_by_both": n, "agreement": None, "kappa": None}
    if n:
        observed = float(np.mean(wins_a == wins_b))
        chance = float(wins_a.mean() * wins_b.mean() + (1 - wins_a.mean()) * (1 - wins_b.mean()))
        result["agreement"] = observed
        result["kappa"] = (observed - chance) / (1 - chance) if chance < 1 else None
    return result


def make_judge(judge_model: TextModel | None = None) -> PairJudge:
    """The LLM judge when a model is given, else the programmatic CPU judge."""
    return LLMJudge(judge_model) if judge_model is not None else ProgrammaticJudge()
