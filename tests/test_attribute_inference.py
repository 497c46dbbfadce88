"""Attribute inference against its baselines: a model that memorised its records leaks their hidden
attribute; a model of a correlated attribute leaks nothing that imputation does not already give."""

from __future__ import annotations

import functools

import pytest
import torch

from aisec.attacks.inference.attribute import infer_attribute
from aisec.core.errors import BadInputError, CapabilityError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only

BINARY = torch.tensor([0.0, 1.0])


def _mlp(features: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(features, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))


@pytest.fixture(scope="module")
def memorised():
    """100 records with random labels and an independent binary attribute: only memorisation links them."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 10, generator=g)
    x[:, 0] = torch.randint(0, 2, (400,), generator=g).float()
    y = torch.randint(0, 2, (400,), generator=g)
    model = fit(
        build_model(functools.partial(_mlp, 10), 0),
        LabelledData(x[:100], y[:100], "memorised"),
        epochs=400,
        seed=0,
    )
    return TorchTarget(model, InputSpec((10,), 2)), x, y


def test_memorised_members_leak_their_attribute(memorised):
    target, x, y = memorised
    population = {"population_x": x[200:], "population_y": y[200:]}
    members = infer_attribute(target, x[:100], y[:100], feature=0, candidates=BINARY, truth=x[:100, 0].long(),
                              **population)  # fmt: skip
    others = infer_attribute(target, x[100:200], y[100:200], feature=0, candidates=BINARY,
                             truth=x[100:200, 0].long(), **population)  # fmt: skip
    assert members.advantage >= 0.2  # measured: 0.82 against a best baseline of 0.52
    assert others.advantage <= 0.05  # measured: -0.10 (non-members gain nothing)
    assert members.queries == 2 * 100


def test_a_correlated_attribute_leaks_no_more_than_imputation():
    """Breast cancer, 'worst perimeter' above or below its median: the attack is right 84 % of the time, but
    nearest-neighbour imputation from the other features is right 89 %: the model adds nothing."""
    split = load_builtin("breast_cancer", seed=0)
    x, y = torch.cat([split.train.x, split.test.x]), torch.cat([split.train.y, split.test.y])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, population = order[:200], order[385:]
    feature = 22
    above = (x[:, feature] > x[train, feature].median()).long()
    centres = torch.stack([x[train, feature][above[train] == b].mean() for b in range(2)])
    x = x.clone()
    x[:, feature] = centres[above]
    model = fit(
        build_model(functools.partial(_mlp, 30), 0),
        LabelledData(x[train], y[train], "bc"),
        epochs=300,
        seed=0,
    )
    result = infer_attribute(TorchTarget(model, InputSpec((30,), 2)), x[train], y[train], feature=feature,
                             candidates=centres, population_x=x[population], population_y=y[population],
                             truth=above[train])  # fmt: skip
    assert result.accuracy > 0.75 and result.imputation_accuracy > 0.75
    assert result.advantage <= 0.02  # measured: -0.055


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
