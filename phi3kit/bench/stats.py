"""The statistics every measurement here uses: medians, and a bootstrap interval for a median."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def median_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the median of `values` (percentile method, seeded: the same samples give the same
    interval)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = np.asarray(values, dtype=float)
    boot = np.median(a[rng.integers(0, len(a), size=(resamples, len(a)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)
