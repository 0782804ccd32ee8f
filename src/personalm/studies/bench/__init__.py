"""Performance benchmarks: our code and a named peer, same process, same input, ratio printed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float, digits: int = 1) -> float:
    """The q-th percentile of a list of timings, rounded for the report (p50, p95 of latencies)."""
    return round(float(np.percentile(values, q)), digits)
