"""NULL labelling (Hosseini et al. 2017) on the digits CNN: its three figures (transfer attack success from a
substitute trained on disjoint data, adaptive white-box attack success, NULL rate on clean inputs) beside the
plain model's, the NULL output it adds, the adaptive attack `null_aware_pgd`, and the bad input both
refuse."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.attacks.evasion.apgd import APGDConfig, apgd
from aisec.attacks.evasion.null_aware import null_aware_pgd, null_margin
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import TrainingConfig, fit
from aisec.data.builtin import Split, load_builtin
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.null_labelling import (
    NullLabellingConfig,
    NullLabellingResult,
    null_rate,
    train_null_labelling,
    with_null_class,
)
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

SPEC = InputSpec((1, 8, 8), 10)
NULL_SPEC = InputSpec((1, 8, 8), 11)


@functools.cache
def _digits() -> Split:
    return load_builtin("digits", seed=0)


def _halves(seed: int) -> tuple[LabelledData, LabelledData]:
    """The training set split in two at random (from the seed): the defender's half and the attacker's."""
    train = _digits().train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    mine, theirs = order[: len(train) // 2], order[len(train) // 2 :]
    return (
        LabelledData(train.x[mine], train.y[mine], "defender's half"),
        LabelledData(train.x[theirs], train.y[theirs], "attacker's half"),
    )


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@functools.cache
def _models(seed: int) -> tuple[nn.Module, nn.Module]:
    """The plain model (the defender's half) and the attacker's substitute (the other half), from the seed."""
    mine, theirs = _halves(seed)
    plain = fit(build_model(digits_cnn, seed), mine, seed=seed)
    substitute = fit(build_model(digits_cnn, seed + 1000), theirs, seed=seed + 1000)
    return plain, substitute


@functools.cache
def _null_model(seed: int, eps: float) -> NullLabellingResult:
    """The digits CNN trained with NULL labelling at `eps` (default settings) on the defender's half."""
    return train_null_labelling(
        build_model(digits_cnn, seed),
        _halves(seed)[0],
        NullLabellingConfig(eps),
        generator=torch.Generator().manual_seed(seed),
    )


def eps_figures(seed: int, eps: float) -> dict[str, float]:
    """The three figures at `eps` for the NULL-labelled model and the plain one, both trained from the seed on
    the defender's half: transfer success of APGD-CE examples crafted on the substitute, among the test inputs
    each model gets right (answered neither y nor NULL); the share of those examples answered NULL (blocked);
    white-box success (null_aware_pgd on the NULL model, PGD-100 with a restart on the plain one); clean
    accuracy and the NULL rate on the clean test set (540 inputs)."""
    test = _digits().test
    plain, substitute = _models(seed)
    result = _null_model(seed, eps)
    null = result.null_class
    generator = torch.Generator().manual_seed(seed)
    transfer = apgd(TorchTarget(substitute, SPEC), test.x, test.y, APGDConfig(eps=eps), generator=generator)
    out: dict[str, float] = {}
    for name, model in (("plain", plain), ("null", result.model)):
        right = _labels(model, test.x) == test.y
        answer = _labels(model, transfer.x_adv[right])
        wrong = (answer != test.y[right]) & (answer != null)
        out[f"{name}_clean@{eps}"] = float(right.float().mean())
        out[f"{name}_transfer@{eps}"] = float(wrong.float().mean())
        if name == "plain":
            config = PGDConfig(eps, steps=100, restarts=1)
            attack = pgd(TorchTarget(model, SPEC), test.x[right], test.y[right], config, generator=generator)
            out[f"plain_whitebox@{eps}"] = attack.success_rate
            continue
        out[f"null_blocked@{eps}"] = float((answer == null).float().mean())
        target = TorchTarget(model, NULL_SPEC)
        adaptive = null_aware_pgd(target, test.x[right], test.y[right], null, eps=eps, generator=generator)
        out[f"null_adaptive@{eps}"] = adaptive.success_rate
        out[f"null_clean_null@{eps}"] = null_rate(model, test.x, null)
    return out


def figures(seed: int) -> dict[str, float]:
    return eps_figures(seed, 0.1) | eps_figures(seed, 0.2)


def _eps_runs(eps: float) -> dict[str, float]:
    return median_figures([eps_figures(seed, eps) for seed in SEEDS])


def test_null_labelling_blocks_transfer_at_eps_0_2_but_not_an_adaptive_attacker():
    """Seed study (bench/seed_study.py test_null_labelling --seeds 0-4 --threads 1 --capabilities
    native,default; n=10; min / median / max) at eps 0.2: transfer success 0.621 / 0.651 / 0.750 on the plain
    model, 0.000 / 0.000 / 0.002 on the NULL-labelled one, which answers NULL to 0.926 / 0.965 / 0.979 of the
    transferred examples; NULL rate on clean inputs 0.000 / 0.003 / 0.007, clean accuracy
    0.974 / 0.979 / 0.985 (plain 0.961 / 0.972 / 0.974); white-box success 0.804 / 0.851 / 0.879 for
    null_aware_pgd on the NULL model, 0.970 / 0.984 / 0.992 for PGD on the plain one (per seed, 0.82-0.89 of
    it). Asserted on the median of three seeds."""
    median = _eps_runs(0.2)
    assert median["plain_transfer@0.2"] > 0.5
    assert median["null_transfer@0.2"] < 0.02  # blocked: the transferred examples are answered NULL
    assert median["null_blocked@0.2"] > 0.85
    assert median["null_clean_null@0.2"] < 0.02  # its cost on clean inputs
    assert median["null_clean@0.2"] > 0.95
    # what the defence does not stop: a white-box attacker aiming at any wrong class other than NULL
    assert median["null_adaptive@0.2"] > 0.7
    assert median["null_adaptive@0.2"] > 0.75 * median["plain_whitebox@0.2"]


@pytest.mark.slow
def test_null_labelling_blocks_transfer_at_eps_0_1_but_not_an_adaptive_attacker():
    """Seed study as above at eps 0.1: transfer success 0.152 / 0.174 / 0.188 (plain), 0.000 / 0.000 / 0.002
    (NULL labelling), NULL answers to 0.342 / 0.428 / 0.505 of the transferred examples (it answers the rest
    correctly); clean NULL rate 0.000 / 0.006 / 0.015, clean accuracy 0.963 / 0.973 / 0.985; white-box success
    0.340 / 0.379 / 0.415 (null_aware_pgd) against 0.402 / 0.416 / 0.522 (PGD on the plain model; per seed,
    0.76-1.00 of it)."""
    median = _eps_runs(0.1)
    assert median["plain_transfer@0.1"] > 0.12
    assert median["null_transfer@0.1"] < 0.02
    assert median["null_clean_null@0.1"] < 0.03
    assert median["null_clean@0.1"] > 0.95
    assert median["null_adaptive@0.1"] > 0.3
    assert median["null_adaptive@0.1"] > 0.75 * median["plain_whitebox@0.1"]


def _untrained(seed: int = 0) -> nn.Module:
    return build_model(digits_cnn, seed)


def test_with_null_class_adds_one_output_with_the_original_weights():
    model = fit(_untrained(), _digits().train.subset(200, seed=0), seed=0, epochs=2)
    extended = with_null_class(model)
    old, new = model[-1], extended[-1]
    assert (old.out_features, new.out_features) == (10, 11) and new.in_features == old.in_features
    assert torch.equal(new.weight[:10], old.weight) and torch.equal(new.bias[:10], old.bias)
    assert not new.weight[10].any() and float(new.bias[10].detach()) == 0.0
    x = _digits().test.x[:16]
    with torch.no_grad():
        assert torch.allclose(extended(x)[:, :10], model(x))
        assert torch.equal(extended(x)[:, 10], torch.zeros(16))
    with torch.no_grad():  # a copy: training it leaves the original alone
        extended[0].weight.add_(1.0)
    assert not torch.equal(extended[0].weight, model[0].weight)
    nested = nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 3))
    )
    assert with_null_class(nested)[1][0].out_features == 4
    assert with_null_class(nn.Linear(5, 2)).out_features == 3


@pytest.mark.parametrize(
    "model, layer",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1)), "2 (Softmax)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Sequential(nn.ReLU())), "2.0 (ReLU)"),
        (nn.Conv2d(1, 10, 8), "<model> (Conv2d)"),
    ],
)
def test_refuses_a_model_whose_last_layer_is_not_linear(model, layer):
    with pytest.raises(BadInputError, match=f"last layer is {re.escape(layer)}"):
        with_null_class(model)
    with pytest.raises(BadInputError, match="nn.Linear"):
        train_null_labelling(
            model, _digits().train.subset(64, seed=0), NullLabellingConfig(0.1), generator=torch.Generator()
        )


def test_null_share_ramps_between_the_thresholds():
    config = NullLabellingConfig(0.2, null_from=0.25, null_to=0.75)
    sizes = torch.tensor([0.0, 0.05, 0.1, 0.15, 0.2])
    assert torch.allclose(config.null_share(sizes), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_training_is_seeded_adds_the_null_output_and_leaves_the_global_generator_alone():
    small = _digits().train.subset(128, seed=0)
    state = torch.random.get_rng_state()
    runs = [
        train_null_labelling(
            _untrained(),
            small,
            NullLabellingConfig(0.2, random_share=share),
            TrainingConfig(epochs=1, batch_size=32),
            generator=torch.Generator().manual_seed(seed),
        )
        for seed, share in ((3, 0.5), (3, 0.5), (4, 0.5), (3, 1.0), (3, 0.0))
    ]
    assert torch.equal(torch.random.get_rng_state(), state)
    first = runs[0]
    assert first.null_class == 10 and first.seconds > 0 and not first.model.training
    assert first.model(small.x[:4]).shape == (4, 11)
    weights = [list(r.model.state_dict().values()) for r in runs]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))
    for other in weights[2:]:  # another seed, all-random or all-FGSM copies train another model
        assert any(not torch.equal(a, b) for a, b in zip(weights[0], other, strict=True))
    assert (
        0.0 <= null_rate(first.model, small.x, 10) <= 1.0 and null_rate(first.model, small.x[:0], 10) == 0.0
    )


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -0.1}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"eps": True}, "eps"),
        ({"eps": 0.1, "null_from": 0.8, "null_to": 0.5}, "null_from"),
        ({"eps": 0.1, "null_to": 1.5}, "null_to"),
        ({"eps": 0.1, "random_share": 1.5}, "random_share"),
    ],
)
def test_bad_settings(settings, field):
    with pytest.raises(BadInputError, match=field):
        NullLabellingConfig(**settings)


def test_bad_input_fails_before_training():
    small = _digits().train.subset(64, seed=0)
    config, g = NullLabellingConfig(0.1), torch.Generator()
    with pytest.raises(
        BadInputError, match=r"null_labelling.eps: 8 exceeds the input range \[0, 1\] \(width 1\)"
    ):
        train_null_labelling(_untrained(), small, NullLabellingConfig(8), generator=g)
    with pytest.raises(DataError, match=r"outside the input range \[0, 1\]"):
        train_null_labelling(_untrained(), LabelledData(small.x * 16, small.y), config, generator=g)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\]"):
        y = small.y.clone()
        y[0] = 10  # the NULL index is not a label a user may give
        train_null_labelling(_untrained(), LabelledData(small.x, y), config, generator=g)
    with pytest.raises(DataError, match="cannot take inputs of shape"):
        train_null_labelling(_untrained(), LabelledData(small.x.flatten(1), small.y), config, generator=g)
    with pytest.raises(BadInputError, match="lower 1 must be below upper 0"):
        train_null_labelling(_untrained(), small, config, lower=1.0, upper=0.0, generator=g)


class _Fixed(nn.Module):
    """Logits a linear function of the input's mean: the NULL output (index 3) wins near the clean input,
    class 2 once the input moves far enough; class 0 is the true class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([torch.zeros_like(m), -torch.ones_like(m), 40 * (m - 0.5), 0.5 + 0 * m], 1)


def test_null_aware_pgd_counts_only_a_wrong_non_null_answer():
    target = TorchTarget(_Fixed(), InputSpec((4,), 4))
    x, y = torch.full((3, 4), 0.5), torch.zeros(3, dtype=torch.int64)
    assert (_labels(_Fixed(), x) == 3).all()  # NULL at the clean input
    far = null_aware_pgd(target, x, y, 3, eps=0.1, steps=20, generator=torch.Generator().manual_seed(0))
    assert far.success.all() and (_labels(_Fixed(), far.x_adv) == 2).all()
    assert (far.norm <= 0.1 + 1e-6).all() and far.attack == "null_aware_pgd" and (far.queries >= 2).all()
    near = null_aware_pgd(
        target, x, y, 3, eps=0.01, steps=20, restarts=2, generator=torch.Generator().manual_seed(0)
    )
    assert not near.success.any() and torch.equal(near.x_adv, x) and (near.queries == 3 * 21).all()
    l2 = null_aware_pgd(
        target, x, y, 3, eps=0.2, steps=20, norm="l2", generator=torch.Generator().manual_seed(0)
    )
    assert l2.success.all() and (l2.norm <= 0.2 + 1e-6).all() and l2.norm_kind == "l2"
    # the margin is positive exactly where the answer is neither y nor NULL
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 4.0, 3.0], [5.0, 1.0, 2.0, 3.0]])
    assert (null_margin(logits, torch.zeros(3, dtype=torch.int64), 3) > 0).tolist() == [False, True, False]


def test_null_aware_pgd_on_a_null_labelled_model_never_counts_null():
    """Plain PGD counts NULL answers as successes; null_aware_pgd's are all wrong, non-NULL answers."""
    model = _null_model(0, 0.2).model  # the figures' model for seed 0
    test = _digits().test
    x, y = test.x[:100], test.y[:100]
    target = TorchTarget(model, NULL_SPEC)
    adaptive = null_aware_pgd(target, x, y, 10, eps=0.2, steps=50, generator=torch.Generator().manual_seed(0))
    answer = _labels(model, adaptive.x_adv)
    assert ((answer != y) & (answer != 10))[adaptive.success].all()
    assert torch.equal(adaptive.x_adv[~adaptive.success], x[~adaptive.success])
    plain = pgd(target, x, y, PGDConfig(0.2, steps=50), generator=torch.Generator().manual_seed(0))
    assert (_labels(model, plain.x_adv[plain.success]) == 10).any()  # what plain PGD would count as broken


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"null_class": 4}, "null_class must be an output index in \\[0, 3\\]"),
        ({"null_class": -1}, "null_class"),
        ({"eps": 0.0}, "eps must be positive"),
        ({"steps": 0}, "steps must be positive"),
        ({"restarts": -1}, "restarts must be >= 0"),
        ({"norm": "l1"}, "norm must be one of linf, l2"),
        ({"y": torch.full((3,), 3)}, "labels must be real classes, not the NULL class 3"),
    ],
)
def test_null_aware_pgd_bad_input(kwargs, message):
    args = {"x": torch.full((3, 4), 0.5), "y": torch.zeros(3, dtype=torch.int64), "null_class": 3, "eps": 0.1}
    args |= kwargs
    with pytest.raises(DataError, match=message):
        null_aware_pgd(TorchTarget(_Fixed(), InputSpec((4,), 4)), **args)
