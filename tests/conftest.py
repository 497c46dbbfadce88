"""Shared, seeded fixtures: the digits CNN (trained once per session) and a gradient-masked variant.

Tests whose figures depend on a trained model carry the `training` mark: modules that train their own models
say so with `pytestmark`, and every test that uses one of this file's trained models is marked here. CI runs
them a second time under torch's portable kernels (`make test-portable`), where float rounding differs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

# One torch thread for the whole session, set here only: `make test` runs a pytest worker per core, the seed
# studies measure the figures at one thread (`bench/seed_study.py --threads 1`), and Opacus's many small kernels
# ran about 20 times slower on two threads of a busy 2-core machine.
torch.set_num_threads(1)
DIGITS_SPEC = InputSpec((1, 8, 8), 10)


@pytest.fixture(scope="session")
def digits() -> Split:
    return load_builtin("digits", seed=0)


@pytest.fixture(scope="session")
def digits_model(digits: Split) -> nn.Module:
    return fit(build_model(digits_cnn, 0), digits.train, seed=0)


@pytest.fixture()
def digits_target(digits_model: nn.Module) -> TorchTarget:
    """A fresh target (query counter at 0) over the session's trained CNN."""
    return TorchTarget(digits_model, DIGITS_SPEC)


class Binarize(nn.Module):
    """x > 0.5: a non-differentiable first layer whose gradient is zero everywhere (masks gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).to(x.dtype)


def _masked_cnn() -> nn.Module:
    return nn.Sequential(Binarize(), digits_cnn())


@pytest.fixture(scope="session")
def masked_model(digits: Split) -> nn.Module:
    return fit(build_model(_masked_cnn, 0), digits.train, seed=0)


@pytest.fixture()
def masked_target(masked_model: nn.Module) -> TorchTarget:
    return TorchTarget(masked_model, DIGITS_SPEC)


TRAINED_FIXTURES = {"digits_model", "digits_target", "masked_model", "masked_target"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.training)
