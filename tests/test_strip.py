"""STRIP (Gao et al. 2019) on the digits CNN: triggered inputs of a BadNets model are flagged by their low
entropy under superimposition, at a threshold set on clean data for a 1 % false rejection rate."""

from __future__ import annotations

import backdoor_victims as victims
import pytest
import torch
from backdoor_victims import badnets_victim
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.triggers import BlendTrigger, WarpTrigger
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.strip import StripDetector, evaluate_strip, fit_strip
from aisec.demo.models import digits_cnn

pytestmark = pytest.mark.training  # its figures depend on trained models

PATCH = victims.PATCH


def _backdoored(digits, trigger, target: int = 0, rate: float = 0.1, seed: int = 0) -> nn.Module:
    poisoned = plant_backdoor(
        digits.train, trigger, target_class=target, rate=rate, generator=torch.Generator().manual_seed(seed)
    )
    return fit(build_model(digits_cnn, seed), poisoned.data, seed=seed)


@pytest.fixture(scope="module")
def badnets() -> nn.Module:
    return badnets_victim(0)


@pytest.fixture(scope="module")
def halves() -> tuple[LabelledData, LabelledData]:
    return victims.halves()


def _evaluate(model: nn.Module, halves, trigger, target: int = 0, seed: int = 0):
    own, evaluation = halves
    detector = fit_strip(model, own, generator=torch.Generator().manual_seed(seed))
    triggered = trigger.apply(evaluation.x[evaluation.y != target])
    return detector, evaluate_strip(detector, evaluation.x, triggered)


def figures(seed: int) -> dict[str, float]:
    """STRIP at 1 % FRR on the seed's BadNets victim (10 %, target 0), on the held-out half."""
    _, result = _evaluate(badnets_victim(seed), victims.halves(), PATCH, seed=seed)
    return {"detection": result.detection_rate, "frr": result.frr, "auc": result.auc}


def test_strip_flags_badnets_triggered_inputs():
    """Seed study (bench/seed_study.py test_strip --seeds 0-4 --threads 1, under native AVX-512, default and
    AVX2 kernels, n=15): detection 0.992-1.000 (median 1.000), FRR on the held-out half 0.000-0.015 (0.004),
    AUC 0.999-1.000. Asserted on the median of three seeds."""
    runs = [figures(seed) for seed in SEEDS]
    median = median_figures(runs)
    assert median["detection"] >= 0.95
    assert median["frr"] <= 0.04  # 0.01 was set on the defender's half
    assert median["auc"] >= 0.99


def test_strip_detector_and_its_evaluation(badnets, halves):
    detector, result = _evaluate(badnets, halves, PATCH)
    assert isinstance(detector, StripDetector) and len(detector.overlays) == 32
    assert result.triggered == 245 and result.clean == 270
    assert result.far == pytest.approx(1 - result.detection_rate)
    flags = detector.flags(PATCH.apply(halves[1].x[:20]))
    assert flags.dtype == torch.bool and flags.shape == (20,)


def test_strip_sees_nothing_in_a_clean_model(digits_model, halves):
    """The patch alone does not lower the entropy: what STRIP detects is the backdoor, not the stamp."""
    _, result = _evaluate(digits_model, halves, PATCH)
    assert result.auc <= 0.75  # measured 0.50-0.62 over clean models
    assert result.detection_rate <= 0.1  # measured 0.004-0.05


def test_threshold_is_the_clean_quantile(badnets, halves):
    detector = fit_strip(
        badnets, halves[0], overlays=16, frr=0.05, generator=torch.Generator().manual_seed(0)
    )
    assert len(detector.calibration_entropy) == 270 - 16
    rejected = float((detector.calibration_entropy < detector.threshold).float().mean())
    assert rejected == pytest.approx(0.05, abs=0.01)
    again = fit_strip(badnets, halves[0], overlays=16, frr=0.05, generator=torch.Generator().manual_seed(0))
    assert again.threshold == detector.threshold and torch.equal(again.overlays, detector.overlays)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trigger", "min_auc"),
    [
        (BlendTrigger(), 0.95),
        (WarpTrigger(), 0.8),
    ],  # measured AUC 0.995 and 0.876 (detection 0.89 and 0.41 at 1 % FRR; one run, native kernels)
)
def test_strip_on_blend_and_warp(digits, halves, trigger, min_auc):
    _, result = _evaluate(_backdoored(digits, trigger), halves, trigger)
    print(trigger.name, f"detection {result.detection_rate:.3f}, FRR {result.frr:.3f}, AUC {result.auc:.3f}")
    assert result.auc >= min_auc


def test_bad_inputs(badnets, halves):
    own = halves[0]
    with pytest.raises(BadInputError, match="overlays"):
        fit_strip(badnets, own, overlays=0)
    with pytest.raises(BadInputError, match="false rejection rate"):
        fit_strip(badnets, own, frr=0.0)
    with pytest.raises(BadInputError, match="false rejection rate"):
        fit_strip(badnets, own, frr=0.6)
    with pytest.raises(BadInputError, match="lower < upper"):
        fit_strip(badnets, own, lower=1.0, upper=0.0)
    nan = own.x.clone()
    nan[3, 0, 2, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fit_strip(badnets, LabelledData(nan, own.y))
    with pytest.raises(DataError, match="outside"):
        fit_strip(badnets, LabelledData(own.x * 2, own.y))
    with pytest.raises(DataError, match="needs 32 overlays plus 100"):
        fit_strip(badnets, LabelledData(own.x[:100], own.y[:100]))
    detector = fit_strip(badnets, own, overlays=4, frr=0.05)
    with pytest.raises(DataError, match="shape"):
        detector.flags(own.x.flatten(1))
    with pytest.raises(DataError, match="NaN"):
        detector.entropy(nan)
    with pytest.raises(DataError, match="shape"):
        evaluate_strip(detector, own.x, own.x[:0])
