"""Adversarial training (PGD-AT, TRADES, fast AT) on the digits CNN at L-inf 0.1: each method's robust
accuracy against plain training, TRADES's KL inner maximisation, the catastrophic-overfitting guard, and the
budgets and settings refused before any training."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.attacks.evasion.cascade import run_cascade
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model
from aisec.core.training import TrainingConfig, accuracy, train
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.adversarial_training import (
    GUARD_DROP,
    AdversarialTrainingConfig,
    AdversarialTrainingResult,
    Method,
    adversarial_step,
    adversarial_train,
    trades_inner,
)
from aisec.defend.robustness.budget import check_budget
from aisec.defend.robustness.perturbation import perturb
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

EPS = 0.1
EPOCHS = 5
TEST_POINTS = 100
CASCADE = ("apgd-ce", "apgd-dlr")  # the bench runs the full cascade
SPEC = InputSpec((1, 8, 8), 10)


@functools.cache
def _digits():
    return load_builtin("digits", seed=0)


@functools.cache
def _trained(method: Method | None, seed: int) -> tuple[nn.Module, AdversarialTrainingResult | None]:
    """The digits CNN from `seed`, trained EPOCHS epochs plainly (method None) or adversarially at EPS."""
    model, training = build_model(digits_cnn, seed), TrainingConfig(epochs=EPOCHS)
    generator = torch.Generator().manual_seed(seed)
    if method is None:
        return train(model, _digits().train, training, generator=generator).model, None
    result = adversarial_train(
        model, _digits().train, AdversarialTrainingConfig(method, EPS), training, generator=generator
    )
    return result.model, result


def _robust_accuracy(model: nn.Module) -> float:
    test = _digits().test
    x, y = test.x[:TEST_POINTS], test.y[:TEST_POINTS]
    cascade = run_cascade(
        TorchTarget(model, SPEC),
        x,
        y,
        [EPS],
        "linf",
        CASCADE,
        query_budget=1000,
        generator=torch.Generator().manual_seed(0),
    )
    return cascade.outcomes[0].robust_count / TEST_POINTS


def _pgd_accuracy(model: nn.Module) -> float:
    """PGD-10 accuracy at EPS on the first TEST_POINTS test digits (a quick check, not the cascade)."""
    x, y = _digits().test.x[:TEST_POINTS], _digits().test.y[:TEST_POINTS]
    x_adv = perturb(
        model,
        x,
        lambda logits: F.cross_entropy(logits, y),
        eps=EPS,
        steps=10,
        step_size=EPS / 4,
        lower=0.0,
        upper=1.0,
        random_start=True,
        generator=torch.Generator().manual_seed(0),
    )
    return accuracy(model, LabelledData(x_adv, y))


# Fine-tuning a PGD-AT model with fast AT at a learning rate far too large (SGD 0.3, momentum 0.9): training
# diverges within an epoch and PGD accuracy on the guard's batch falls to chance.
COLLAPSE = TrainingConfig(epochs=3, lr=0.3, optimizer="sgd", momentum=0.9)


@functools.cache
def _collapse(seed: int, guard: bool = True) -> AdversarialTrainingResult:
    """The seed's PGD-AT model fine-tuned with fast AT under COLLAPSE (a copy; the cached model stays)."""
    return adversarial_train(
        copy.deepcopy(_trained("pgd", seed)[0]),
        _digits().train,
        AdversarialTrainingConfig("fast", EPS, guard=guard),
        COLLAPSE,
        generator=torch.Generator().manual_seed(seed),
    )


def figures(seed: int) -> dict[str, float]:
    """Clean and robust accuracy (APGD-CE then APGD-DLR at L-inf 0.1 on 100 test digits) of the digits CNN
    trained 5 epochs plainly and with each method, and whether the guard fired; the guard on COLLAPSE."""
    out: dict[str, float] = {}
    for name, method in (("plain", None), ("pgd", "pgd"), ("trades", "trades"), ("fast", "fast")):
        model, result = _trained(method, seed)
        out[f"{name}_clean"] = accuracy(model, _digits().test)
        out[f"{name}_robust"] = _robust_accuracy(model)
        if result is not None:
            assert result.guard is not None
            out[f"{name}_guard_fired"] = float(result.guard.rolled_back_to is not None)
    report = _collapse(seed).guard
    assert report is not None
    out["collapse_rolled_back_to"] = -1.0 if report.rolled_back_to is None else float(report.rolled_back_to)
    out["collapse_best_guard_accuracy"] = max(report.pgd_accuracy)
    out["collapse_last_guard_accuracy"] = report.pgd_accuracy[-1]
    return out


def test_every_method_beats_plain_training():
    """Seed study (bench/seed_study.py test_adversarial_training --seeds 0-4 --threads 1, native AVX-512 and
    default kernels, n=10), 5 epochs, robust accuracy under APGD-CE then APGD-DLR at L-inf 0.1 on 100 test
    digits: plain training 0.44-0.65 (median 0.475), clean 0.967-0.985; PGD-AT 0.81-0.85 (0.83), clean
    0.959-0.980; TRADES 0.80-0.89 (0.845), clean 0.941-0.976; fast AT 0.72-0.85 (0.815), clean 0.959-0.972.
    Asserted on the median of three seeds."""
    median = median_figures([figures(seed) for seed in SEEDS])
    assert median["plain_robust"] <= 0.7
    for name in ("pgd", "trades", "fast"):
        assert median[f"{name}_robust"] >= max(0.75, median["plain_robust"] + 0.2), name
        assert median[f"{name}_clean"] >= median["plain_clean"] - 0.04, name
    assert median["fast_robust"] >= median["pgd_robust"] - 0.05


def test_guard_stays_quiet_at_0_1():
    """Seed study (as above, n=10): the guard fired on none of the PGD-AT, TRADES or fast AT runs at 0.1."""
    for method in ("pgd", "trades", "fast"):
        for seed in SEEDS:
            result = _trained(method, seed)[1]
            assert result is not None and result.guard is not None
            assert result.guard.rolled_back_to is None and result.epochs == EPOCHS
            assert len(result.guard.pgd_accuracy) == EPOCHS + 1  # the weights as given, then every epoch
            assert result.guard.message.startswith("No sign of catastrophic overfitting")


class _Counting(nn.Module):
    """The digits CNN, counting its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.calls = build_model(digits_cnn, 0), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    "eps, bounds, message",
    [
        (
            8.0,
            {},
            r"adversarial_training\.eps: 8 exceeds the input range \[0, 1\] \(width 1\); "
            r"budgets are in input units",
        ),
        (
            0.6,
            {"lower": -0.25, "upper": 0.25},
            r"0\.6 exceeds the input range \[-0.25, 0.25\] \(width 0\.5\)",
        ),
        (
            0.2,
            {"lower": torch.zeros(1, 8, 8), "upper": torch.full((1, 8, 8), 0.1)},
            r"0\.2 exceeds the per-feature input bounds \(smallest width 0\.1\)",
        ),
        (
            0.1,
            {"lower": 1.0, "upper": 0.0},
            r"adversarial_training\.eps: the input range \[1, 0\] .* is empty",
        ),
    ],
)
def test_budget_beyond_the_input_range_is_refused_before_training(eps, bounds, message):
    model = _Counting()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(BadInputError, match=message):
        adversarial_train(
            model,
            _digits().train,
            AdversarialTrainingConfig("pgd", eps),
            generator=torch.Generator(),
            **bounds,
        )
    assert model.calls == 0  # not one forward pass, let alone a training step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_check_budget():
    check_budget(1.0, 0.0, 1.0)  # the whole range is a (useless) budget, not a wrong scale
    check_budget(0.5, torch.zeros(3), torch.tensor([1.0, 0.5, 2.0]))
    with pytest.raises(
        BadInputError, match=r"radius: 0\.6 exceeds the per-feature input bounds \(smallest width 0\.5\)"
    ):
        check_budget(0.6, torch.zeros(3), torch.tensor([1.0, 0.5, 2.0]), field="radius")
    for bad in (0.0, -0.1, math.nan):
        with pytest.raises(
            BadInputError, match=r"eps: .* must be a positive number at most the input range \[0, 1\]"
        ):
            check_budget(bad, 0.0, 1.0)


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"method": "fgsm"}, "method"),
        ({"eps": 0.0}, "eps"),
        ({"eps": math.inf}, "eps"),
        ({"eps": True}, "eps"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"step_size": -0.01}, "step_size"),
        ({"beta": -1.0}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"guard_samples": 0}, "guard_samples"),
    ],
)
def test_bad_settings(settings, field):
    with pytest.raises(BadInputError, match=rf"adversarial_training\.{field}"):
        AdversarialTrainingConfig(**({"method": "pgd", "eps": 0.1} | settings))


def test_soft_labels_are_refused():
    train_set = _digits().train
    soft = LabelledData(train_set.x, F.one_hot(train_set.y, 10).float())
    with pytest.raises(BadInputError, match="class-index labels"):
        adversarial_train(
            build_model(digits_cnn, 0),
            soft,
            AdversarialTrainingConfig("fast", EPS),
            generator=torch.Generator(),
        )


def test_defaults_follow_the_papers():
    assert AdversarialTrainingConfig("pgd", 0.1).inner_step_size == pytest.approx(0.025)
    assert AdversarialTrainingConfig("trades", 0.1, steps=5).inner_step_size == pytest.approx(0.05)
    fast = AdversarialTrainingConfig("fast", 0.1)
    assert fast.inner_steps == 1 and fast.inner_step_size == pytest.approx(0.125)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturb_stays_in_the_ball_and_bounds_and_leaves_the_model_alone(norm):
    model = _trained(None, 0)[0]
    model.train()
    for p in model.parameters():
        p.grad = None  # left over from training's last step
    x, y = _digits().test.x[:64], _digits().test.y[:64]
    lower, upper = torch.full((1, 8, 8), 0.05), torch.full((1, 8, 8), 0.9)
    x = x.clamp(0.05, 0.9)
    eps = 0.1 if norm == "linf" else 0.8
    x_adv = perturb(
        model,
        x,
        lambda logits: F.cross_entropy(logits, y),
        eps=eps,
        steps=10,
        step_size=eps / 4,
        lower=lower,
        upper=upper,
        random_start=True,
        generator=torch.Generator().manual_seed(0),
        norm=norm,
    )
    model.eval()
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert (x_adv >= lower).all() and (x_adv <= upper).all()
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())  # input gradients only
    with torch.no_grad():
        clean, adversarial = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert adversarial > clean + 0.5


def test_perturb_restores_the_training_mode():
    model = _trained(None, 0)[0]
    model.train()
    x, y = _digits().test.x[:8], _digits().test.y[:8]
    modes = []
    hook = model.register_forward_hook(lambda module, args, out: modes.append(module.training))
    perturb(
        model,
        x,
        lambda logits: F.cross_entropy(logits, y),
        eps=0.1,
        steps=2,
        step_size=0.05,
        lower=0.0,
        upper=1.0,
        random_start=False,
        generator=torch.Generator(),
    )
    hook.remove()
    assert modes == [False, False] and model.training
    model.eval()


@pytest.mark.parametrize("method", ["pgd", "trades", "fast"])
def test_each_batch_step_crafts_in_eval_mode_and_returns_in_training_mode(method):
    model = build_model(digits_cnn, 0).train()
    x, y = _digits().train.x[:32], _digits().train.y[:32]
    loss = adversarial_step(AdversarialTrainingConfig(method, EPS), 0.0, 1.0)(model, x, y, torch.Generator())
    assert model.training and loss.dim() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _kl(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        log_p, log_q = F.log_softmax(model(x), 1), F.log_softmax(model(x_adv), 1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def test_trades_inner_maximisation_maximises_the_kl():
    model = _trained(None, 0)[0]
    x = _digits().test.x[:128]
    config = AdversarialTrainingConfig("trades", EPS)
    x_adv = trades_inner(model, x, config, 0.0, 1.0, torch.Generator().manual_seed(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    start = (x + 0.001 * noise).clamp(0, 1)  # Zhang et al.'s start, the first draw of the same generator
    at_start, after = _kl(model, x, start), _kl(model, x, x_adv)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert after.mean() > 100 * at_start.mean()
    assert (after > at_start).float().mean() >= 0.95


def test_guard_rolls_back_a_collapse_of_robustness():
    """Catastrophic overfitting proper (FGSM accuracy high, PGD accuracy collapsing) did not appear on the 8x8
    digits CNN in any setting tried (fast AT at eps 0.1-0.45, steps 1.25-2.5 eps, 15-50 epochs, Adam and SGD,
    4x wider CNNs and MLPs, binarised digits, injected non-robust class features after Ortiz-Jimenez et al.,
    TMLR 2023): its PGD accuracy kept rising or plateaued. The guard is therefore driven by the other collapse
    its rule catches, training that diverges (COLLAPSE): it must restore the PGD-AT weights it was given and
    stop. Seed study (as above, n=10): it fired after the first epoch every time, PGD-10 accuracy on its batch
    falling from 0.76-0.84 (the weights as given) to 0.08-0.18."""
    for seed in SEEDS:
        given, guarded = _trained("pgd", seed)[0].state_dict(), _collapse(seed)
        report = guarded.guard
        assert report is not None and report.rolled_back_to == 0 and guarded.epochs == 0
        assert report.pgd_accuracy[0] - report.pgd_accuracy[-1] > GUARD_DROP
        assert len(report.pgd_accuracy) == 2  # fired after the first epoch; the rest made no update
        assert report.message.startswith("Robustness collapsed")
        restored = guarded.model.state_dict()
        assert all(torch.equal(restored[name], given[name]) for name in given)
        assert _pgd_accuracy(_collapse(seed, guard=False).model) < 0.2 < _pgd_accuracy(guarded.model) - 0.3


def test_guard_changes_nothing_until_it_fires():
    small = _digits().train.subset(256, seed=0)
    models = [
        adversarial_train(
            build_model(digits_cnn, 0),
            small,
            AdversarialTrainingConfig("fast", EPS, guard=guard),
            TrainingConfig(epochs=2),
            generator=torch.Generator().manual_seed(5),
        )
        for guard in (True, False)
    ]
    assert models[0].guard is not None and models[0].guard.rolled_back_to is None and models[1].guard is None
    for a, b in zip(models[0].model.parameters(), models[1].model.parameters(), strict=True):
        assert torch.equal(a, b)
