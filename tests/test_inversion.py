"""Class-representative inversion (Fredrikson et al. 2015) on digits: softmax regression (the paper's
setting) and the demo CNN, white box and score-only."""

from __future__ import annotations

import pytest
import torch

from aisec.attacks.inversion.class_representative import InversionConfig, identification, invert_classes
from aisec.core.errors import BadInputError, CapabilityError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only, scores_only

SPEC = InputSpec((1, 8, 8), 10)


def _softmax_regression() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


@pytest.fixture(scope="module")
def softmax_regression(digits) -> TorchTarget:
    model = fit(build_model(_softmax_regression, 0), digits.train, seed=0)
    return TorchTarget(model, SPEC)


def test_white_box_reconstructions_identify_every_class(softmax_regression, digits):
    mean = digits.train.x.mean(0, keepdim=True)
    result = invert_classes(softmax_regression, config=InversionConfig(steps=200, step_size=0.01, l2_weight=0.05),
                            start=mean)  # fmt: skip
    hits, _ = identification(result.images, result.classes, digits.train.x, digits.train.y)
    assert hits == 1.0  # measured: 10 of 10
    assert result.confidence.min() > 0.9
    assert ((result.images >= 0) & (result.images <= 1)).all()


def test_score_only_inversion_within_a_query_budget(softmax_regression, digits):
    target = scores_only(softmax_regression)
    config = InversionConfig(steps=100, step_size=0.01, l2_weight=0.05, query_budget=40_010)
    result = invert_classes(target, config=config, start=digits.train.x.mean(0, keepdim=True),
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    hits, _ = identification(result.images, result.classes, digits.train.x, digits.train.y)
    assert hits >= 0.9  # measured: 10 of 10
    assert result.queries <= 40_010


def test_cnn_reconstructions_from_a_blank_start(digits_target, digits):
    result = invert_classes(digits_target, config=InversionConfig(steps=200, step_size=0.01))
    hits, _ = identification(result.images, result.classes, digits.train.x, digits.train.y)
    assert hits >= 0.7  # measured: 8 of 10


def test_bad_input_fails_before_any_query(softmax_regression):
    softmax_regression.queries.reset()
    blind = label_only(softmax_regression)
    with pytest.raises(CapabilityError):
        invert_classes(blind)
    with pytest.raises(BadInputError, match="classes"):
        invert_classes(softmax_regression, classes=[10])
    with pytest.raises(BadInputError, match="query budget"):
        invert_classes(scores_only(softmax_regression), config=InversionConfig(query_budget=5))
    assert softmax_regression.queries.total == 0
