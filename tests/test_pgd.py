"""FGSM and PGD: budgets and bounds kept, early stopping changes nothing but cost, strength as expected."""

import pytest
import torch

from aisec.attacks.evasion.fgsm import FGSMConfig, fgsm
from aisec.attacks.evasion.norms import batch_norm
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.core.errors import CapabilityError, DataError
from aisec.targets.views import scores_only

pytestmark = pytest.mark.training  # its figures depend on trained models


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_keeps_budget_and_bounds(digits, digits_target, norm, eps):
    x, y = digits.test.x[:300], digits.test.y[:300]
    r = pgd(digits_target, x, y, PGDConfig(eps=eps, norm=norm), generator=torch.Generator().manual_seed(0))
    assert (batch_norm(r.x_adv - x, norm) <= eps * (1 + 1e-5)).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    with torch.no_grad():
        pred = digits_target.module(r.x_adv).argmax(1)
    assert ((pred != y) == r.success).all(), "success must be what the model says on x_adv"
    assert 0.2 < r.success_rate < 1.0
    assert ((r.queries >= 1) & (r.queries <= 2 * 41)).all()


def test_pgd_is_stronger_than_fgsm(digits, digits_target):
    x, y = digits.test.x[:300], digits.test.y[:300]
    for eps in (0.05, 0.1, 0.15):
        p = pgd(digits_target, x, y, PGDConfig(eps=eps), generator=torch.Generator().manual_seed(0))
        f = fgsm(digits_target, x, y, FGSMConfig(eps=eps))
        assert p.success_rate >= f.success_rate
    assert p.success_rate > 0.7


def test_early_stop_only_saves_work(digits, digits_target):
    x, y = digits.test.x[:300], digits.test.y[:300]
    runs = {}
    for early in (True, False):
        digits_target.queries.reset()
        r = pgd(
            digits_target,
            x,
            y,
            PGDConfig(eps=0.1, early_stop=early),
            generator=torch.Generator().manual_seed(1),
        )
        runs[early] = (r, digits_target.queries.total)
    agree = (runs[True][0].success == runs[False][0].success).float().mean()
    assert agree >= 0.99
    assert runs[True][1] < 0.8 * runs[False][1], "early stopping should spend clearly fewer model evaluations"


def test_targeted_pgd_reaches_target(digits, digits_target):
    x, y = digits.test.x[:200], digits.test.y[:200]
    t = (y + 1) % 10
    r = pgd(
        digits_target,
        x,
        y,
        PGDConfig(eps=0.3, steps=60),
        target_labels=t,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        pred = digits_target.module(r.x_adv[r.success]).argmax(1)
    assert (pred == t[r.success]).all()
    assert r.success_rate > 0.9


def test_bad_input_is_refused_before_work(digits, digits_target):
    x, y = digits.test.x[:10], digits.test.y[:10]
    with pytest.raises(DataError, match="eps must be positive"):
        pgd(digits_target, x, y, PGDConfig(eps=0))
    with pytest.raises(DataError, match="shape"):
        pgd(digits_target, x.reshape(10, 64), y, PGDConfig(eps=0.1))
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        pgd(digits_target, bad, y, PGDConfig(eps=0.1))
    with pytest.raises(CapabilityError):
        pgd(scores_only(digits_target), x, y, PGDConfig(eps=0.1))
    assert digits_target.queries.total == 0


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_minimal_perturbation_is_consistent_with_fixed_budget_pgd(digits, digits_target, norm, eps):
    from aisec.attacks.evasion.minimal import minimal_perturbation

    x, y = digits.test.x[:100], digits.test.y[:100]
    m = minimal_perturbation(digits_target, x, y, norm, generator=torch.Generator().manual_seed(0))
    sizes = batch_norm(m.x_adv - x, norm)
    finite = torch.isfinite(m.norm)
    assert finite.float().mean() > 0.95
    assert (sizes[finite] <= m.norm[finite] * (1 + 1e-4) + 1e-6).all(), (
        "reported size must bound the real one"
    )
    with torch.no_grad():
        assert (digits_target.module(m.x_adv[finite]).argmax(1) != y[finite]).all()
    fixed = pgd(
        digits_target,
        x,
        y,
        PGDConfig(eps=eps, norm=norm, restarts=1),
        generator=torch.Generator().manual_seed(0),
    )
    within = (m.norm <= eps).float().mean()
    assert abs(float(within) - fixed.success_rate) < 0.08, (float(within), fixed.success_rate)
