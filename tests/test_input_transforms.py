"""Input transformations as a defence (bit-depth reduction, median smoothing) and their adaptive evaluation:
the transforms compute what they claim, plain gradients overstate the bit-depth defence's robustness while
BPDA (Athalye, Carlini & Wagner, ICML 2018) does not, and the gradient-masking checks fire on the plain
evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.assessment.masking import run_checks
from aisec.attacks.evasion.cascade import CascadeResult, run_cascade
from aisec.attacks.evasion.norms import batch_norm
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.defend.robustness.input_transforms import (
    BitDepth,
    MedianFilter,
    TransformedModel,
    transform_from_spec,
    transform_name,
)
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

SPEC = InputSpec((1, 8, 8), 10)
BUDGETS = (0.05, 0.1, 0.2)
ZERO_GRADIENTS = "zero or non-finite input gradients"
UNBOUNDED = "success does not reach 100 % with an unbounded budget"


# --- the transforms ---------------------------------------------------------------------------------------


def test_bit_depth_rounds_to_the_nearest_level_inside_the_bounds():
    x = torch.tensor([0.0, 0.2, 0.26, 0.5, 0.74, 0.9, 1.0])
    assert torch.equal(
        BitDepth(1)(x), torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    )  # 0.5 rounds to even
    levels = BitDepth(2)(x) * 3  # levels 0, 1/3, 2/3, 1
    assert torch.allclose(levels, torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))
    # other bounds: [-1, 1] in 3 bits has the 8 levels -1 + 2k/7; values outside are clamped to the bounds
    y = BitDepth(3, -1.0, 1.0)(torch.tensor([-1.5, -1.0, -0.9, 0.0, 0.3, 1.0, 2.0]))
    expected = torch.tensor([-1.0, -1.0, -1.0, 1 / 7, 3 / 7, 1.0, 1.0])
    assert torch.allclose(y, expected, atol=1e-6)
    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for bits in range(1, 9):
        out = BitDepth(bits)(x)
        assert out.min() >= 0 and out.max() <= 1
        assert len(out.unique()) <= 2**bits
        assert (out - x).abs().max() <= 0.5 / (2**bits - 1) + 1e-6  # the nearest level


def test_bit_depth_gradient_is_zero_everywhere():
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (grad,) = torch.autograd.grad(BitDepth(3)(x).sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))


def test_median_filter_small_example():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])[None, None]
    # the 2x2 window at (i, j) covers rows i-1..i and columns j-1..j, the edge mirrored; of its 4 values the
    # upper middle one: at (1, 1) the window {1, 2, 4, 5} gives 4
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 5.0], [7.0, 7.0, 8.0]])[None, None]
    assert torch.equal(MedianFilter(2)(x), expected)
    # a 3x3 median removes an isolated bright pixel and keeps a solid edge
    spot = torch.zeros(1, 1, 5, 5)
    spot[0, 0, 2, 2] = 1.0
    assert torch.equal(MedianFilter(3)(spot), torch.zeros_like(spot))
    edge = torch.zeros(1, 1, 5, 5)
    edge[..., 2:] = 1.0
    assert torch.equal(MedianFilter(3)(edge), edge)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_filter_matches_scipy(size, digits):
    """Xu et al.'s reference computes the squeezer with scipy.ndimage.median_filter(size=(1, k, k, 1),
    mode="reflect") on NHWC images: the same window per channel, computed here by scipy on NCHW."""
    x = torch.cat([digits.test.x[:20], torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))])
    colour = torch.rand(4, 3, 6, 7, generator=torch.Generator().manual_seed(3))
    for images in (x, colour):
        ours = MedianFilter(size)(images)
        reference = scipy.ndimage.median_filter(images.numpy(), size=(1, 1, size, size), mode="reflect")
        np.testing.assert_array_equal(ours.numpy(), reference)
        assert ours.shape == images.shape


def test_median_filter_gradient_reaches_the_selected_pixel():
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    (grad,) = torch.autograd.grad(MedianFilter(2)(x).sum(), x)
    assert grad.sum() == pytest.approx(3 * 36)  # each of the 108 outputs sends 1 to the pixel it selected
    assert (grad >= 0).all()


def test_bad_transforms_are_refused():
    for bits in (0, 9, True, 2.0):
        with pytest.raises(BadInputError, match=r"bit_depth: .* is not in 1\.\.8"):
            BitDepth(bits)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="lower < upper"):
        BitDepth(3, 1.0, 1.0)
    for size in (1, 0, True, 2.5):
        with pytest.raises(BadInputError, match="median: .* is not an integer >= 2"):
            MedianFilter(size)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match=r"shape \(4, 64\) is not a batch of images"):
        MedianFilter(2)(torch.zeros(4, 64))
    with pytest.raises(BadInputError, match="a 9x9 window exceeds the 8x8 images"):
        MedianFilter(9)(torch.zeros(1, 1, 8, 8))


def test_transform_from_spec_and_name():
    bit = transform_from_spec({"bit_depth": 3}, -1.0, 1.0)
    assert isinstance(bit, BitDepth) and (bit.bits, bit.lower, bit.upper) == (3, -1.0, 1.0)
    assert isinstance(transform_from_spec({"median": 2}, 0.0, 1.0), MedianFilter)
    both = transform_from_spec({"median": 2, "bit_depth": 1}, 0.0, 1.0)
    assert isinstance(both, nn.Sequential) and [type(m) for m in both] == [MedianFilter, BitDepth]
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(both(x), BitDepth(1)(MedianFilter(2)(x)))  # applied in the mapping's order
    assert transform_name({"bit_depth": 3}) == "bit_depth-3"
    assert transform_name({"median": 2}) == "median-2"
    assert transform_name({"bit_depth": 3, "median": 2}) == "bit_depth-3+median-2"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"bit_depth": 0}, r"input_transforms\[0\]\.bit_depth: 0 is not in 1\.\.8"),
        ({"bit_depth": 9}, r"input_transforms\[0\]\.bit_depth: 9 is not in 1\.\.8"),
        ({"bit_depth": "3"}, r"input_transforms\[0\]\.bit_depth: '3' is not in 1\.\.8"),
        ({"median": 1}, r"input_transforms\[0\]\.median: 1 is not an integer >= 2"),
        ({"jpeg": 75}, r"input_transforms\[0\]\.jpeg: unknown transformation; known: bit_depth, median"),
        ({}, r"input_transforms\[0\]: \{\} is not a mapping"),
    ],
)
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(BadInputError, match=message):
        transform_from_spec(spec, 0.0, 1.0, field="input_transforms[0]")
    with pytest.raises(BadInputError, match=message.replace(r"input_transforms\[0\]", "input_transform")):
        transform_name(spec)


# --- the wrapped model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", [BitDepth(3), MedianFilter(2)], ids=["bit_depth", "median"])
def test_bpda_keeps_the_forward_pass_and_passes_the_gradient_straight_through(
    transform, digits_model, digits
):
    x = digits.test.x[:64]
    plain, bpda = (
        TransformedModel(digits_model, transform),
        TransformedModel(digits_model, transform, bpda=True),
    )
    with torch.no_grad():
        assert torch.equal(plain(x), digits_model(transform(x)))
        assert torch.equal(bpda(x), plain(x))
    x_in = x.clone().requires_grad_(True)
    out = bpda(x_in)
    assert torch.equal(out, plain(x))  # bit for bit, with a graph too
    (grad,) = torch.autograd.grad(out[:, 3].sum(), x_in)
    at = transform(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(digits_model(at)[:, 3].sum(), at)
    assert torch.equal(
        grad, expected
    )  # the model's gradient at transform(x), as if the transform were identity
    assert grad.abs().amax() > 0


def test_bpda_refuses_a_transform_that_changes_the_shape(digits_model):
    pooled = TransformedModel(digits_model, nn.AvgPool2d(2), bpda=True)
    with pytest.raises(BadInputError, match=r"maps shape \(2, 1, 8, 8\) to \(2, 1, 4, 4\)"):
        pooled(torch.zeros(2, 1, 8, 8, requires_grad=True))


def _still_correct(
    defended: TorchTarget, cascade: CascadeResult, x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """Per budget of `cascade`, which points the defended model itself still classifies correctly on the
    cascade's examples (crafted on whichever model), each example checked to lie inside its budget."""
    correct = []
    for outcome in cascade.outcomes:
        assert (batch_norm(outcome.x_adv - x, "linf") <= outcome.eps * (1 + 1e-5) + 1e-7).all()
        assert outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1
        with torch.no_grad():
            correct.append(defended.labels(outcome.x_adv) == y)
    return correct


def _rate(correct: torch.Tensor) -> float:
    return float(correct.float().mean())


def _fired(target: TorchTarget, x, y, cascade) -> dict[str, bool]:
    return {c.name: c.fired for c in run_checks(target, x, y, cascade, torch.Generator().manual_seed(0))}


def test_masking_checks_fire_on_the_plain_bit_depth_evaluation_not_on_bpda(digits_model, digits):
    """Rounding's gradient is zero for any model: the checks must name it on the plain evaluation. With the
    straight-through gradient the attack works and the same checks stay quiet."""
    x, y = digits.test.x[:100], digits.test.y[:100]
    defended = TorchTarget(TransformedModel(digits_model, BitDepth(3)), SPEC)
    attacker = TorchTarget(TransformedModel(digits_model, BitDepth(3), bpda=True), SPEC)
    generator = torch.Generator().manual_seed(0)
    plain = run_cascade(defended, x, y, (0.1,), "linf", ("apgd-ce",), query_budget=1000, generator=generator)
    checks = {c.name: c for c in run_checks(defended, x, y, plain, generator)}
    assert checks[ZERO_GRADIENTS].fired and checks[ZERO_GRADIENTS].observed == 1.0
    assert checks[UNBOUNDED].fired and checks[UNBOUNDED].observed == 0.0
    bpda = run_cascade(attacker, x, y, (0.1,), "linf", ("apgd-ce",), query_budget=1000, generator=generator)
    fired = _fired(attacker, x, y, bpda)
    assert not fired[ZERO_GRADIENTS] and not fired[UNBOUNDED]
    (plain_correct,), (bpda_correct,) = (
        _still_correct(defended, plain, x, y),
        _still_correct(defended, bpda, x, y),
    )
    assert _rate(bpda_correct) < _rate(plain_correct) - 0.3


# --- the figures ------------------------------------------------------------------------------------------


def figures(seed: int, attacks: tuple[str, ...] = ("apgd-ce",), n: int = 200) -> dict[str, float]:
    """The digits CNN trained from `seed`; the first `n` test points. Bit depth 3 wraps that model as it is;
    the median filter (2x2) wraps a CNN trained on filtered inputs (the naive wrap of the plain model is
    reported for its clean accuracy only). Robust accuracy at each L-inf budget under the cascade of `attacks`
    with plain gradients, with BPDA, and their per-point worst case, all read by the defended model;
    `fired:<check>` is 1 where the masking check fires on that evaluation."""
    digits = load_builtin("digits", seed=0)
    x, y = digits.test.x[:n], digits.test.y[:n]
    model = fit(build_model(digits_cnn, seed), digits.train, seed=seed)
    filtered = fit(
        build_model(lambda: TransformedModel(digits_cnn(), MedianFilter(2)), seed), digits.train, seed=seed
    )
    with torch.no_grad():
        out = {
            "clean": _rate(model(x).argmax(1) == y),
            "median_untrained_clean": _rate(model(MedianFilter(2)(x)).argmax(1) == y),
        }
    for name, inner, transform in (
        ("bit_depth", model, BitDepth(3)),
        ("median", filtered.model, MedianFilter(2)),
    ):
        defended = TorchTarget(TransformedModel(inner, transform), SPEC)
        attacker = TorchTarget(TransformedModel(inner, transform, bpda=True), SPEC)
        with torch.no_grad():
            out[f"{name}_clean"] = _rate(defended.labels(x) == y)
        correct = {}
        for mode, target in (("plain", defended), ("bpda", attacker)):
            generator = torch.Generator().manual_seed(seed)
            cascade = run_cascade(
                target, x, y, BUDGETS, "linf", attacks, query_budget=1000, generator=generator
            )
            correct[mode] = _still_correct(defended, cascade, x, y)
            for eps, still in zip(BUDGETS, correct[mode], strict=True):
                out[f"{name}_{mode}@{eps}"] = _rate(still)
            for check, fired in _fired(target, x, y, cascade).items():
                out[f"{name}_{mode}_fired:{check}"] = float(fired)
        for eps, plain, bpda in zip(BUDGETS, correct["plain"], correct["bpda"], strict=True):
            out[f"{name}_worst@{eps}"] = _rate(plain & bpda)  # robust where neither evaluation succeeded
    return out


@pytest.fixture(scope="module")
def seed_runs() -> dict[str, float]:
    return median_figures([figures(seed) for seed in SEEDS])


def test_bpda_breaks_what_plain_gradients_call_robust(seed_runs):
    """Seed study (bench/seed_study.py test_input_transforms --seeds 0-4 --threads 1 --capabilities
    native,default, n=10, APGD-CE on 200 test points), min-max (median):
    clean accuracy 0.975-1.0 (0.985) plain and bit depth 3; robust accuracy of bit depth 3 with plain
    gradients 0.975-0.995 (0.985) / 0.970-0.995 (0.980) / 0.955-0.975 (0.970) at eps 0.05 / 0.1 / 0.2,
    with BPDA 0.910-0.955 (0.940) / 0.250-0.480 (0.390) / 0.020-0.090 (0.048). Median filter 2x2 (model
    trained on filtered inputs): clean 0.970-0.990 (0.983), 0.745-0.865 (0.810) for the plain model wrapped
    untrained; plain gradients 0.775-0.895 (0.848) / 0.405-0.525 (0.460) / 0.020-0.040 (0.025), BPDA
    0.895-0.960 (0.933) / 0.665-0.825 (0.743) / 0.100-0.200 (0.120): its own gradient is the stronger one.
    The per-point worst case of the two equals BPDA's figure on bit depth in every run and is within 0.02 of
    the plain figure on the median filter (0.005-0.040 at eps 0.2)."""
    m = seed_runs
    assert m["clean"] >= 0.96 and m["bit_depth_clean"] >= 0.96
    for eps in (0.1, 0.2):
        assert m[f"bit_depth_plain@{eps}"] >= 0.9  # plain gradients: the defence looks robust
        assert m[f"bit_depth_bpda@{eps}"] <= m[f"bit_depth_plain@{eps}"] - 0.4  # BPDA breaks it
        assert m[f"bit_depth_worst@{eps}"] >= m[f"bit_depth_bpda@{eps}"] - 0.03  # plain adds ~nothing to BPDA
    assert m["bit_depth_bpda@0.2"] <= 0.15
    assert m["median_clean"] >= 0.95 and m["median_untrained_clean"] <= m["median_clean"] - 0.05
    for (
        eps
    ) in BUDGETS:  # differentiable almost everywhere: the median's own gradient is no weaker than BPDA's
        assert m[f"median_plain@{eps}"] <= m[f"median_bpda@{eps}"]
        assert m[f"median_worst@{eps}"] >= m[f"median_plain@{eps}"] - 0.05  # BPDA adds ~nothing to plain
    assert m["median_plain@0.2"] <= 0.1


def test_checks_fire_where_gradients_are_masked(seed_runs):
    """Every run of the study: on bit depth with plain gradients the zero-gradient and unbounded-budget checks
    fire (all points have a zero gradient; PGD-100 with the whole range fools none); they never fire with
    BPDA nor on the median filter, where no check fires on the plain evaluation. The single-step check fired
    in 5 of the 20 BPDA evaluations (FGSM found points APGD-CE missed): BPDA's gradient only approximates."""
    m = seed_runs
    assert m[f"bit_depth_plain_fired:{ZERO_GRADIENTS}"] == 1
    assert m[f"bit_depth_plain_fired:{UNBOUNDED}"] == 1
    for evaluation in ("bit_depth_bpda", "median_plain", "median_bpda"):
        assert m[f"{evaluation}_fired:{ZERO_GRADIENTS}"] == 0 and m[f"{evaluation}_fired:{UNBOUNDED}"] == 0
    assert not any(v for k, v in m.items() if k.startswith("median_plain_fired:"))


@pytest.mark.slow
def test_full_white_box_cascade_agrees():
    """APGD-CE then APGD-T (9 target classes) on seed 0: the same picture as APGD-CE alone."""
    f = figures(0, attacks=("apgd-ce", "apgd-t"))
    print(f)
    assert f["bit_depth_plain@0.2"] >= 0.85 and f["bit_depth_bpda@0.2"] <= 0.05
    assert f[f"bit_depth_plain_fired:{ZERO_GRADIENTS}"] == 1
    assert f["median_plain@0.2"] <= 0.05
