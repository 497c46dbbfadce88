"""Gradient masking: a model whose first layer kills the gradient is caught, not reported robust."""

import pytest
import torch

from aisec.assessment.plan import EvasionProbeSection, PolicySection, ProbesSection
from aisec.assessment.runner import run_assessment
from aisec.assessment.threat_model import ThreatModel
from aisec.data.dataset import LabelledData

pytestmark = pytest.mark.training  # its figures depend on trained models


def assess(target, digits, n=200):
    data = LabelledData(digits.test.x[:n], digits.test.y[:n], "digits/test")
    return run_assessment(
        target,
        data,
        ProbesSection(evasion=EvasionProbeSection(attacks=("apgd-ce", "square"), minimal_perturbation=False)),
        threat_model=ThreatModel(budgets=(0.1, 0.3), query_budget=1000),
        policy=PolicySection(),
        seed=0,
    )


def test_masked_model_is_flagged_not_reported_robust(digits, masked_target):
    a = assess(masked_target, digits)
    by_rule = {f.rule_id: f for f in a.findings}
    masking = by_rule["AISEC-EVA-002"]
    assert not masking.reliable and masking.breaks_policy
    fired = {row["check"] for row in masking.tables[0].records() if row["fired"] == "yes"}
    assert "zero or non-finite input gradients" in fired
    assert "success does not reach 100 % with an unbounded budget" in fired
    assert "black-box attack beats white-box attacks" in fired
    robust = by_rule["AISEC-EVA-001"]
    assert not robust.reliable and "UNRELIABLE" in robust.message
    assert not a.passed


def test_honest_model_passes_the_checks(digits, digits_target):
    a = assess(digits_target, digits)
    rules = [f.rule_id for f in a.findings]
    assert "AISEC-EVA-002" not in rules and "AISEC-EVA-003" in rules
    assert all(f.reliable for f in a.findings)


def test_randomised_model_is_flagged(digits, digits_model):
    from aisec.assessment.masking import randomised_forward
    from aisec.targets.base import InputSpec
    from aisec.targets.torch_target import TorchTarget

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return digits_model(x + 0.05 * torch.randn_like(x))

    check = randomised_forward(TorchTarget(Noisy(), InputSpec((1, 8, 8), 10)), digits.test.x[:50])
    assert check.fired


def _outcome(eps, robust_left, fooled_by_square, n):
    from aisec.attacks.evasion.cascade import BudgetOutcome

    robust = torch.zeros(n, dtype=torch.bool)
    robust[:robust_left] = True
    return BudgetOutcome(
        eps,
        robust,
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, 1),
        torch.zeros(n),
        {"apgd-ce": 0, "square": fooled_by_square},
    )


def test_black_box_check_needs_evidence_not_a_share_of_two():
    from aisec.assessment.masking import black_box_beats_white_box
    from aisec.attacks.evasion.cascade import CascadeResult

    def cascade(left, fooled, n=200):
        return CascadeResult(
            ("apgd-ce", "square"), "linf", torch.ones(n, dtype=torch.bool), (_outcome(0.1, left, fooled, n),)
        )

    assert not black_box_beats_white_box(cascade(0, 2)).fired  # 2 of 2: too few to mean anything
    assert not black_box_beats_white_box(cascade(105, 5)).fired  # 5 of 110: a weak white-box set
    assert black_box_beats_white_box(cascade(27, 129)).fired  # 129 of 156: the masked model's figure
