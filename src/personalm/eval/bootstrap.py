"""Paired bootstrap: is condition A better than condition B on the same items, beyond chance?

Both conditions are scored on the same items, so the item-to-item spread cancels in the per-item
difference. Resampling the items with replacement gives the distribution of the mean difference:
its 2.5th and 97.5th percentiles are the 95% interval, and the share of resamples above zero says
how often A still wins (Efron & Tibshirani 1993, percentile interval).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 10_000
_BLOCK_CELLS = 1 << 22  # index cells drawn at once: bounds memory for many items


def _resampled(
    values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], resamples: int, seed: int
) -> np.ndarray:
    """`statistic` (of a resamples x items array, one value per row) over `resamples` seeded
    resamples of `values` with replacement, drawn in blocks to bound memory."""
    n = len(values)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        out[start : start + rows] = statistic(values[rng.integers(0, n, size=(rows, n))])
    return out


@dataclass(frozen=True)
class PairedDifference:
    """Mean of A − B over the items, its bootstrap interval, and the share of resamples where A − B > 0."""

    mean: float
    low: float
    high: float
    share_above_zero: float
    n: int
    level: float
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """The `level` percentile interval of mean(a − b), from `resamples` seeded resamples of the items."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores need two 1-D arrays of one length (got shapes {a.shape} and {b.shape})")
    if len(a) == 0:
        raise ValueError("paired bootstrap of no items")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite (drop the items a condition could not score)")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1 (got {resamples}, {level})")
    diff = a - b
    n = len(diff)
    means = _resampled(diff, lambda rows: rows.mean(axis=1), resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(
        mean=float(diff.mean()),
        low=float(low),
        high=float(high),
        share_above_zero=float(np.mean(means > 0)),
        n=n,
        level=level,
        resamples=resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class Interval:
    """A mean over items (an accuracy, a rate) and its bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float
    resamples: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> Interval:
    """The `level` percentile interval of mean(values) from seeded resamples of the items (the
    paired bootstrap against zero: the same resampling, one condition)."""
    values = np.asarray(values, dtype=np.float64)
    diff = paired_bootstrap(values, np.zeros_like(values), resamples, seed, level)
    return Interval(diff.mean, diff.low, diff.high, diff.n, level, resamples, seed)


def bootstrap_quantile(
    values: Sequence[float] | np.ndarray,
    q: float,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """The `level` percentile interval of the `q`-quantile of `values` (a latency p95: q = 0.95)
    from seeded resamples of the items; `mean` holds the quantile of the items themselves."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise ValueError("a quantile interval needs a non-empty 1-D array of finite values")
    if resamples < 1 or not 0 < level < 1 or not 0 <= q <= 1:
        raise ValueError(f"need resamples >= 1, 0 < level < 1 and 0 <= q <= 1 (got {resamples}, {level}, {q})")
    stats = _resampled(values, lambda rows: np.quantile(rows, q, axis=1), resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(float(np.quantile(values, q)), float(low), float(high), len(values), level, resamples, seed)
