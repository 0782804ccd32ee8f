"""Which row survives a duplicate group: the earliest one, decided row by row in input order.

Row j is dropped when some earlier row that was *kept* is at least `threshold` similar to it; it
then points at the most similar such row (ties: the earliest). So every dropped row names a kept
row it truly resembles (no chains through dropped rows), and the outcome depends only on the row
order, not on batching or workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Decision:
    """Per-row outcome of one dedup stage (indices are row positions within the stage's input)."""

    keep: np.ndarray  # bool
    duplicate_of: np.ndarray  # int64, -1 for kept rows
    similarity: np.ndarray  # float32, NaN for kept rows

    @staticmethod
    def all_kept(n: int) -> Decision:
        return Decision(np.ones(n, bool), np.full(n, -1, np.int64), np.full(n, np.nan, np.float32))

    @property
    def dropped(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)


def greedy_from_edges(n: int, left: np.ndarray, right: np.ndarray, sim: np.ndarray) -> Decision:
    """Decide from similar pairs (left < right, similarity >= threshold already checked)."""
    decision = Decision.all_kept(n)
    if len(left) == 0:
        return decision
    order = np.lexsort((left, -sim, right))
    left, right, sim = left[order], right[order], sim[order]
    keep = decision.keep
    for i, j, s in zip(left.tolist(), right.tolist(), sim.tolist(), strict=True):
        if keep[j] and keep[i] and i < j:
            keep[j] = False
            decision.duplicate_of[j] = i
            decision.similarity[j] = s
    return decision
