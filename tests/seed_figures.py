"""What the seed-study tests share: the seeds a test asserts over, and each figure's median over them.

A figure that depends on a training run is asserted on the median over SEEDS, with thresholds from a seed study
(bench/seed_study.py runs a module's `figures(seed)` over more seeds and CPU kernel sets)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

SEEDS = (0, 1, 2)  # the seeds a test asserts over; studies run more


def median_figures(
    runs: Sequence[dict[str, float]], seeds: Sequence[int] = SEEDS, label: str = "seed"
) -> dict[str, float]:
    """Each figure's median over `runs` (one dict of figures per seed of `seeds`); every run is printed first,
    so `pytest -s` shows the spread the median hides."""
    for seed, run in zip(seeds, runs, strict=True):
        print(f"{label} {seed}: " + ", ".join(f"{name} {value:.3f}" for name, value in run.items()))
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}
