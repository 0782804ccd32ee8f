"""The paired bootstrap on cases whose answer is known, and its coverage on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.eval.bootstrap import bootstrap_quantile, paired_bootstrap


def test_identical_conditions_give_a_zero_interval():
    scores = np.random.default_rng(0).normal(size=40)
    result = paired_bootstrap(scores, scores)
    assert (result.mean, result.low, result.high, result.share_above_zero) == (0.0, 0.0, 0.0, 0.0)
    assert result.n == 40 and result.resamples == 10_000 and result.level == 0.95


def test_a_constant_shift_is_the_interval():
    b = np.random.default_rng(1).uniform(size=25)
    result = paired_bootstrap(b + 0.25, b, resamples=2000)
    assert result.mean == pytest.approx(0.25)
    assert result.low == pytest.approx(0.25) and result.high == pytest.approx(0.25)
    assert result.share_above_zero == 1.0
    assert paired_bootstrap(b - 0.25, b, resamples=500).share_above_zero == 0.0


def test_seeded():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=30), rng.normal(size=30)
    first = paired_bootstrap(a, b, resamples=3000, seed=7)
    assert paired_bootstrap(list(a), list(b), resamples=3000, seed=7) == first
    assert paired_bootstrap(a, b, resamples=3000, seed=8) != first
    assert first.low < first.mean < first.high and first.to_dict()["n"] == 30


def test_coverage_of_the_true_difference_is_near_95_percent():
    rng = np.random.default_rng(3)
    trials, covered = 300, 0
    for trial in range(trials):
        item = rng.normal(size=60)  # item difficulty, shared by both conditions
        a = item + 0.3 + rng.normal(scale=0.5, size=60)
        b = item + rng.normal(scale=0.5, size=60)
        result = paired_bootstrap(a, b, resamples=1000, seed=trial)
        covered += result.low <= 0.3 <= result.high
    assert 0.89 <= covered / trials <= 0.99


def test_bad_inputs_are_refused():
    for a, b in (([1.0, 2.0], [1.0]), ([], []), ([1.0, np.nan], [1.0, 2.0]), ([[1.0]], [[1.0]])):
        with pytest.raises(ValueError):
            paired_bootstrap(a, b)


def test_quantile_interval_holds_the_sample_quantile_and_covers_the_true_one():
    rng = np.random.default_rng(4)
    values = rng.exponential(scale=100.0, size=300)  # latencies in ms; true p95 = 100 ln 20
    result = bootstrap_quantile(values, 0.95, resamples=2000, seed=1)
    assert result.mean == pytest.approx(np.percentile(values, 95))
    assert result.low < result.mean < result.high and result.n == 300
    assert bootstrap_quantile(list(values), 0.95, resamples=2000, seed=1) == result
    trials, covered = 200, 0
    for trial in range(trials):
        sample = rng.exponential(scale=100.0, size=300)
        interval = bootstrap_quantile(sample, 0.95, resamples=500, seed=trial)
        covered += interval.low <= 100 * np.log(20) <= interval.high
    assert 0.85 <= covered / trials <= 0.99


def test_quantile_bad_inputs_are_refused():
    for values, q in (([], 0.5), ([1.0, np.nan], 0.5), ([[1.0]], 0.5), ([1.0, 2.0], 1.5)):
        with pytest.raises(ValueError):
            bootstrap_quantile(values, q)
