"""PrefEval loading and option scoring with scripted models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalm.errors import PersonalmError
from personalm.eval.prefeval import (
    SCORERS,
    Passes,
    PrefEvalItem,
    Question,
    accuracy,
    choice_accuracy,
    load_prefeval,
    scorer,
)
from personalm.models.base import TokenScores
from personalm.paths import data_dir


class _ShelterModel:
    """Scores the option whose text contains 'shelter' highest; records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, contexts, continuations):
        self.calls.append((contexts, continuations))
        return [TokenScores([c], [0.0 if "shelter" in c else -1.0]) for c in continuations]


def test_choice_accuracy_shuffles_options_and_reads_the_first_as_right():
    items = [
        PrefEvalItem("pets", "I adopt from shelters.", f"Where to get cat {i}?", ["a shelter", "b", "c", "d"])
        for i in range(6)
    ]
    model = _ShelterModel()
    assert choice_accuracy(model, items, seed=1) == 1.0
    contexts, continuations = model.calls[0]
    assert contexts[0] == [{"role": "user", "content": "I adopt from shelters.\n\nWhere to get cat 0?"}]
    positions = {continuations[4 * i : 4 * i + 4].index("a shelter") for i in range(6)}
    assert len(positions) > 1
    assert np.isnan(choice_accuracy(model, [], seed=1)) and len(model.calls) == 1


def test_loader_keeps_items_in_file_order_or_draws_some(tmp_path):
    rows = [
        {"preference": "p", "question": "q", "classification_task_options": ["a", "b", "c", "d"],
         "explanation": "why"},
        {"preference": "p2", "question": "q2", "classification_task_options": ["e", "f", "g", "h"]},
    ]  # fmt: skip
    (tmp_path / "topic.json").write_text(json.dumps(rows))
    items = load_prefeval(tmp_path)
    assert [(i.topic, i.preference, i.options[0], i.explanation) for i in items] == [
        ("topic", "p", "a", "why"),
        ("topic", "p2", "e", ""),
    ]
    assert len(load_prefeval(tmp_path, 1, seed=3)) == 1
    real = data_dir() / "prefeval" / "mcq_options"
    if real.is_dir():
        assert len(load_prefeval(real, 50, seed=0)) == 50


def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(PersonalmError, match="no PrefEval topic files"):
        load_prefeval(tmp_path)
    (tmp_path / "bad.json").write_text('[\n{"preference": }\n]')
    with pytest.raises(PersonalmError, match=r"bad.json:2: invalid JSON"):
        load_prefeval(tmp_path)


GOOD = {"preference": "p", "question": "q", "classification_task_options": ["a", "b", "c", "d"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"items": [GOOD]}, "topic.json: unknown PrefEval layout"),
        ([GOOD, ["p", "q"]], "topic.json: item 2: unknown PrefEval layout"),
        ([{"prompt": "p", "answer": "a"}], "topic.json: item 1: unknown PrefEval layout"),
        ([GOOD | {"preference": ""}], "topic.json: item 1: empty preference"),
        ([GOOD | {"preference": "   "}], "topic.json: item 1: empty preference"),
        ([GOOD | {"question": None}], "topic.json: item 1: empty question"),
        ([GOOD | {"classification_task_options": ["a", "b"]}], "topic.json: item 1: classification_task_options"),
        ([GOOD | {"classification_task_options": ["a", "b", "c", 4]}], "item 1: classification_task_options"),
    ],
)
def test_another_layout_or_an_empty_preference_is_one_error(tmp_path, content, message):
    (tmp_path / "topic.json").write_text(json.dumps(content))
    with pytest.raises(PersonalmError, match=message) as caught:
        load_prefeval(tmp_path)
    assert "\n" not in str(caught.value)


class _CountingModel:
    """Total log-prob = number of the option's words found in the context; one call per pass."""

    def __init__(self):
        self.calls = 0

    def score(self, contexts, continuations):
        self.calls += 1
        out = []
        for context, option in zip(contexts, continuations, strict=True):
            seen = set(json.dumps(context).lower().replace('"', " ").split())
            hits = sum(w.lower() in seen for w in option.split())
            out.append(TokenScores(option.split() or ["x"], [float(hits)] + [0.0] * (len(option.split()) - 1)))
        return out


def test_passes_are_computed_once_and_scorers_read_them():
    questions = [Question("which pet?", ["a cat", "a dog"], ["I love every dog"])]
    model = _CountingModel()
    passes = Passes(model, questions)
    for s in SCORERS:
        with_memory, without = s.score(passes, True), s.score(passes, False)
        assert with_memory.shape == (1, 2)
        assert (without is None) == s.name.startswith(("memory_gain", "channel_memory_gain"))
    assert model.calls == 5  # answer and channel with and without memories, prior once
    assert accuracy(scorer("memory_gain").score(passes, True), [1]) == 1.0
    assert set(passes.arrays("t")) >= {"t_answer_memory_total", "t_prior_nomemory_mean"}
