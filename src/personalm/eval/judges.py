"""Pairwise judges, one preference at a time: which of two responses better fits one pole?

`prefer(pole, prompts, first, second)` returns, per pair, 1.0 when the first response wins, 0.0 when
the second wins and 0.5 for a tie (LLM judges return the probability in between).

* ProgrammaticJudge: CPU scorers for the default dimensions, each a number along the dimension's axis
  — expertise: Flesch Reading Ease (higher reads as elementary); informativeness: distinct content
  words (information content); style: VADER compound sentiment (friendly vs unfriendly). Pairs closer
  than the axis's margin are ties.
* LLMJudge: asks a model which response fits the preference, compares log P("A") and log P("B"), and
  asks again with the responses swapped; averaging the two log-odds cancels position bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np

from personalm.errors import PersonalmError
from personalm.eval.text import STOPWORDS, flesch_reading_ease, words
from personalm.models.base import TextModel
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

    def prefer(self, pole: Pole, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """σ of the mean log-odds over both orders: a constant pull towards 'A' cancels exactly."""
        shown_first = self._log_odds_a(pole, prompts, first, second)
        shown_second = self._log_odds_a(pole, prompts, second, first)
        return 1.0 / (1.0 + np.exp(-(shown_first - shown_second) / 2.0))


def make_judge(judge_model: TextModel | None = None) -> PairJudge:
    """The LLM judge when a model is given, else the programmatic CPU judge."""
    return LLMJudge(judge_model) if judge_model is not None else ProgrammaticJudge()
