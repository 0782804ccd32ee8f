"""The critic's interface: score shapes and ranges, several preferences, save/load, bad inputs.

These use an untrained critic (the embedded MiniLM with a seeded head): the interface, not the
accuracy, is under test here (the accuracy is the study's, reports/critic)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from personalm.critic import PreferenceCritic, default_critic_dir
from personalm.critic.model import COMBINE, combine_spread
from personalm.errors import PersonalmError

ANSWERS = ["A boat tour on the Seine.", "Climb the Eiffel Tower.", "A hot-air balloon ride."]


@pytest.fixture(scope="module")
def critic() -> PreferenceCritic:
    return PreferenceCritic.initial(seed=0)


def test_score_is_one_probability_per_answer(critic):
    scores = critic.score(["I have a fear of heights."], "What should I do in Paris?", ANSWERS)
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()


def test_batches_by_length_come_back_in_the_order_asked(critic):
    firsts = ["I avoid dairy.", "I dislike reptiles as pets and I never want a snake, lizard or gecko at home.", "x"]
    seconds = ["Cheese?", "Which pet? A corn snake is easy to keep, quiet and cheap to feed every week.", "A cat."]
    alone = np.concatenate([critic.pair_probabilities([f], [s]) for f, s in zip(firsts, seconds, strict=True)])
    np.testing.assert_allclose(critic.pair_probabilities(firsts, seconds, batch=2), alone, atol=1e-5)
    assert critic.pair_probabilities([], []).shape == (0,)


def test_several_preferences_combine_by_the_meta_rule(critic):
    prefs = ["I have a fear of heights.", "I dislike boats."]
    single = np.stack([critic.score([p], "What should I do in Paris?", ANSWERS) for p in prefs])
    for rule, combine in COMBINE.items():
        critic.meta["settings"]["combine"] = rule
        np.testing.assert_allclose(
            critic.score(prefs, "What should I do in Paris?", ANSWERS), combine(single), rtol=1e-5
        )
    critic.meta["settings"]["combine"] = "min"


def test_spread_rule_lets_the_discriminating_preference_decide():
    probs = np.array([[0.5, 0.5, 0.5], [0.9, 0.1, 0.2]])
    assert combine_spread(probs).tolist() == [0.9, 0.1, 0.2]
    assert combine_spread(probs[:, :1]).tolist() == [0.5]


def test_no_preferences_and_no_answers(critic):
    assert critic.score([], "q", ["a", "b"]).tolist() == [1.0, 1.0]
    assert critic.score(["I like tea."], "q", []).shape == (0,)


def test_an_empty_preference_is_a_user_error(critic):
    with pytest.raises(PersonalmError, match="empty preference"):
        critic.score(["  "], "q", ["a"])


def test_save_load_round_trip_scores_the_same_and_loads_fast(critic, tmp_path):
    critic.meta["topics"] = {"train": ["a"], "validation": ["b"], "test": ["c"]}
    critic.save(tmp_path / "critic")
    start = time.perf_counter()
    loaded = PreferenceCritic.load(tmp_path / "critic")
    assert time.perf_counter() - start < 5  # the study measures < 1 s unloaded; CI machines are shared
    assert loaded.meta["topics"]["test"] == ["c"] and loaded.meta["base"] == "all-minilm-l6-v2"
    question = "What should I do in Paris?"
    np.testing.assert_allclose(
        loaded.score(["I have a fear of heights."], question, ANSWERS),
        critic.score(["I have a fear of heights."], question, ANSWERS),
        rtol=1e-5,
    )


def test_loading_a_missing_or_foreign_artifact_is_a_user_error(tmp_path):
    with pytest.raises(PersonalmError, match="no trained critic"):
        PreferenceCritic.load(tmp_path / "nowhere")
    (tmp_path / "other" / "encoder").mkdir(parents=True)
    (tmp_path / "other" / "head.safetensors").write_bytes(b"")
    (tmp_path / "other" / "meta.json").write_text(json.dumps({"design": "something-else"}))
    with pytest.raises(PersonalmError, match="not a minilm-cross-encoder critic"):
        PreferenceCritic.load(tmp_path / "other")


def test_default_dir_is_under_personalm_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONALM_HOME", str(tmp_path))
    assert default_critic_dir() == tmp_path / "critic"
