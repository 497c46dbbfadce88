"""Class-representative inversion (Fredrikson et al. 2015) on digits: softmax regression (the paper's
setting) and the demo CNN, white box and score-only."""

from __future__ import annotations

import pytest
import torch
from seed_figures import SEEDS, median_figures

from aisec.attacks.inversion.class_representative import (
    InversionConfig,
    InversionResult,
    identification,
    invert_classes,
)
from aisec.core.errors import BadInputError, CapabilityError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only, scores_only

pytestmark = pytest.mark.training  # its figures depend on trained models

SPEC = InputSpec((1, 8, 8), 10)
WHITE_BOX = InversionConfig(steps=200, step_size=0.01, l2_weight=0.05)
SCORE_ONLY = InversionConfig(steps=100, step_size=0.01, l2_weight=0.05, query_budget=40_010)
BLANK = InversionConfig(steps=200, step_size=0.01)


def _softmax_regression() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def _regression(digits: Split, seed: int) -> TorchTarget:
    return TorchTarget(fit(build_model(_softmax_regression, seed), digits.train, seed=seed), SPEC)


def _cnn(digits: Split, seed: int) -> TorchTarget:
    return TorchTarget(fit(build_model(digits_cnn, seed), digits.train, seed=seed), SPEC)


def _identified(result: InversionResult, digits: Split) -> int:
    """How many of the reconstructions are nearest to their own class's mean training example."""
    hits, _ = identification(result.images, result.classes, digits.train.x, digits.train.y)
    return round(hits * len(result.classes))


def _white_box(regression: TorchTarget, digits: Split) -> dict[str, float]:
    result = invert_classes(regression, config=WHITE_BOX, start=digits.train.x.mean(0, keepdim=True))
    assert ((result.images >= 0) & (result.images <= 1)).all()
    return {
        "white box identified": _identified(result, digits),
        "white box min confidence": float(result.confidence.min()),
    }


def _score_only(regression: TorchTarget, digits: Split, seed: int) -> dict[str, float]:
    target = scores_only(regression)
    result = invert_classes(target, config=SCORE_ONLY, start=digits.train.x.mean(0, keepdim=True),
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
    assert result.queries <= SCORE_ONLY.query_budget
    return {"score-only identified": _identified(result, digits)}


def _blank_start(cnn: TorchTarget, digits: Split) -> dict[str, float]:
    return {"CNN identified from a blank start": _identified(invert_classes(cnn, config=BLANK), digits)}


def figures(seed: int) -> dict[str, float]:
    """Classes identified (of 10) on the softmax regression and the demo CNN trained from `seed`."""
    digits = load_builtin("digits", seed=0)
    regression = _regression(digits, seed)
    return (_white_box(regression, digits) | _score_only(regression, digits, seed)
            | _blank_start(_cnn(digits, seed), digits))  # fmt: skip


@pytest.fixture(scope="module")
def regressions(digits) -> list[TorchTarget]:
    """The softmax regression (the paper's setting) trained from each seed of SEEDS."""
    return [_regression(digits, seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def softmax_regression(regressions) -> TorchTarget:
    return regressions[0]


def test_white_box_reconstructions_identify_every_class(regressions, digits):
    """Seed study (bench/seed_study.py test_inversion, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15): 10 of 10 classes identified on every run, the least confident reconstruction at
    0.973/0.974/0.975 (min/median/max). Asserted on the median of three seeds."""
    median = median_figures([_white_box(regression, digits) for regression in regressions])
    assert median["white box identified"] >= 9
    assert median["white box min confidence"] > 0.9


def test_score_only_inversion_within_a_query_budget(regressions, digits):
    """Seed study (bench/seed_study.py test_inversion, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15): 10 of 10 classes identified on every run, within 40,010 queries. Asserted on the median of
    three seeds."""
    median = median_figures(
        [_score_only(regression, digits, seed) for seed, regression in zip(SEEDS, regressions, strict=True)]
    )
    assert median["score-only identified"] >= 9


def test_cnn_reconstructions_from_a_blank_start(digits_target, digits):
    """Seed study (bench/seed_study.py test_inversion, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15): 7/9/10 of 10 classes identified (min/median/max; seed 0's CNN 7 under every kernel set,
    the others 9 or 10). Asserted on the median of three seeds."""
    cnns = [digits_target] + [_cnn(digits, seed) for seed in SEEDS[1:]]  # the session's CNN is seed 0's
    median = median_figures([_blank_start(cnn, digits) for cnn in cnns])
    assert median["CNN identified from a blank start"] >= 7


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
