"""Metrics of the PerCE experiment: ROUGE-L, persona-term recall, PIR precision@k, PrefEval MCQ.

Content words are lowercase alphabetic words of 3+ letters outside scikit-learn's English stop
list, compared by Porter stem (so "cookies" in a reply matches "cookie" in a persona line).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from personalm.errors import PersonalmError
from personalm.perce.contrast import TokenInfluence

WORD = re.compile(r"[A-Za-z]+")


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def content_stem(word: str) -> str | None:
    """The stem of a content word, or None for stop words and words under 3 letters."""
    word = word.lower()
    if len(word) < 3 or word in _stop_words():
        return None
    return _stemmer().stem(word)


def content_words(text: str) -> set[str]:
    return {s for s in (content_stem(w) for w in WORD.findall(text)) if s}


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, Porter stemming)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def persona_recall(prediction: str, reference: str, persona: str) -> float | None:
    """Of the content words the reference shares with the persona, the fraction the prediction has;
    None when the reference shares none (the turn says nothing persona-specific)."""
    shared = content_words(reference) & content_words(persona)
    if not shared:
        return None
    return len(shared & content_words(prediction)) / len(shared)


def persona_token_flags(
    influence: TokenInfluence, persona: str, special: frozenset[str] = frozenset()
) -> tuple[list[bool], list[bool]]:
    """(candidate, persona) flags per reply token. Candidates hold a letter or digit and are not
    special tokens; a token is a persona token when it overlaps a word of the reply that is a
    content word of the persona."""
    stems = content_words(persona)
    text = "".join(influence.tokens)
    starts, position = [], 0
    for token in influence.tokens:
        starts.append(position)
        position += len(token)
    marked = [False] * len(text)
    for match in WORD.finditer(text):
        if content_stem(match.group()) in stems:
            marked[match.start() : match.end()] = [True] * (match.end() - match.start())
    candidate = [token not in special and any(c.isalnum() for c in token) for token in influence.tokens]
    persona_flags = [any(marked[s : s + len(t)]) for s, t in zip(starts, influence.tokens, strict=True)]
    return candidate, persona_flags


def precision_at_k(
    influence: TokenInfluence, persona: str, k: int, special: frozenset[str] = frozenset()
) -> tuple[float, float] | None:
    """(precision@k of the top-PIR tokens, expected precision@k of k random tokens) against the
    tokens that appear in the persona; None when the reply has no persona token or under k tokens."""
    candidate, flags = persona_token_flags(influence, persona, special)
    pool = [(pir, flag) for pir, flag, ok in zip(influence.pir, flags, candidate, strict=True) if ok]
    if len(pool) < k or not any(flag for _, flag in pool):
        return None
    top = sorted(pool, key=lambda item: -item[0])[:k]
    return sum(flag for _, flag in top) / k, sum(flag for _, flag in pool) / len(pool)


@dataclass
class ChoiceItem:
    """A PrefEval question: the preference, the question, and four options (first respects it)."""

    topic: str
    preference: str
    question: str
    options: list[str]


def load_prefeval(folder: str | Path, count: int, seed: int = 0) -> list[ChoiceItem]:
    """`count` items drawn (seeded) from every topic file of prefeval/mcq_options."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise PersonalmError("no PrefEval topic files (*.json)", source=str(folder))
    items = []
    for path in files:
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PersonalmError(f"invalid JSON ({err.msg})", source=str(path), line=err.lineno) from None
        for row in rows:
            options = row.get("classification_task_options")
            if isinstance(options, list) and len(options) == 4 and row.get("preference") and row.get("question"):
                items.append(ChoiceItem(path.stem, row["preference"], row["question"], [str(o) for o in options]))
    random.Random(seed).shuffle(items)
    return items[:count]


def choice_accuracy(model, items: list[ChoiceItem], seed: int = 0) -> float:
    """Multiple choice by likelihood: the preference and question as the user's turn, each option
    scored as the reply (mean log-prob per token), options shuffled; right when the top one is the
    option that respects the preference."""
    contexts, continuations, answers = [], [], []
    rng = random.Random(seed)
    for item in items:
        order = list(range(4))
        rng.shuffle(order)
        answers.append(order.index(0))
        chat = [{"role": "user", "content": f"{item.preference}\n\n{item.question}"}]
        contexts += [chat] * 4
        continuations += [item.options[i] for i in order]
    scores = model.score(contexts, continuations)
    right = 0
    for number, answer in enumerate(answers):
        means = [s.mean for s in scores[4 * number : 4 * number + 4]]
        right += max(range(4), key=lambda i: means[i]) == answer
    return right / len(items) if items else float("nan")
