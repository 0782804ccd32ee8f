"""Feedback collection on a fake policy and fixed texts: labels per pole, per-pole and P-MORL DPO sets."""

from __future__ import annotations

import json

import pytest

from personalm.errors import PersonalmError
from personalm.eval.judges import ProgrammaticJudge
from personalm.models.base import Generation, TextModel
from personalm.soups.collect import PMORL, CollectConfig, collect, dpo_sets
from personalm.soups.preferences import Preferences
from personalm.soups.prompts import load_prompts, split_prompts
from personalm.studies.soups import soup_weights

PREFS = Preferences.default()
TEXTS = [
    "Great question, friend! The sun is hot. It is fun!",
    "Ugh. Solar irradiance results from thermonuclear fusion, predominantly proton-proton chain reactions, "
    "transported radiatively and convectively through the stellar interior. Obviously.",
    "It is hot gas.",
]


class CyclingModel(TextModel):
    model_id = "fake"

    def generate(self, prompts, params=None, progress=None):
        out = [Generation(TEXTS[i % len(TEXTS)], "stop", 1, 1) for i in range(len(prompts))]
        if progress:
            progress(len(prompts))
        return out

    def score(self, contexts, continuations):
        raise NotImplementedError


def test_collect_writes_labels_and_dpo_sets(tmp_path):
    sizes = collect(CyclingModel(), ProgrammaticJudge(), PREFS, ["Why is the sun hot?"], tmp_path,
                    CollectConfig(samples=3, max_pairs=3), log=lambda _: None)  # fmt: skip
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 3 * 6
    assert set(sizes) == {p.key for p in PREFS.poles} | {PMORL}
    friendly = [json.loads(line) for line in (tmp_path / "dpo" / "style.friendly.jsonl").read_text().splitlines()]
    assert friendly
    for row in friendly:
        assert row["prompt"][0]["content"] == PREFS.pole("style.friendly").prompt
        assert "friend" in row["chosen"][0]["content"] or "Ugh" in row["rejected"][0]["content"]
    assert json.loads((tmp_path / "collect.json").read_text())["dpo_pairs"] == sizes


def test_pmorl_pairs_follow_the_mean_of_per_pole_labels():
    candidates = [{"prompt_id": 0, "prompt": "q", "idx": i, "text": t} for i, t in enumerate(["a", "b"])]
    poles = {p.key: 0.5 for p in PREFS.poles}
    poles |= {"expertise.elementary": 1.0, "expertise.phd": 0.0, "style.friendly": 1.0, "style.unfriendly": 0.0}
    labels = [{"prompt_id": 0, "a": 0, "b": 1, "pole": k, "label": v} for k, v in poles.items()]
    sets = dpo_sets(PREFS, candidates, labels)
    assert len(sets["expertise.elementary"]) == 1
    assert sets["informativeness.concise"] == []
    chosen = {row["pole"]: row["chosen"][0]["content"] for row in sets[PMORL]}
    # elementary+friendly: mean(1, .5, 1) > .5 → a; phd+unfriendly: mean(0, .5, 0) < .5 → b; mixed: tie, dropped.
    assert chosen["expertise.elementary+informativeness.concise+style.friendly"] == "a"
    assert chosen["expertise.phd+informativeness.informative+style.unfriendly"] == "b"
    assert len(sets[PMORL]) == 4


def test_prompts_split_and_soup_weights():
    train, held = split_prompts(load_prompts(), 8)
    assert len(held) == 8 and not set(train) & set(held)
    combo = PREFS.combinations()[0]
    assert soup_weights(combo, "mean") == {p.key: pytest.approx(1 / 3) for p in combo}
    with pytest.raises(PersonalmError, match="cannot leave"):
        split_prompts(["a"], 1)
