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


def test_cosine_gap_on_sets_whose_answer_is_known():
    same = np.tile(np.eye(4)[:1], (6, 1))
    basis = np.eye(4)
    gap = diversity.cosine_gap(same, basis, resamples=500)
    # every resample's distinct pairs are identical (plain) or orthogonal (personas) rows
    assert (gap["plain"].low, gap["plain"].mean, gap["plain"].high) == pytest.approx((1.0, 1.0, 1.0))
    assert (gap["personas"].low, gap["personas"].high) == pytest.approx((0.0, 0.0))
    assert (gap["gap"].mean, gap["gap"].low, gap["gap"].high) == pytest.approx((1.0, 1.0, 1.0))
    assert gap["gap_share_above_zero"] == 1.0 and gap["gap"].n == 4


def test_resampled_pairwise_cosine_centres_on_the_statistic_and_orders_the_interval():
    rng = np.random.default_rng(3)
    plain = rng.normal(size=(40, 8)) + 1.5
    personas = rng.normal(size=(40, 8))
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    personas /= np.linalg.norm(personas, axis=1, keepdims=True)
    draws = diversity.resampled_pairwise_cosine(plain, 4000, np.random.default_rng(0))
    # pairs of distinct drawn rows are pairs of distinct rows: the resamples centre on the statistic
    assert draws.mean() == pytest.approx(diversity.mean_pairwise_cosine(plain), abs=0.01)
    gap = diversity.cosine_gap(plain, personas, resamples=2000, seed=1)
    for part in ("plain", "personas", "gap"):
        assert gap[part].low <= gap[part].mean <= gap[part].high, part
    assert gap["gap"].low > 0 and gap["gap"].mean == pytest.approx(
        diversity.mean_pairwise_cosine(plain) - diversity.mean_pairwise_cosine(personas)
    )
    assert diversity.cosine_gap(plain, personas, resamples=2000, seed=1) == gap  # seeded
