"""The poisoning and backdoor probes in an assessment: their checks refuse bad input before any work, and
their findings carry the figures the library tests establish."""

from __future__ import annotations

import pytest
import torch

from aisec.assessment.plan import (
    BackdoorProbeSection,
    DefencesSection,
    GradientShapingSection,
    Plan,
    PoisoningProbeSection,
    ProbesSection,
)
from aisec.assessment.probe import Training
from aisec.assessment.runner import run_assessment
from aisec.core.errors import BadInputError, DataError
from aisec.core.training import fit
from aisec.data.dataset import LabelledData
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models


class _Spy:
    """A recipe that counts its calls: a check that fails must leave it at zero."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, data, *, seed):
        self.calls += 1
        return fit(model, data, seed=seed)


def _findings(assessment, rule):
    return next(f for f in assessment.findings if f.rule_id == rule)


def _rows(finding, title_start):
    return next(t for t in finding.tables if t.title.startswith(title_start)).records()


def test_a_poison_rate_outside_the_unit_interval_is_a_plan_error() -> None:
    for rate in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="rates"):
            BackdoorProbeSection(rates=(rate,))
    with pytest.raises(ValueError, match="training.recipe"):
        Plan.model_validate(
            {
                "target": {
                    "kind": "onnx",
                    "path": "m.onnx",
                    "input": {"shape": [1, 8, 8], "num_classes": 10},
                },
                "data": {"builtin": "digits"},
                "probes": {"backdoor": {}},
            }
        )


def test_a_trigger_larger_than_the_image_fails_before_any_training(digits) -> None:
    small = LabelledData(torch.rand(200, 1, 2, 2), torch.arange(200) % 2, "tiny images")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    spy = _Spy()
    with pytest.raises(DataError, match="does not fit in 2x2"):
        run_assessment(
            TorchTarget(model, InputSpec((1, 2, 2), 2)),
            small,
            ProbesSection(backdoor=BackdoorProbeSection(triggers=("patch",))),
            training=Training(small, lambda: model, spy),
        )
    assert spy.calls == 0


def test_a_training_set_with_one_class_fails_before_any_training(digits, digits_model) -> None:
    one_class = LabelledData(digits.train.x[:300], torch.zeros(300, dtype=torch.long), "one class")
    spy = _Spy()
    for probes in (
        ProbesSection(backdoor=BackdoorProbeSection()),
        ProbesSection(poisoning=PoisoningProbeSection()),
    ):
        with pytest.raises(DataError, match="1 class"):
            run_assessment(
                TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
                digits.test,
                probes,
                training=Training(one_class, digits_cnn, spy),
            )
    assert spy.calls == 0


def test_a_targeted_flip_larger_than_its_class_fails_before_any_training(digits, digits_model) -> None:
    spy = _Spy()
    with pytest.raises(DataError, match="only .* are of class"):
        run_assessment(
            TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
            digits.test,
            ProbesSection(poisoning=PoisoningProbeSection(rates=(0.3,))),
            training=Training(digits.train, digits_cnn, spy),
        )
    with pytest.raises(BadInputError, match="target_class 12"):
        run_assessment(
            TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
            digits.test,
            ProbesSection(backdoor=BackdoorProbeSection(target_class=12)),
            training=Training(digits.train, digits_cnn, spy),
        )
    assert spy.calls == 0


def test_backdoor_probe_plants_screens_and_repairs(digits, digits_model) -> None:
    assessment = run_assessment(
        TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
        digits.test,
        ProbesSection(
            backdoor=BackdoorProbeSection(
                triggers=("patch",), rates=(0.05,), repair=("retrain",), strip=False, neural_cleanse=False
            )
        ),
        training=Training(digits.train, digits_cnn, fit),
    )
    planted = _findings(assessment, "AISEC-BKD-001")
    (row,) = _rows(planted, "Attack success")
    # clean accuracy kept within 2 points
    assert row["attack success"] > 0.9 and row["clean accuracy"] > row["clean model accuracy"] - 0.02
    defences = _findings(assessment, "AISEC-BKD-002")
    union = [r for r in _rows(defences, "Poison detection") if r["detector"] == "all three (union)"]
    assert union[0]["recall"] >= 0.95
    (repair,) = _rows(defences, "Repairs")
    assert repair["attack success after"] < 0.1  # after retraining without the flags
    assert planted.galleries and len(planted.galleries[0].pictures) == 2  # clean and patched sample


@pytest.mark.slow
def test_backdoor_probe_full(digits, digits_model) -> None:
    """Fine-pruning, STRIP, gradient shaping and Neural Cleanse on the clean model under assessment."""
    assessment = run_assessment(
        TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
        digits.test,
        ProbesSection(backdoor=BackdoorProbeSection(triggers=("patch",), rates=(0.1,))),
        training=Training(digits.train, digits_cnn, fit),
        defences=DefencesSection(gradient_shaping=GradientShapingSection()),
    )
    scan = _findings(assessment, "AISEC-BKD-003")
    assert scan.severity.value == "info"  # the clean model under assessment is not flagged
    assert "flags 1 of the 1 models" in scan.message  # the backdoored control is
    defences = _findings(assessment, "AISEC-BKD-002")
    strip = _rows(defences, "STRIP")
    assert strip[0]["triggered inputs detected"] > 0.9
    repairs = {r["repair"].split(" (")[0]: r for r in _rows(defences, "Repairs")}
    assert set(repairs) == {"retrain without flagged samples", "gradient shaping", "fine-pruning"}


def test_poisoning_probe_flips_audits_and_repairs(digits, digits_model) -> None:
    assessment = run_assessment(
        TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
        digits.test,
        ProbesSection(poisoning=PoisoningProbeSection(attacks=("random_flip",), rates=(0.1,))),
        training=Training(digits.train, digits_cnn, fit),
    )
    defences = _findings(assessment, "AISEC-POI-002")
    rows = {r["detector"].split(" (")[0]: r for r in _rows(defences, "Flipped labels")}
    # recall and precision; measured 0.849 and 0.87 (the issue asks for 0.8 and 0.8)
    assert rows["confident learning"]["recall"] >= 0.8 and rows["confident learning"]["precision"] >= 0.8
    assert rows["either"]["recall"] >= 0.95
    (repair,) = _rows(defences, "Repairs")
    # accuracy after removing the flagged samples beats the poisoned model's
    assert repair["accuracy after"] > repair["accuracy before"]
    audit = _findings(assessment, "AISEC-POI-003")
    assert audit.metric("flagged_by_both").value < 0.02  # digits' own labels are nearly all right
