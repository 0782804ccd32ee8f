"""The cross-encoder's loop: losses, one epoch that learns, resuming from the checkpoint."""

from __future__ import annotations

import pytest
import torch

from personalm.critic.data import CriticItem
from personalm.critic.evaluate import choice_correct
from personalm.critic.model import PreferenceCritic
from personalm.critic.train import LOSSES, FitConfig, fit
from personalm.errors import PersonalmError

ITEMS = [
    CriticItem("t", "I dislike reptiles.", "Which pet?", ("A cat.", "A snake.", "A gecko.", "An iguana.")),
    CriticItem("t", "I fear heights.", "What to do?", ("A museum.", "Climb a tower.", "Skydiving.", "A cliff walk.")),
]


def test_losses_prefer_the_respecting_answer_first():
    good = torch.tensor([3.0, -3.0, -3.0, -3.0])
    bad = torch.tensor([-3.0, 3.0, -3.0, -3.0])
    for name, loss in LOSSES.items():
        assert loss(good, [4]) < loss(bad, [4]), name


def test_bad_settings_are_user_errors():
    with pytest.raises(PersonalmError, match="unknown critic loss"):
        FitConfig(loss="hinge")
    with pytest.raises(PersonalmError):
        FitConfig(epochs=0)


def test_fit_keeps_the_best_epoch_and_resumes(tmp_path):
    config = FitConfig(loss="both", epochs=2, lr=5e-4, batch_items=2)
    calls = []

    def validate(critic):
        calls.append(1)
        return float(choice_correct(critic.score, ITEMS).mean())

    critic, result = fit(PreferenceCritic.initial(seed=0), ITEMS, config, validate, tmp_path)
    assert len(result.curve) == 2 and result.best_epoch in (1, 2) and len(calls) == 2
    assert (tmp_path / "best" / "meta.json").is_file()
    # a finished run, started again, resumes after its last epoch and trains nothing more
    again, resumed = fit(PreferenceCritic.initial(seed=0), ITEMS, config, validate, tmp_path)
    assert resumed.resumed_from == 2 and resumed.curve == result.curve and len(calls) == 2
    torch.testing.assert_close(again.head.weight, critic.head.weight)
