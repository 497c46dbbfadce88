"""The cascade: never above its strongest member, monotone in the budget, every success verified."""

import pytest
import torch

from aisec.attacks.evasion.cascade import CLEAN_WRONG, run_cascade
from aisec.attacks.evasion.norms import batch_norm
from aisec.attacks.evasion.registry import ATTACKS

pytestmark = pytest.mark.training  # its figures depend on trained models


def test_cascade_is_the_per_sample_worst_case(digits, digits_target):
    x, y = digits.test.x[:200], digits.test.y[:200]
    budgets = (0.05, 0.1)
    attacks = ("pgd", "apgd-ce", "square")
    cascade = run_cascade(
        digits_target,
        x,
        y,
        budgets,
        "linf",
        attacks,
        query_budget=500,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        clean = digits_target.module(x).argmax(1) == y
    assert (cascade.clean_correct == clean).all()
    previous = None
    for outcome in cascade.outcomes:
        # every member alone, on all clean-correct points, leaves at least as many robust
        for name in attacks:
            alone = ATTACKS[name].run(
                digits_target, x, y, outcome.eps, "linf", 500, torch.Generator().manual_seed(1)
            )
            assert outcome.robust_count <= int((clean & ~alone.success).sum())
        fooled = ~outcome.robust & clean
        with torch.no_grad():
            assert (digits_target.module(outcome.x_adv[fooled]).argmax(1) != y[fooled]).all()
        assert (batch_norm(outcome.x_adv - x, "linf") <= outcome.eps + 1e-6).all()
        assert ((outcome.broken_by == CLEAN_WRONG) == ~clean).all()
        if previous is not None:
            assert not (outcome.robust & ~previous.robust).any(), (
                "robust at a larger budget but not a smaller one"
            )
        previous = outcome
    assert cascade.outcomes[0].robust_count > cascade.outcomes[1].robust_count


def test_minimal_perturbation_never_loses_the_cascades_evidence(digits, digits_target):
    from aisec.assessment.probes.evasion import _minimal

    x, y = digits.test.x[:150], digits.test.y[:150]
    gen = torch.Generator().manual_seed(0)
    cascade = run_cascade(
        digits_target, x, y, (0.05, 0.1, 0.2), "linf", ("apgd-ce", "apgd-t"), query_budget=100, generator=gen
    )
    minimal = _minimal(digits_target, x, y, cascade, 100, gen)
    for outcome in cascade.outcomes:
        fooled = ~outcome.robust
        assert (minimal.norm[fooled] <= outcome.eps + 1e-6).all(), outcome.eps
    with torch.no_grad():
        wrong = digits_target.module(minimal.x_adv).argmax(1) != y
    assert wrong[torch.isfinite(minimal.norm)].all()
