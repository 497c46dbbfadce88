"""Interval estimates for the proportions an assessment reports."""

from __future__ import annotations

import math

from aisec.assessment.finding import Estimate

Z_95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z_95) -> Estimate:
    """Proportion with its Wilson score interval (Wilson 1927).

    Chosen over the normal approximation because robust accuracies near 0 or 1 on a few hundred samples
    are common, and there the Wald interval collapses to a point or leaves [0, 1].
    """
    if n <= 0:
        raise ValueError("an estimate needs at least one sample")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(value=p, lower=max(0.0, centre - half), upper=min(1.0, centre + half), n=n)
