"""MM-BD (Wang et al. 2024) on digits CNNs: the BadNets target's maximum logit margin stands out, with no clean
data; and the scan's contract (bad input, determinism, the model left as it was)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import backdoor_victims as victims
import numpy as np
import pytest
import torch
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.defend.supply_chain.behaviour.max_margin import (
    MaxMarginConfig,
    MaxMarginResult,
    max_margin_scan,
    order_statistic_p_value,
)
from aisec.demo.models import digits_cnn

SHAPE = (1, 8, 8)
QUICK = MaxMarginConfig(restarts=4, steps=10)


def scan(model: nn.Module, seed: int) -> MaxMarginResult:
    return max_margin_scan(model, SHAPE, generator=torch.Generator().manual_seed(seed))


def figures(seed: int) -> dict[str, float]:
    """The default scan of the seed's clean model and BadNets victim (10 %, target 0)."""
    clean, badnets = scan(victims.clean_model(seed), seed), scan(victims.badnets_victim(seed), seed)
    ranked = sorted(badnets.statistics, reverse=True)
    return {
        "clean_p": clean.p_value,
        "clean_max": max(clean.statistics),
        "badnets_p": badnets.p_value,
        "badnets_target": float(badnets.suspected_target),
        "target_over_runner_up": ranked[0] / ranked[1],
        "target_over_clean_max": badnets.statistics[victims.TARGET] / max(clean.statistics),
    }


@pytest.mark.training
def test_badnets_target_stands_out_and_clean_models_pass():
    """Seed study (default scan: 30 restarts, 100 Adam steps; seeds 0-5, one thread, native AVX-512 and
    portable kernels, n=12 per kind): class 0 has the largest statistic on all 36 BadNets victims (rates 0.1,
    0.05, 0.03). Flagged at alpha 0.05: rate 0.1 on 6 of 12 (p 3e-8 to 0.24), 0.05 on 9 of 12 (7e-5 to 0.40),
    0.03 on 7 of 12 (5e-4 to 0.33), clean models on 1 of 12 (p 0.009, seed 4 portable, where class 4 stands
    1.26 times above the runner-up; the others 0.095-0.52). At rate 0.1 the target's margin is 1.12-1.71 times
    the runner-up's (clean models' largest: 1.00-1.26) and, on seeds 0-2, 1.28-1.61 times the clean model's
    largest. The p-value is fragile: the Gamma fit's maximum likelihood degenerates on 9 values (shape < 1,
    location at the smallest), and noise of +-0.3 on the statistics moved seed 0's victim between 0.038 and
    0.073, seed 2's between 0.020 and 0.088 and the clean models of seeds 0-2 between 0.069 and 0.36. So the
    target is asserted on every seed, the flag on one of three (seed 1: p 3e-8 under both kernel sets), the
    clean pass on two of three, and the medians."""
    runs = [figures(seed) for seed in SEEDS]
    median = median_figures(runs)
    assert all(run["badnets_target"] == victims.TARGET for run in runs)
    assert all(run["target_over_clean_max"] >= 1.15 for run in runs)  # measured 1.28-1.61
    assert median["target_over_runner_up"] >= 1.2  # medians measured 1.37 and 1.45
    assert min(run["badnets_p"] for run in runs) < 0.05  # measured 2.8e-8 and 3.4e-8
    assert median["badnets_p"] <= 0.1  # medians measured 0.036 and 3.5e-4
    assert sum(run["clean_p"] >= 0.05 for run in runs) >= 2  # measured 3 of 3 under both kernel sets
    assert median["clean_p"] >= 0.1  # medians measured 0.17 and 0.46


@pytest.mark.training
def test_maximisers_reach_the_statistics():
    model = victims.badnets_victim(0)
    result = max_margin_scan(model, SHAPE, QUICK, lower=-0.5, upper=1.5)
    assert result.maximisers.shape == (10, *SHAPE)
    assert float(result.maximisers.min()) >= -0.5 and float(result.maximisers.max()) <= 1.5
    with torch.no_grad():
        logits = model(result.maximisers)
    own = logits.diagonal()
    rest = logits.masked_fill(torch.eye(10, dtype=torch.bool), -math.inf).amax(1)
    assert torch.allclose(own - rest, torch.tensor(result.statistics), atol=1e-4)
    assert result.suspected_target == int(np.argmax(result.statistics))
    assert result.flagged == (result.p_value < result.alpha)


def _untrained() -> nn.Module:
    return build_model(digits_cnn, 0)


def test_same_generator_same_result_and_model_untouched():
    model = _untrained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = max_margin_scan(model, SHAPE, QUICK, generator=torch.Generator().manual_seed(3))
    again = max_margin_scan(model, SHAPE, QUICK, generator=torch.Generator().manual_seed(3))
    other = max_margin_scan(model, SHAPE, QUICK, generator=torch.Generator().manual_seed(4))
    assert first.statistics == again.statistics and first.p_value == again.p_value
    assert torch.equal(first.maximisers, again.maximisers)
    assert first.statistics != other.statistics
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored(training):
    model = _untrained().train(training)
    max_margin_scan(model, SHAPE, QUICK)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


class _Recording:
    def __init__(self) -> None:
        self.steps = 0
        self.totals: list[float] = []

    @contextmanager
    def task(self, description: str, total: float) -> Iterator[_Recording]:
        self.totals.append(total)
        yield self

    def advance(self, amount: float = 1) -> None:
        self.steps += int(amount)


def test_progress_counts_the_steps():
    progress = _Recording()
    max_margin_scan(_untrained(), SHAPE, QUICK, progress=progress)
    assert progress.totals == [QUICK.steps] and progress.steps == QUICK.steps


class _Constant(nn.Module):
    def __init__(self, value: float, classes: int = 10) -> None:
        super().__init__()
        self.value, self.classes = value, classes
        self.linear = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * 0 + self.value


def test_bad_inputs():
    model = _untrained()
    two_classes = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(BadInputError, match="K >= 3"):
        max_margin_scan(two_classes, SHAPE)
    with pytest.raises(BadInputError, match=r"\(1, K\)"):
        max_margin_scan(nn.Sequential(nn.Flatten(0), nn.Linear(64, 10)), SHAPE)  # a 1-d output
    with pytest.raises(DataError, match="NaN or infinite"):
        max_margin_scan(_Constant(math.nan), SHAPE)
    with pytest.raises(BadInputError, match="fails on an input"):
        max_margin_scan(model, (1, 7, 7))
    for shape in ((), (1, 0, 8), (1, 8.0, 8), (True, 8, 8), 8):
        with pytest.raises(BadInputError, match="input_shape"):
            max_margin_scan(model, shape)
    for lower, upper in ((1.0, 1.0), (1.0, 0.0), (0.0, math.inf), (math.nan, 1.0)):
        with pytest.raises(BadInputError, match="lower < upper"):
            max_margin_scan(model, SHAPE, lower=lower, upper=upper)
    for bad in (
        {"restarts": 0},
        {"steps": 1.5},
        {"lr": -0.1},
        {"lr": math.nan},
        {"alpha": 0},
        {"alpha": 1.0},
    ):
        with pytest.raises(BadInputError, match=next(iter(bad))):
            MaxMarginConfig(**bad)


def test_p_value_of_the_largest_statistic():
    others = np.array([40.9, 45.2, 60.6, 52.4, 55.3, 48.2, 50.9, 40.0, 45.6])
    ordinary, outlier = np.append(others, 62.0), np.append(others, 120.0)
    assert 0.1 < order_statistic_p_value(ordinary) <= 1
    assert 0 <= order_statistic_p_value(outlier) < 1e-3
    # equals 1 - H0(r_max)^(K - 1), H0 the Gamma maximum-likelihood fit to the others
    from scipy.stats import gamma

    a, loc, scale = gamma.fit(others)
    expected = 1 - gamma.cdf(62.0, a, loc=loc, scale=scale) ** 9
    assert order_statistic_p_value(ordinary) == pytest.approx(expected, rel=1e-9)
    # a degenerate null (the others all equal) is a point mass
    assert order_statistic_p_value(np.array([3.0, 3.0, 3.0, 5.0])) == 0.0
    assert order_statistic_p_value(np.array([3.0, 3.0, 3.0, 3.0])) == 1.0


def test_constant_model_is_not_flagged():
    """Every class's margin is 0 wherever the logits are all equal: a degenerate null, p-value 1."""
    result = max_margin_scan(_Constant(0.5), SHAPE, QUICK)
    assert result.statistics == (0.0,) * 10
    assert result.p_value == 1.0 and not result.flagged
