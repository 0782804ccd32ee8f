"""Diversity measures on sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.eval import diversity


def test_identical_and_orthogonal_sets():
    same = np.tile(np.eye(4, dtype=np.float32)[:1], (5, 1))
    basis = np.eye(4, dtype=np.float32)
    assert diversity.mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert diversity.vendi_score(same) == pytest.approx(1.0)
    assert diversity.mean_pairwise_cosine(basis) == pytest.approx(0.0)
    assert diversity.vendi_score(basis) == pytest.approx(4.0)


def test_distinct_n():
    texts = ["a nurse who sings", "a nurse who dances"]
    assert diversity.distinct_n(texts, 1) == pytest.approx(5 / 8)
    assert diversity.distinct_n(texts, 2) == pytest.approx(4 / 6)
    assert np.isnan(diversity.distinct_n(["one"], 2))


def test_similarity_by_bin_pairs_persona_and_output_cosines():
    personas = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    outputs = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    assert diversity.similarity_by_bin(personas, outputs) == [
        {"persona_cosine": "0.0-0.1", "pairs": 2, "mean_persona_cosine": 0.0, "mean_output_cosine": 0.4},
        {"persona_cosine": "0.9-1.0", "pairs": 1, "mean_persona_cosine": 1.0, "mean_output_cosine": 0.6},
    ]
