"""APGD and FAB on a small CNN trained on scikit-learn digits: strength against PGD, budgets, bounds, queries.

Figures measured on the first 200 test digits (clean accuracy 98.5%) with generator seed 0: robust accuracy at
L-inf 0.1 is 52.5% under PGD-40, 52.0% under APGD-CE (50 steps), 46.5% under APGD-T (20 steps per target
class); FAB (20 steps, minimal norm) finds an adversarial example for every point, within 0.1 for 50.5%.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from aisec.attacks.evasion.apgd import APGDConfig, apgd, apgd_targeted, checkpoints
from aisec.attacks.evasion.fab import FABConfig, fab, fab_targeted, project_on_hyperplane
from aisec.attacks.evasion.norms import Norm
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.attacks.evasion.result import EvasionResult
from aisec.core.errors import CapabilityError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec, Target
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only

pytestmark = pytest.mark.training  # its figures depend on trained models

N = 200
EPS = {"linf": 0.1, "l2": 0.5}
ONE = 1 / N  # one sample's worth of accuracy
Digits = tuple[TorchTarget, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def digits() -> Digits:
    split = load_builtin("digits", seed=0)
    model = fit(build_model(digits_cnn, 0), split.train, seed=0)
    target = TorchTarget(model, InputSpec((1, 8, 8), 10))
    x_test, y_test = split.test.x[:N], split.test.y[:N]
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.95
    return target, x_test, y_test


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def robust_accuracy(result: EvasionResult) -> float:
    return 1.0 - result.success_rate


def predict(target: TorchTarget, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return target.module(x).argmax(1)


def check_valid(
    result: EvasionResult,
    target: TorchTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | None,
    max_queries: int,
    wanted: torch.Tensor | None = None,
) -> None:
    """Every reported success really fools the model (gives the `wanted` class when targeted) and every
    reported failure is the untouched input; the reported norms are those of x_adv - x, within eps (when set);
    x_adv within the input bounds; queries spent and within the budget."""
    answers = predict(target, result.x_adv)
    fooled = answers == wanted if wanted is not None else answers != y
    assert bool(fooled[result.success].all()), "a reported success does not fool the model"
    assert torch.equal(result.x_adv[~result.success], x[~result.success])
    delta = (result.x_adv - x).flatten(1)
    actual = delta.abs().amax(1) if result.norm_kind == "linf" else delta.norm(dim=1)
    assert torch.allclose(result.norm, actual, atol=1e-5)
    if eps is not None:
        assert float(result.norm.max()) <= eps + 1e-5
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert bool((result.queries > 0).all()) and int(result.queries.max()) <= max_queries


def test_checkpoints_follow_the_paper() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_ce_at_least_as_strong_as_pgd(digits: Digits, norm: Norm) -> None:
    target, x, y = digits
    eps = EPS[norm]
    base = pgd(target, x, y, PGDConfig(eps=eps, steps=40, norm=norm), generator=seed())
    config = APGDConfig(eps=eps, norm=norm, steps=50, restarts=0)
    result = apgd(target, x, y, config, generator=seed())
    assert result.attack == "apgd-ce" and not result.targeted
    assert robust_accuracy(result) <= robust_accuracy(base) + ONE
    assert 0.3 < robust_accuracy(result) < 0.7  # the budget is one where the comparison means something
    check_valid(result, target, x, y, eps, 1 + config.steps + 1)


def test_apgd_restarts_and_dlr_stay_within_budget(digits: Digits) -> None:
    target, x, y = digits
    config = APGDConfig(eps=0.5, norm="l2", steps=10, restarts=2, loss="dlr")
    result = apgd(target, x, y, config, generator=seed())
    assert result.attack == "apgd-dlr"
    check_valid(result, target, x, y, 0.5, 1 + (config.restarts + 1) * (config.steps + 1))
    again = apgd(target, x, y, config, generator=seed())
    assert torch.equal(again.x_adv, result.x_adv)  # the generator drives all the randomness


def test_apgd_t_at_least_as_strong_as_apgd_ce(digits: Digits) -> None:
    target, x, y = digits
    ce = apgd(target, x, y, APGDConfig(eps=0.1, steps=50, restarts=0), generator=seed())
    config = APGDConfig(eps=0.1, steps=20, restarts=0)
    t = apgd_targeted(target, x, y, config, n_target_classes=9, generator=seed())
    assert t.attack == "apgd-t" and not t.targeted
    union = ce.success | t.success
    assert robust_accuracy(t) <= robust_accuracy(ce)
    assert 1.0 - float(union.float().mean()) <= robust_accuracy(ce)
    assert int((ce.success & ~t.success).sum()) <= 2  # APGD-T finds (almost) every point APGD-CE finds
    check_valid(t, target, x, y, 0.1, 1 + 9 * (config.steps + 1))


def test_apgd_targeted_reaches_the_target_class(digits: Digits) -> None:
    target, x, y = digits
    wanted = (y + 1) % 10
    result = apgd(
        target, x, y, APGDConfig(eps=0.3, steps=20, restarts=0), target_labels=wanted, generator=seed()
    )
    assert result.attack == "apgd-t" and result.targeted
    assert result.success_rate >= 0.9
    check_valid(result, target, x, y, 0.3, 1 + 21, wanted)


def test_n_target_classes_is_capped(digits: Digits) -> None:
    target, x, y = digits
    config = APGDConfig(eps=0.02, steps=2, restarts=0)
    result = apgd_targeted(target, x[:20], y[:20], config, n_target_classes=50, generator=seed())
    check_valid(result, target, x[:20], y[:20], 0.02, 1 + 9 * (config.steps + 1))
    assert int(result.queries.max()) == 1 + 9 * (config.steps + 1)  # a robust point tried all 9 other classes


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_minimal_norm_beats_pgd_budget(digits: Digits, norm: Norm) -> None:
    target, x, y = digits
    eps = EPS[norm]
    config = FABConfig(norm=norm, steps=20)
    result = fab(target, x, y, config, generator=seed())
    assert result.attack == "fab" and result.eps is None
    assert result.success_rate >= 0.95
    base = pgd(target, x, y, PGDConfig(eps=eps, steps=40, norm=norm), generator=seed())
    within = float((result.success & (result.norm <= eps)).float().mean())
    assert within >= base.success_rate - 0.05
    check_valid(result, target, x, y, None, 2 * config.steps + 5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_with_eps_agrees_with_minimal_norm(digits: Digits, norm: Norm) -> None:
    target, x, y = digits
    eps = EPS[norm]
    minimal = fab(target, x, y, FABConfig(norm=norm, steps=20), generator=seed())
    config = FABConfig(eps=eps, norm=norm, steps=20, restarts=1)
    bounded = fab(target, x, y, config, generator=seed())
    within = float((minimal.success & (minimal.norm <= eps)).float().mean())
    assert bounded.success_rate >= within - 2 * ONE
    check_valid(bounded, target, x, y, eps, 2 * (2 * config.steps + 5))
    assert float(bounded.queries[bounded.success].float().mean()) < config.steps  # successes stop early


def test_fab_restarts_refine_minimal_norm(digits: Digits) -> None:
    target, x, y = digits
    once = fab(target, x, y, FABConfig(norm="l2", steps=10), generator=seed())
    twice = fab(target, x, y, FABConfig(norm="l2", steps=10, restarts=1), generator=seed())
    assert bool(twice.success[once.success].all())
    assert bool((twice.norm[once.success] <= once.norm[once.success] + 1e-6).all())  # restarts only refine
    assert float(twice.norm.mean()) < float(once.norm.mean())
    check_valid(twice, target, x, y, None, 2 * (2 * 10 + 5))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_targeted_over_top_classes(digits: Digits, norm: Norm) -> None:
    target, x, y = digits
    eps = EPS[norm]
    plain = fab(target, x, y, FABConfig(eps=eps, norm=norm, steps=20), generator=seed())
    config = FABConfig(eps=eps, norm=norm, steps=20)
    result = fab_targeted(target, x, y, config, n_target_classes=9, generator=seed())
    assert result.attack == "fab-t" and not result.targeted
    assert robust_accuracy(result) <= robust_accuracy(plain) + ONE
    check_valid(result, target, x, y, eps, 1 + 9 * (2 * config.steps + 5))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_reaches_a_given_target(digits: Digits, norm: Norm) -> None:
    target, x, y = digits
    wanted = (y + 1) % 10
    result = fab(target, x, y, FABConfig(norm=norm, steps=20), target_labels=wanted, generator=seed())
    assert result.attack == "fab-t" and result.targeted
    assert result.success_rate >= 0.9
    check_valid(result, target, x, y, None, 2 * 20 + 5, wanted)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_box_constrained_projection_is_optimal(norm: Norm) -> None:
    """Against a generic solver: L-inf as a linear program, L2 as a quadratic one (SLSQP)."""
    rng = np.random.default_rng(0)
    d = 6
    for _ in range(20):
        p, g = rng.uniform(0, 1, d), rng.normal(size=d)
        r = rng.normal() * 0.5
        delta = project_on_hyperplane(
            torch.tensor(p)[None],
            torch.tensor(g)[None],
            torch.tensor([r]),
            torch.tensor(0.0),
            torch.tensor(1.0),
            norm,
        )[0].numpy()
        assert np.all(p + delta >= -1e-9) and np.all(p + delta <= 1 + 1e-9)
        reachable = np.sum(np.abs(g) * np.where(g * np.sign(r) > 0, 1 - p, p))
        if reachable < abs(r):  # no point of the box reaches the hyperplane: go as far as the box allows
            assert np.isclose(g @ delta, np.sign(r) * reachable)
            continue
        assert np.isclose(g @ delta, r, atol=1e-9)
        size = np.abs(delta).max() if norm == "linf" else np.linalg.norm(delta)
        assert size <= _reference_size(p, g, r, norm) + 1e-6


def _reference_size(p: np.ndarray, g: np.ndarray, r: float, norm: Norm) -> float:
    d = len(p)
    if norm == "linf":  # variables (delta, s): minimise s with -s <= delta_i <= s
        eye = np.eye(d)
        solved = linprog(
            np.r_[np.zeros(d), 1.0],
            A_ub=np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]]),
            b_ub=np.zeros(2 * d),
            A_eq=np.r_[g, 0.0][None],
            b_eq=[r],
            bounds=[(-pi, 1 - pi) for pi in p] + [(0, None)],
        )
        return float(solved.fun)
    solved = minimize(
        lambda v: v @ v,
        np.zeros(d),
        jac=lambda v: 2 * v,
        bounds=[(-pi, 1 - pi) for pi in p],
        constraints=[{"type": "eq", "fun": lambda v: g @ v - r, "jac": lambda v: g}],
        method="SLSQP",
        options={"ftol": 1e-12},
    )
    return float(np.linalg.norm(solved.x))


@pytest.mark.parametrize(
    "config",
    [
        APGDConfig(eps=0.0),
        APGDConfig(eps=-0.1),
        APGDConfig(eps=0.1, steps=0),
        APGDConfig(eps=0.1, restarts=-1),
        APGDConfig(eps=0.1, rho=1.5),
        FABConfig(eps=0.0),
        FABConfig(steps=0),
        FABConfig(beta=1.0),
    ],
)
def test_bad_config_is_refused(digits: Digits, config: APGDConfig | FABConfig) -> None:
    target, x, y = digits
    attack = apgd if isinstance(config, APGDConfig) else fab
    with pytest.raises(DataError):
        attack(target, x[:4], y[:4], config)


@pytest.mark.parametrize(
    "run",
    [
        lambda t, x, y: apgd(t, x, y, APGDConfig(eps=0.1)),
        lambda t, x, y: apgd_targeted(t, x, y, APGDConfig(eps=0.1)),
        lambda t, x, y: fab(t, x, y, FABConfig()),
        lambda t, x, y: fab_targeted(t, x, y, FABConfig()),
    ],
)
def test_label_only_target_is_refused(
    digits: Digits, run: Callable[[Target, torch.Tensor, torch.Tensor], EvasionResult]
) -> None:
    target, x, y = digits
    with pytest.raises(CapabilityError):
        run(label_only(target), x[:4], y[:4])
