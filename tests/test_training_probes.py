"""The poisoning and backdoor probes in an assessment: their checks refuse bad input before any work, and
their findings carry the figures the library tests establish."""

from __future__ import annotations

import pytest
import torch
from seed_figures import SEEDS, median_figures

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
    """One trigger at 5 %, three plan seeds (the poisons, the retrained models and the reference split are
    drawn from the seed): attack success and clean accuracy kept, the screening's recall, and attack success
    after retraining without its flags, each on the median. The library figures behind them (seed study of
    tests/test_poison_detection.py): attack success >= 0.994 at 5 %, recall 1.000, after <= 0.006."""
    runs = []
    for seed in SEEDS:
        assessment = run_assessment(
            TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
            digits.test,
            ProbesSection(
                backdoor=BackdoorProbeSection(
                    triggers=("patch",), rates=(0.05,), repair=("retrain",), strip=False, neural_cleanse=False
                )
            ),
            training=Training(digits.train, digits_cnn, fit),
            seed=seed,
        )
        planted = _findings(assessment, "AISEC-BKD-001")
        (row,) = _rows(planted, "Attack success")
        defences = _findings(assessment, "AISEC-BKD-002")
        (union,) = [r for r in _rows(defences, "Poison detection") if r["detector"] == "all three (union)"]
        (repair,) = _rows(defences, "Repairs")
        runs.append({
            "success": row["attack success"],
            "accuracy_kept": row["clean accuracy"] - row["clean model accuracy"],
            "recall": union["recall"],
            "success_after_retraining": repair["attack success after"],
        })  # fmt: skip
        assert planted.galleries and len(planted.galleries[0].pictures) == 2  # clean and patched sample
    median = median_figures(runs)
    assert median["success"] > 0.9
    assert median["accuracy_kept"] > -0.02
    assert median["recall"] >= 0.95
    assert median["success_after_retraining"] < 0.1


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
    assert strip[0]["triggered inputs detected"] > 0.9  # library seed study: 0.99-1.00 at 10 %
    repairs = {r["repair"].split(" (")[0]: r for r in _rows(defences, "Repairs")}
    assert set(repairs) == {"retrain without flagged samples", "gradient shaping", "fine-pruning"}
    for repair in repairs.values():
        assert repair["attack success before"] > 0.95  # 10 % of the training set poisoned
    retrained, shaped, pruned = (
        repairs[name] for name in ("retrain without flagged samples", "gradient shaping", "fine-pruning")
    )
    assert retrained["attack success after"] < 0.1  # screening finds every poison (library: <= 0.006)
    assert retrained["clean accuracy after"] > retrained["clean accuracy before"] - 0.02
    # Gradient shaping blunts only a small poisoned fraction (library: 13-21 % at 1 %, none at 5-10 %), and
    # fine-pruning weakens these backdoors by an amount that varies from seed to seed (0.06-0.90, see
    # tests/test_fine_pruning.py): the report must say so, and the figures are what they are.
    assert shaped["attack success after"] > 0.8
    assert pruned["attack success after"] <= pruned["attack success before"]
    assert pruned["clean accuracy after"] > pruned["clean accuracy before"] - 0.05


def test_poisoning_probe_flips_audits_and_repairs(digits, digits_model) -> None:
    """10 % random flips, three plan seeds: confident learning's recall and precision (the issue asks for 0.8
    and 0.8; measured 0.85-0.88 and 0.87 on the library test), the union's recall, and the repaired model's
    accuracy against the poisoned one's, on the median."""
    runs = []
    for seed in SEEDS:
        assessment = run_assessment(
            TorchTarget(digits_model, InputSpec((1, 8, 8), 10)),
            digits.test,
            ProbesSection(poisoning=PoisoningProbeSection(attacks=("random_flip",), rates=(0.1,))),
            training=Training(digits.train, digits_cnn, fit),
            seed=seed,
        )
        defences = _findings(assessment, "AISEC-POI-002")
        rows = {r["detector"].split(" (")[0]: r for r in _rows(defences, "Flipped labels")}
        (repair,) = _rows(defences, "Repairs")
        runs.append({
            "recall": rows["confident learning"]["recall"],
            "precision": rows["confident learning"]["precision"],
            "union_recall": rows["either"]["recall"],
            "accuracy_gained": repair["accuracy after"] - repair["accuracy before"],
            "flagged_by_both": _findings(assessment, "AISEC-POI-003").metric("flagged_by_both").value,
        })  # fmt: skip
    median = median_figures(runs)
    assert median["recall"] >= 0.8 and median["precision"] >= 0.8
    assert median["union_recall"] >= 0.95
    assert median["accuracy_gained"] > 0  # removing the flagged samples repairs the poisoned model
    assert median["flagged_by_both"] < 0.02  # digits' own labels are nearly all right
