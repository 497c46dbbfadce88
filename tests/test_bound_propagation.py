"""Certification by bound propagation (IBP, Gowal et al. 2018; CROWN, Zhang et al., NeurIPS 2018) and IBP
training: the bounds hold on every sampled point of the box, CROWN is never looser than IBP, no certified point
is broken by our attacks (exactly zero), IBP training certifies where plain training does not, and the bad input
is refused by name.

Seed study (`bench/seed_study.py test_bound_propagation --seeds 0-4 --threads 1 --capabilities native,default`,
on a busy 2-core machine; 540 test digits), min / median / max over 5 seeds x 2 kernel sets:
    ibp_clean                0.954 / 0.957 / 0.963   (MLP trained with IBP at eps 0.1, 20 epochs)
    ibp_certified@0.1        0.674 / 0.685 / 0.715   (its certified accuracy by IBP)
    crown_certified@0.1      0.706 / 0.719 / 0.744   (by CROWN; about 0.03 above IBP on each run)
    plain_certified@0.1      0.007 / 0.017 / 0.026   (the plainly trained MLP, CROWN)
    plain_ibp@0.01           0.806 / 0.841 / 0.857
    plain_crown@0.01         0.965 / 0.967 / 0.972   (0.11-0.16 above IBP)
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.attacks.evasion.cascade import run_cascade
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import TrainingConfig, accuracy, fit
from aisec.data.builtin import load_builtin
from aisec.defend.robustness.certification.bounds import certify, check_supported, ibp_step, train_ibp
from aisec.defend.robustness.certification.layers import backward, interval, sequential_layers, unit_backward
from aisec.defend.robustness.certification.propagation import input_box, margin_spec, spec_lower_bound
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

METHODS = ("ibp", "crown")
IBP_RECIPE = TrainingConfig(epochs=20, lr=0.003)


def digits_mlp() -> nn.Module:
    """A small MLP for 8x8 digits, the model IBP training is measured on."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


# Random networks covering every supported layer and setting: (factory, sample shape).
NETWORKS = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 15), nn.ReLU(), nn.Linear(15, 4)),
        (6,),
    ),
    "cnn-avgpool-maxpool": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 5, 3, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=1, padding=1),  # overlapping windows, padded
            nn.Flatten(),
            nn.Linear(5 * 5 * 5, 10),
            nn.ReLU(),
            nn.Linear(10, 3),
        ),
        (2, 8, 8),
    ),
    "nested-ceil-mode": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),  # a maximum right after an affine layer
            nn.ReLU(),
            nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Identity(), nn.Linear(7, 5)),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(5, 3),
        ),
        (1, 7, 7),
    ),
    "strided-dilated": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, dilation=2, padding=2, stride=2, bias=False),
            nn.MaxPool2d(2, dilation=2, padding=1),
            nn.Flatten(),
            nn.ReLU(),
            nn.Linear(27, 4),
            nn.ReLU(),  # bounds on outputs after a ReLU
        ),
        (1, 9, 9),
    ),
}


def _bounds(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, method: str):
    layers = sequential_layers(model)
    with torch.no_grad():
        return spec_lower_bound(layers, lo, hi, spec, method), -spec_lower_bound(
            layers, lo, hi, -spec, method
        )


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_bounds_hold_on_every_sampled_point(name: str, eps: float):
    factory, shape = NETWORKS[name]
    model = build_model(factory, 7).eval()
    gen = torch.Generator().manual_seed(0)
    n = 6
    # per-feature input bounds, so that the box is cut by them on some features
    lower = 0.3 * torch.rand(shape, generator=gen)
    upper = 1 - 0.3 * torch.rand(shape, generator=gen)
    x = lower + (upper - lower) * torch.rand(n, *shape, generator=gen)
    classes = model(x).shape[1]
    y = torch.randint(classes, (n,), generator=gen)
    spec = torch.cat([margin_spec(y, classes), torch.randn(n, 5, classes, generator=gen)], 1)
    lo, hi = input_box(x, eps, lower, upper)
    draws = torch.rand(4000, n, *shape, generator=gen)
    draws[:2000] = (draws[:2000] > 0.5).float()  # vertices of the box, where the extremes of ReLU nets lie
    points = lo + draws * (hi - lo)
    assert ((points >= lower) & (points <= upper)).all()
    with torch.no_grad():
        values = torch.einsum("mbk,brk->mbr", model(points.flatten(0, 1)).reshape(4000, n, classes), spec)
    for method in METHODS:
        low, high = _bounds(model, lo, hi, spec, method)
        assert (low <= values.amin(0) + 1e-5).all(), method
        assert (high >= values.amax(0) - 1e-5).all(), method
        result = certify(model, x, y, eps, method, lower=lower, upper=upper)
        margins = values[:, :, :classes].clone()
        margins[:, torch.arange(n), y] = torch.inf
        assert (result.margin_lower <= margins.amin((0, 2)) + 1e-5).all(), method


@pytest.mark.parametrize(
    "layer",
    [
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.MaxPool2d(2, stride=1, dilation=2),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1),
        nn.Conv2d(3, 6, 2, padding=1, dilation=2, groups=3),
        nn.Conv2d(3, 32, 2, stride=2, padding=1),  # few input channels: the adjoint as a product and a fold
        nn.Flatten(),
    ],
    ids=repr,
)
def test_each_layer_relaxation_holds_on_its_box(layer: nn.Module):
    """One layer alone, where no other layer's slack hides an error: on every sampled input of a random box the
    layer's output lies in its interval, and every substituted linear lower bound (both ReLU lower lines) stays
    below the bound it replaces. The boxes overlap within each pooling window, so max pooling's cases (a
    provable maximum or not) both occur."""
    gen = torch.Generator().manual_seed(0)
    n, rows = 4, 6
    centre = torch.randn(n, 3, 7, 7, generator=gen)
    width = 0.8 * torch.rand(n, 3, 7, 7, generator=gen)
    lo, hi = centre - width, centre + width
    draws = torch.rand(3000, n, 3, 7, 7, generator=gen)
    draws[:1500] = (draws[:1500] > 0.5).float()
    points = (lo + draws * (hi - lo)).flatten(0, 1)
    with torch.no_grad():
        out = layer(points).reshape(3000, n, -1)
        out_lo, out_hi = (t.flatten(1) for t in interval(layer, lo, hi))
        assert (out >= out_lo - 1e-5).all() and (out <= out_hi + 1e-5).all()
        coeffs = torch.randn(n, rows, *layer(lo).shape[1:], generator=gen)
        bias = torch.randn(n, rows, generator=gen)
        exact = torch.einsum("mbk,brk->mbr", out, coeffs.flatten(2)) + bias
        for slope in ("adaptive", "parallel"):
            new_coeffs, new_bias = backward(layer, coeffs, bias, lo, hi, slope)
            linear = (
                torch.einsum("mbk,brk->mbr", points.reshape(3000, n, -1), new_coeffs.flatten(2)) + new_bias
            )
            assert (linear <= exact + 1e-4).all(), slope


@pytest.mark.parametrize("name", NETWORKS)
def test_crown_is_never_looser_than_ibp(name: str):
    factory, shape = NETWORKS[name]
    model = build_model(factory, 3).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, *shape, generator=gen)
    classes = model(x).shape[1]
    spec = torch.randn(8, 6, classes, generator=gen)
    for eps in (0.01, 0.1, 0.5):
        lo, hi = input_box(x, eps, 0.0, 1.0)
        ibp_low, ibp_high = _bounds(model, lo, hi, spec, "ibp")
        crown_low, crown_high = _bounds(model, lo, hi, spec, "crown")
        assert (crown_low >= ibp_low - 1e-6).all() and (crown_high <= ibp_high + 1e-6).all()
        assert (crown_high - crown_low).sum() < (ibp_high - ibp_low).sum()


def test_crown_is_exact_on_a_linear_block():
    """Before the first nonlinear layer CROWN's back-substitution bounds the composite linear map exactly (the
    extremes over a box of a linear function), where IBP's box per layer is looser; ReLU is monotone, so the
    upper bounds of the outputs are relu of the exact maxima."""
    factory = lambda: nn.Sequential(nn.Linear(5, 8), nn.Flatten(), nn.Linear(8, 3), nn.ReLU())  # noqa: E731
    model = build_model(factory, 0).eval()
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    lo, hi = x - 0.2, x + 0.2
    spec = torch.eye(3).expand(4, 3, 3)
    with torch.no_grad():
        weight = model[2].weight @ model[0].weight
        exact = model[2](model[0](x)) + 0.2 * weight.abs().sum(1)
    _, crown_high = _bounds(model, lo, hi, spec, "crown")
    _, ibp_high = _bounds(model, lo, hi, spec, "ibp")
    assert torch.allclose(crown_high, exact.clamp(min=0), atol=1e-5)
    assert (ibp_high > exact.clamp(min=0) + 1e-3).any()


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2),
        nn.Conv2d(4, 3, (3, 2), stride=(1, 2), padding=(2, 0), dilation=2, bias=False),
        nn.Conv2d(4, 4, 3, padding="same"),
        nn.Linear(4 * 7 * 7, 5),
    ],
    ids=repr,
)
def test_unit_rows_equal_the_one_hot_substitution(layer: nn.Module):
    """CROWN starts an intermediate bound from a neuron's own weights; they equal the general substitution of
    its one-hot row (the transposed convolution), whatever the stride, padding, dilation and groups."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 7, 7, generator=gen)
    if isinstance(layer, nn.Linear):
        x = x.flatten(1)
    out = layer(x)
    idx = torch.randint(out[0].numel(), (3, 9), generator=gen)
    one_hot = F.one_hot(idx, out[0].numel()).float().reshape(3, 9, *out.shape[1:])
    with torch.no_grad():
        coeffs, bias = backward(layer, one_hot, torch.zeros(3, 9), x, x)
        unit_coeffs, unit_bias = unit_backward(layer, idx, tuple(x.shape[1:]), tuple(out.shape[1:]))
    assert torch.allclose(coeffs, unit_coeffs, atol=1e-6) and torch.allclose(bias, unit_bias, atol=1e-6)


@functools.cache
def _digits():
    return load_builtin("digits", seed=0)


@functools.cache
def _ibp_mlp(seed: int) -> nn.Module:
    """The MLP trained with IBP at eps 0.1 (Gowal et al.'s schedule over 20 epochs)."""
    gen = torch.Generator().manual_seed(seed)
    return train_ibp(build_model(digits_mlp, seed), _digits().train, 0.1, IBP_RECIPE, generator=gen).model


@functools.cache
def _plain_mlp(seed: int) -> nn.Module:
    return fit(build_model(digits_mlp, seed), _digits().train, seed=seed)


def figures(seed: int) -> dict[str, float]:
    """Certified accuracy on the 540 test digits of the IBP-trained and the plainly trained MLP."""
    test = _digits().test
    trained, plain = _ibp_mlp(seed), _plain_mlp(seed)
    return {
        "ibp_clean": accuracy(trained, test),
        "ibp_certified@0.1": certify(trained, test.x, test.y, 0.1, "ibp").certified_accuracy,
        "crown_certified@0.1": certify(trained, test.x, test.y, 0.1, "crown").certified_accuracy,
        "plain_certified@0.1": certify(plain, test.x, test.y, 0.1, "crown").certified_accuracy,
        "plain_ibp@0.01": certify(plain, test.x, test.y, 0.01, "ibp").certified_accuracy,
        "plain_crown@0.01": certify(plain, test.x, test.y, 0.01, "crown").certified_accuracy,
    }


def test_ibp_training_certifies_where_plain_training_does_not():
    median = median_figures([figures(seed) for seed in SEEDS])
    assert median["ibp_clean"] >= 0.93
    assert median["ibp_certified@0.1"] >= 0.6
    assert median["crown_certified@0.1"] >= median["ibp_certified@0.1"] + 0.01
    assert median["plain_certified@0.1"] <= 0.05
    assert median["plain_crown@0.01"] >= median["plain_ibp@0.01"] + 0.07


def _broken(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Points our attacks fool within eps: AutoAttack's APGD-CE then APGD-T cascade, and PGD with restarts."""
    target = TorchTarget(model, InputSpec(tuple(x.shape[1:]), 10))
    gen = torch.Generator().manual_seed(0)
    cascade = run_cascade(target, x, y, [eps], "linf", ("apgd-ce", "apgd-t"), query_budget=100, generator=gen)
    pgd_result = pgd(target, x, y, PGDConfig(eps=eps, steps=50, restarts=3), generator=gen)
    return (~cascade.outcomes[0].robust & cascade.clean_correct) | pgd_result.success


@pytest.mark.parametrize("which", ["ibp-trained mlp @ 0.1", "plain demo cnn @ 0.01"])
def test_no_certified_point_is_broken(which: str, digits, digits_model):
    if which.startswith("ibp"):
        model, eps, x, y = _ibp_mlp(0), 0.1, digits.test.x[:300], digits.test.y[:300]
    else:
        model, eps, x, y = digits_model, 0.01, digits.test.x[:100], digits.test.y[:100]
    ibp, crown = certify(model, x, y, eps, "ibp"), certify(model, x, y, eps, "crown")
    assert not (ibp.certified & ~crown.certified).any()
    assert (crown.margin_lower >= ibp.margin_lower).all()
    broken = _broken(model, x, y, eps)
    assert int(crown.certified.sum()) >= 0.3 * len(x)  # the check below has points to check
    assert int((crown.certified & broken).sum()) == 0
    assert int((ibp.certified & broken).sum()) == 0


def test_ibp_loss_bounds_the_clean_loss_and_follows_the_schedule():
    model = build_model(digits_mlp, 0)
    x, y = _digits().train.x[:64], _digits().train.y[:64]
    gen = torch.Generator().manual_seed(0)
    clean = F.cross_entropy(model(x), y).detach()
    worst = ibp_step(0.1, 0.0, 1.0, total_steps=10, warmup_fraction=0.0, final_kappa=0.0)(model, x, y, gen)
    assert worst > clean + 0.1  # the worst-case logits over the box are worse than the clean ones
    worst.backward()
    assert all(p.grad is not None for p in model.parameters())
    worst_value = float(worst.detach())
    ramped = ibp_step(0.1, 0.0, 1.0, total_steps=10, warmup_fraction=0.5, final_kappa=0.5)
    losses = [float(ramped(model, x, y, gen).detach()) for _ in range(7)]
    assert losses[0] == pytest.approx(float(clean), rel=1e-5)  # kappa 1, eps 0 at the first step
    assert losses[0] < losses[2] < losses[5]
    assert losses[5] == pytest.approx(losses[6], rel=1e-6)  # the schedule holds after the warm-up
    assert losses[5] == pytest.approx(0.5 * float(clean) + 0.5 * worst_value, rel=1e-5)


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 10)),
            "layer 2 (BatchNorm2d)",
        ),
        (nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), Doubler()), "layer 2 (Doubler)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh()), "layer 2 (Tanh)"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect", padding=1)), "padding_mode='reflect'"),
        (Doubler(), "nn.Sequential of supported layers, got Doubler"),
    ],
)
def test_unsupported_layers_are_refused_by_name(model: nn.Module, message: str):
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    for call in (
        lambda: check_supported(model),
        lambda: certify(model, x, y, 0.1),
        lambda: train_ibp(model, _digits().train, 0.1, generator=torch.Generator()),
    ):
        with pytest.raises(BadInputError, match="bound propagation") as raised:
            call()
        assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bad_budgets_and_data_are_refused_before_any_work():
    model = build_model(digits_mlp, 0).eval()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _digits().test.x[:8], _digits().test.y[:8]
    for eps, match in ((0.0, "certification.eps: 0.0 must be a positive"), (-0.1, "positive"),
                       (8, "8 exceeds the input range \\[0, 1\\] \\(width 1\\)"), (float("nan"), "positive")):  # fmt: skip
        with pytest.raises(BadInputError, match=match):
            certify(model, x, y, eps)
    with pytest.raises(BadInputError, match="ibp_training.eps: 8 exceeds"):
        train_ibp(model, _digits().train, 8, generator=torch.Generator())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(BadInputError, match="certification.method: 'deepz'"):
        certify(model, x, y, 0.1, "deepz")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="per-feature input bounds \\(smallest width 0.2\\)"):
        certify(
            model,
            x,
            y,
            0.3,
            lower=torch.zeros(64),
            upper=torch.full((64,), 0.2).index_fill(0, torch.tensor([0]), 1),
        )
    with pytest.raises(DataError, match="labels must lie in \\[0, 9\\]"):
        certify(model, x, y + 10, 0.1)
    with pytest.raises(DataError, match="outside the input range"):
        certify(model, x + 2, y, 0.1)
    with pytest.raises(BadInputError, match="ibp_training.final_kappa"):
        ibp_step(0.1, 0.0, 1.0, total_steps=10, final_kappa=1.5)
