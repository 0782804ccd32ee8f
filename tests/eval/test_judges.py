"""Pairwise judges on fixed strings: each default pole prefers the response written its way."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.errors import PersonalmError
from personalm.eval.judges import LLMJudge, ProgrammaticJudge
from personalm.models.base import TextModel, TokenScores
from personalm.soups.preferences import Pole, Preferences

PREFS = Preferences.default()
SIMPLE = "The sun is a big ball of hot gas. It gives us light. It keeps us warm."
EXPERT = (
    "Stellar nucleosynthesis within the solar core proceeds predominantly via the proton-proton chain, "
    "whose thermonuclear reaction rates depend sensitively on quantum tunnelling probabilities."
)
SHORT = "Paris."
LONG = (
    "Paris is the capital of France, located on the Seine river in the north of the country; it has been "
    "the political, economic and cultural centre since medieval times and hosts the national government."
)
FRIENDLY = "Great question, friend! Happy to help, this is fun and you will love it."
RUDE = "Ugh, stupid question. I hate explaining this. Figure it out yourself, it's awful."


@pytest.mark.parametrize(
    ("pole", "better", "worse"),
    [
        ("expertise.elementary", SIMPLE, EXPERT),
        ("expertise.phd", EXPERT, SIMPLE),
        ("informativeness.concise", SHORT, LONG),
        ("informativeness.informative", LONG, SHORT),
        ("style.friendly", FRIENDLY, RUDE),
        ("style.unfriendly", RUDE, FRIENDLY),
    ],
)
def test_programmatic_judge_prefers_the_pole_in_either_position(pole, better, worse):
    judge = ProgrammaticJudge()
    p = PREFS.pole(pole)
    assert judge.prefer(p, ["q", "q"], [better, worse], [worse, better]).tolist() == [1.0, 0.0]


def test_close_pairs_are_ties():
    judge = ProgrammaticJudge()
    assert judge.prefer(PREFS.pole("style.friendly"), ["q"], [SHORT], ["Paris!"]).tolist() == [0.5]


def test_user_dimension_without_a_scorer_asks_for_an_llm_judge():
    with pytest.raises(PersonalmError, match="use --judge MODEL"):
        ProgrammaticJudge().prefer(Pole("length", "short", "Be short."), ["q"], ["a"], ["b"])


class PositionBiasedModel(TextModel):
    """Prefers whatever is shown as A by 2 nats, plus 1 nat for the response containing 'good'."""

    model_id = "fake"

    def generate(self, prompts, params=None, progress=None):
        raise NotImplementedError

    def score(self, contexts, continuations):
        out = []
        for context, letter in zip(contexts, continuations, strict=True):
            text = context[-1]["content"]
            a_part = text.split("[Response A]")[1].split("[Response B]")[0]
            a_good = "good" in a_part
            logit = (2.0 if letter == "A" else 0.0) + (1.0 if (letter == "A") == a_good else 0.0)
            out.append(TokenScores([letter], [logit]))
        return out


def test_llm_judge_position_swap_cancels_position_bias():
    judge = LLMJudge(PositionBiasedModel())
    pole = PREFS.pole("style.friendly")
    p = judge.prefer(pole, ["q", "q"], ["good answer", "bad answer"], ["bad answer", "good answer"])
    expected = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(p, [expected, 1 - expected])
