"""Tone scorers: does a text meet the target tone? Pluggable, each with `score` and `accepts`.

* FleschScorer: Flesch Reading Ease ≥ 60, the plain-language criterion of the tone study.
* EmbeddingToneClassifier: MiniLM embeddings + logistic regression fit on labelled examples,
  for tones no formula captures (warm, formal, a person's voice).
* LLMJudge: asks a model whether the text has the tone and compares the log-probabilities of
  "Yes" and "No"; worth it with bigger backends than the embedded one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from personalm.eval.text import flesch_reading_ease
from personalm.models.base import TextModel


class ToneScorer(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """One number per text; higher means closer to the target tone."""

    threshold: float

    def accepts(self, texts: Sequence[str], margin: float = 0.0) -> np.ndarray:
        """One bool per text: meets the target tone, with `margin` added to the bar (a training
        set can ask for rewrites well inside the tone, not just over the line)."""


@dataclass(frozen=True)
class ToneScores:
    """Per text: its tone score, whether it clears the tone bar, and its MiniLM similarity to its reference."""

    tone: np.ndarray
    accepted: np.ndarray
    semsim: np.ndarray


def score_answers(texts: Sequence[str], references: Sequence[str], embedder, scorer: ToneScorer,
                  per_reference: int = 1) -> ToneScores:  # fmt: skip
    """Tone and meaning of answers at once, the two checks every tone stage applies (data building,
    preference rounds, the study): text j answers references[j // per_reference], each reference
    embedded once."""
    texts = list(texts)
    if len(texts) != len(references) * per_reference:
        raise ValueError(f"{len(texts)} texts for {len(references)} references x {per_reference}")
    answers = embedder.embed(texts)
    refs = np.repeat(embedder.embed(list(references)), per_reference, axis=0)
    return ToneScores(scorer.score(texts), np.asarray(scorer.accepts(texts), dtype=bool),
                      np.sum(answers * refs, axis=1))  # fmt: skip


class FleschScorer:
    name = "flesch"

    def __init__(self, threshold: float = 60.0, min_words: int = 3):
        self.threshold = threshold
        self.min_words = min_words

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([flesch_reading_ease(t) for t in texts], dtype=float)

    def accepts(self, texts: Sequence[str], margin: float = 0.0) -> np.ndarray:
        """Too-short texts are refused: a two-word answer is trivially 'easy' but says nothing."""
        long_enough = np.array([len(t.split()) >= self.min_words for t in texts], dtype=bool)
        return (self.score(texts) >= self.threshold + margin) & long_enough


class EmbeddingToneClassifier:
    name = "embedding"

    def __init__(self, embedder, threshold: float = 0.5):
        from sklearn.linear_model import LogisticRegression

        self.embedder = embedder
        self.threshold = threshold
        self.model = LogisticRegression(max_iter=1000)

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> EmbeddingToneClassifier:
        if len(set(labels)) != 2:
            raise ValueError("the tone classifier needs examples of both classes (0 and 1)")
        self.model.fit(self.embedder.embed(list(texts)), np.asarray(labels))
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(self.embedder.embed(list(texts)))[:, 1]

    def accepts(self, texts: Sequence[str], margin: float = 0.0) -> np.ndarray:
        return self.score(texts) >= self.threshold + margin


class LLMJudge:
    name = "llm-judge"
    threshold = 0.0

    def __init__(self, model: TextModel, tone: str = "plain, simple language that a 12-year-old understands"):
        self.model = model
        self.tone = tone

    def _question(self, text: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": "You judge writing style. Answer Yes or No."},
            {
                "role": "user",
                "content": f"Is the following text written in {self.tone}?\n\n{text}\n\nAnswer Yes or No.",
            },
        ]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """log P(Yes) - log P(No) for each text."""
        contexts = [self._question(t) for t in texts]
        yes = self.model.score(contexts, ["Yes"] * len(texts))
        no = self.model.score(contexts, ["No"] * len(texts))
        return np.array([y.total - n.total for y, n in zip(yes, no, strict=True)])

    def accepts(self, texts: Sequence[str], margin: float = 0.0) -> np.ndarray:
        return self.score(texts) > self.threshold + margin


SCORERS = ("flesch", "embedding", "llm-judge")


def read_labelled(path: str | None) -> tuple[list[str], list[int]]:
    """(texts, labels) of the classifier's examples: a JSONL/Parquet of {text, label 0/1}."""
    from personalm.errors import PersonalmError
    from personalm.tables import read_rows, require

    if not path:
        raise PersonalmError("--scorer embedding needs --labelled FILE (rows with `text` and `label` 0/1)")
    texts, labels = [], []
    for line, row in read_rows(path):
        texts.append(require(row, "text", str, path, line))
        labels.append(int(require(row, "label", (int, bool), path, line)))
    if not texts:
        raise PersonalmError("no labelled examples (empty input)", source=path)
    return texts, labels


def make_scorer(name: str, embedder=None, labelled: str | None = None, judge: TextModel | None = None) -> ToneScorer:
    """Build a scorer by name; `labelled` is a JSONL/Parquet of {text, label} for the classifier."""
    from personalm.errors import PersonalmError

    if name == "flesch":
        return FleschScorer()
    if name == "embedding":
        texts, labels = read_labelled(labelled)
        try:
            return EmbeddingToneClassifier(embedder).fit(texts, labels)
        except ValueError as err:
            raise PersonalmError(str(err), source=labelled) from None
    if name == "llm-judge":
        if judge is None:
            raise PersonalmError("--scorer llm-judge needs --judge MODEL")
        return LLMJudge(judge)
    raise PersonalmError(f"unknown tone scorer '{name}' (expected one of: {', '.join(SCORERS)})")
