"""Persona-term recall and PIR precision@k on fixed inputs."""

from __future__ import annotations

import pytest

from personalm.eval.persona import persona_recall, persona_token_flags, precision_at_k
from personalm.perce.contrast import TokenInfluence

PERSONA = "I love to bake cookies.\nI have two dogs."


def _influence(tokens: list[str], pir: list[float]) -> TokenInfluence:
    return TokenInfluence(list(range(len(tokens))), tokens, pir, [0.0] * len(tokens))


def test_persona_recall():
    reference = "My dogs love it when I bake cookies."
    assert persona_recall("I baked a cookie today", reference, PERSONA) == pytest.approx(2 / 4)
    assert persona_recall("Nice weather", reference, PERSONA) == 0.0
    assert persona_recall("anything", "Hello there, how are you?", PERSONA) is None


def test_precision_at_k_of_top_pir_tokens_against_persona_words():
    tokens = ["I", " bake", " cook", "ies", " for", " my", " friends", ".", "<|im_end|>"]
    pir = [0.1, 3.0, 2.5, 0.2, 0.0, 0.4, 2.8, 0.0, 5.0]
    special = frozenset({"<|im_end|>"})
    candidate, flags = persona_token_flags(_influence(tokens, pir), PERSONA, special)
    assert flags == [False, True, True, True, False, False, False, False, False]
    assert candidate[-1] is False and candidate[-2] is False
    top, random_ = precision_at_k(_influence(tokens, pir), PERSONA, 3, special)
    assert top == pytest.approx(2 / 3)
    assert random_ == pytest.approx(3 / 7)
    assert precision_at_k(_influence(["Hello", " there"], [1.0, 2.0]), PERSONA, 1) is None
    assert precision_at_k(_influence([" cookies"], [1.0]), PERSONA, 2) is None


def test_a_persona_word_is_found_inside_a_possessive():
    _, flags = persona_token_flags(_influence(["My", " dog", "'s", " toy"], [0.0] * 4), PERSONA)
    assert flags == [False, True, False, False]
