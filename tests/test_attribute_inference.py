"""Attribute inference against its baselines: a model that memorised its records leaks their hidden
attribute; a model of a correlated attribute leaks nothing that imputation does not already give."""

from __future__ import annotations

import functools

import pytest
import torch
from seed_figures import SEEDS, median_figures

from aisec.attacks.inference.attribute import infer_attribute
from aisec.core.errors import BadInputError, CapabilityError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only

pytestmark = pytest.mark.training  # its figures depend on trained models

BINARY = torch.tensor([0.0, 1.0])


def _mlp(features: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(features, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))


def _memorised(seed: int) -> tuple[TorchTarget, torch.Tensor, torch.Tensor]:
    """100 records with random labels and an independent binary attribute (feature 0), drawn from `seed`, and
    a model trained from `seed` until it memorises them: only memorisation links attribute and label."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(400, 10, generator=g)
    x[:, 0] = torch.randint(0, 2, (400,), generator=g).float()
    y = torch.randint(0, 2, (400,), generator=g)
    model = fit(
        build_model(functools.partial(_mlp, 10), seed),
        LabelledData(x[:100], y[:100], "memorised"),
        epochs=400,
        seed=seed,
    )
    return TorchTarget(model, InputSpec((10,), 2)), x, y


def _leak(target: TorchTarget, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The attack on the 100 members and on 100 non-members, against the best of its baselines."""
    population = {"population_x": x[200:], "population_y": y[200:]}
    members = infer_attribute(target, x[:100], y[:100], feature=0, candidates=BINARY, truth=x[:100, 0].long(),
                              **population)  # fmt: skip
    others = infer_attribute(target, x[100:200], y[100:200], feature=0, candidates=BINARY,
                             truth=x[100:200, 0].long(), **population)  # fmt: skip
    assert members.queries == 2 * 100
    return {
        "members accuracy": members.accuracy,
        "members advantage": members.advantage,
        "non-members advantage": others.advantage,
    }


def _correlated(seed: int) -> dict[str, float]:
    """Breast cancer, 'worst perimeter' above or below its median (its two class means as the candidates),
    on 200 training records drawn from `seed` and a model trained from `seed`."""
    split = load_builtin("breast_cancer", seed=0)
    x, y = torch.cat([split.train.x, split.test.x]), torch.cat([split.train.y, split.test.y])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, population = order[:200], order[385:]
    feature = 22
    above = (x[:, feature] > x[train, feature].median()).long()
    centres = torch.stack([x[train, feature][above[train] == b].mean() for b in range(2)])
    x = x.clone()
    x[:, feature] = centres[above]
    model = fit(
        build_model(functools.partial(_mlp, 30), seed),
        LabelledData(x[train], y[train], "bc"),
        epochs=300,
        seed=seed,
    )
    result = infer_attribute(TorchTarget(model, InputSpec((30,), 2)), x[train], y[train], feature=feature,
                             candidates=centres, population_x=x[population], population_y=y[population],
                             truth=above[train])  # fmt: skip
    return {
        "correlated accuracy": result.accuracy,
        "correlated imputation accuracy": result.imputation_accuracy,
        "correlated advantage": result.advantage,
    }


def figures(seed: int) -> dict[str, float]:
    return _leak(*_memorised(seed)) | _correlated(seed)


@pytest.fixture(scope="module")
def memorised():
    return _memorised(0)


def test_memorised_members_leak_their_attribute(memorised):
    """Seed study (bench/seed_study.py test_attribute_inference, seeds 0-4 under native AVX-512, default and
    AVX2 kernels, n=15; each seed draws the records and trains the model): members' accuracy 0.78/0.79/0.81
    and advantage over the best baseline +0.23/+0.26/+0.34 (min/median/max), non-members' advantage
    -0.19/-0.04/+0.05. Asserted on the median of three seeds."""
    models = [memorised] + [_memorised(seed) for seed in SEEDS[1:]]  # the fixture is seed 0's
    median = median_figures([_leak(*model) for model in models])
    assert median["members advantage"] >= 0.15
    assert median["non-members advantage"] <= 0.1  # non-members gain nothing


def test_a_correlated_attribute_leaks_no_more_than_imputation():
    """Breast cancer, 'worst perimeter' above or below its median: nearest-neighbour imputation from the other
    features is right about 92 % of the time, and the attack through the model never beats it.

    Seed study (bench/seed_study.py test_attribute_inference, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15; each seed draws the 200 training records and trains the model): advantage over the best
    baseline -0.69/-0.085/-0.055 (min/median/max), imputation accuracy 0.895/0.925/0.935. The attack's own
    accuracy is fragile, 0.23/0.84/0.85 (two of five seeds' models, 0.23 and 0.625, give the attribute
    away backwards), so it is not asserted. Asserted on the median of three seeds."""
    median = median_figures([_correlated(seed) for seed in SEEDS])
    assert median["correlated imputation accuracy"] >= 0.85
    assert median["correlated advantage"] <= 0.0  # the model adds nothing to imputation


def test_bad_input_fails_before_any_query(memorised):
    target, x, y = memorised
    target.queries.reset()
    population = {"population_x": x[200:], "population_y": y[200:]}
    with pytest.raises(CapabilityError):
        infer_attribute(label_only(target), x[:5], y[:5], feature=0, candidates=BINARY, **population)
    with pytest.raises(BadInputError, match="feature"):
        infer_attribute(target, x[:5], y[:5], feature=10, candidates=BINARY, **population)
    with pytest.raises(BadInputError, match="two candidate"):
        infer_attribute(target, x[:5], y[:5], feature=0, candidates=BINARY[:1], **population)
    assert target.queries.total == 0
