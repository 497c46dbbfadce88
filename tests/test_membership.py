"""Membership inference: loss threshold, LiRA and RMIA on a seeded overfit digits model, the ROC conventions,
the logit-space score, the executors, and refusals before any work.

Setting: a 1-hidden-layer MLP trained on 200 digits (the members) until it fits them perfectly (train accuracy
1.0, test 0.93); the non-members are 1,000 other digits, so that a 0.1 % FPR is a real operating point (one
false positive allowed) rather than "no false positive among a few hundred"; the attacker holds the remaining
597 digits (the population) and, online, the records under attack. 64 shadow models of the same architecture
train on random 200-record subsets of that pool (every record in 7 of them).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch
from membership_split import MEMBERS, NON_MEMBERS, SPEC, membership_split, mlp
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from torch import nn

from aisec.assessment.probes.membership import roc_chart
from aisec.attacks.inference.membership import (
    MembershipResult,
    ShadowModels,
    ShadowTrainer,
    lira,
    loss_threshold_attack,
    rmia,
    train_shadows,
)
from aisec.attacks.inference.roc import roc_curve
from aisec.attacks.inference.scores import logit_score
from aisec.core.errors import BadInputError, CapabilityError
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.demo.models import digits_cnn
from aisec.targets.callable_target import CallableTarget
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only

torch.set_num_threads(1)
SHADOWS = 64
FIT = functools.partial(fit, epochs=100)


class Setting:
    """The victim, the records under attack with their truth, the population and the shadow models."""

    def __init__(self) -> None:
        split = membership_split()
        self.x, self.y, self.members, self.population = split.x, split.y, split.members, split.population
        self.victim = FIT(
            build_model(mlp, 12345), LabelledData(self.x[:MEMBERS], self.y[:MEMBERS]), seed=12345
        )
        start = time.perf_counter()
        self.shadows = train_shadows(
            self.target(), self.x, self.y, ShadowTrainer(mlp, FIT), population=self.population,
            n_shadows=SHADOWS, train_size=MEMBERS, seed=1,
        )  # fmt: skip
        self.shadow_seconds = time.perf_counter() - start

    def target(self) -> TorchTarget:
        return TorchTarget(self.victim, SPEC)


@pytest.fixture(scope="module")
def setting() -> Setting:
    return Setting()


def _run(setting: Setting, attack, **kwargs) -> tuple[MembershipResult, TorchTarget]:
    target = setting.target()
    return attack(target, setting.x, setting.y, members=setting.members, **kwargs), target


def _line(result: MembershipResult) -> str:
    low, one = result.tpr_at[0.001], result.tpr_at[0.01]
    figures = f"AUC {result.auc:.3f}, TPR@0.1% {low:.3f}, TPR@1% {one:.3f}"
    return f"{result.attack}: {figures}, {result.queries} queries"


def test_lira_finds_members_the_loss_attack_cannot(setting: Setting) -> None:
    # Measured (seed 0): loss AUC 0.604, TPR@0.1% 0.010, TPR@1% 0.015; LiRA online AUC 0.721, 0.065, 0.130;
    # LiRA offline AUC 0.688, 0.000, 0.075. Over data seeds 0-3, LiRA online: AUC 0.717-0.758, TPR@0.1%
    # 0.025-0.080, loss TPR@0.1% 0-0.010.
    loss, loss_target = _run(setting, loss_threshold_attack)
    online, online_target = _run(setting, lira, shadows=setting.shadows)
    offline, _ = _run(setting, lira, shadows=setting.shadows, online=False)
    print(f"\n{SHADOWS} shadow models in {setting.shadow_seconds:.1f} s")
    for result in (loss, online, offline):
        print(_line(result))
    assert loss.queries == online.queries == MEMBERS + NON_MEMBERS
    assert loss_target.queries.total == online_target.queries.total == MEMBERS + NON_MEMBERS
    assert online.shadows == SHADOWS and loss.shadows == 0
    assert online.auc > 0.7
    assert online.tpr_at[0.001] >= 0.03
    assert online.tpr_at[0.001] >= 5 * loss.tpr_at[0.001]
    assert online.tpr_at[0.01] >= 5 * loss.tpr_at[0.01]
    assert offline.auc > loss.auc + 0.05
    assert offline.tpr_at[0.01] >= 3 * loss.tpr_at[0.01]


def test_rmia_at_least_as_strong_as_the_loss_attack_at_low_fpr(setting: Setting) -> None:
    # Measured (seed 0): RMIA online (calibrated T=4) AUC 0.719, TPR@0.1% 0.015, TPR@1% 0.080; offline
    # (calibrated a=0.5, T=4) AUC 0.715, 0.045, 0.070; loss 0.604, 0.010, 0.015.
    loss, _ = _run(setting, loss_threshold_attack)
    online, target = _run(setting, rmia, shadows=setting.shadows)
    offline, _ = _run(setting, rmia, shadows=setting.shadows, online=False)
    print()
    for result in (online, offline):
        print(_line(result))
    assert target.queries.total == online.queries == MEMBERS + NON_MEMBERS + len(setting.population)
    for result in (online, offline):
        assert result.auc > 0.7
        for fpr in (0.001, 0.01):
            assert result.tpr_at[fpr] >= loss.tpr_at[fpr]
        assert result.tpr_at[0.01] >= 3 * loss.tpr_at[0.01]


def test_roc_chart_is_log_log_and_the_loss_attack_reads_confident_members(setting: Setting) -> None:
    loss, _ = _run(setting, loss_threshold_attack)
    confidence, _ = _run(setting, loss_threshold_attack, kind="confidence")
    online, _ = _run(setting, lira, shadows=setting.shadows)
    chart = roc_chart({"loss": loss.roc, "LiRA online": online.roc})
    assert chart.log_x and chart.log_y
    assert [s.label for s in chart.series] == ["loss", "LiRA online", "chance"]
    assert chart.series[-1].x[0] == pytest.approx(1 / NON_MEMBERS)
    assert all(t > 0 for s in chart.series for t in s.y)
    assert confidence.auc > 0.5
    with torch.no_grad():  # the float32 loss ties members at exactly 0: no threshold separates them
        float32_loss = nn.functional.cross_entropy(setting.victim(setting.x), setting.y, reduction="none")
    assert int((float32_loss[setting.members] == 0).sum()) > 0
    assert len(loss.scores.unique()) == len(loss.scores)


def test_logit_score_does_not_saturate_where_the_float32_loss_does() -> None:
    logits = torch.zeros(3, 10)
    logits[:, 3] = torch.tensor([20.0, 30.0, 40.0])  # confident members, margins 20, 30, 40
    y = torch.full((3,), 3)
    loss = nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.equal(loss, torch.zeros(3))  # float32 loss: exactly 0 for all three
    phi = logit_score(logits, y)
    expected = logits[:, 3].double() - np.log(9.0)
    assert torch.allclose(phi, expected, atol=1e-9)
    probabilities = logits.softmax(1)  # what a served API returns: p_y is exactly 1.0 in float32
    assert torch.equal(probabilities[:, 3], torch.ones(3))
    phi_from_probabilities = logit_score(probabilities, y, kind="probabilities")
    assert torch.allclose(phi_from_probabilities, expected, atol=1e-4)
    assert (phi_from_probabilities.diff() > 9).all()


def test_roc_conventions_match_sklearn_and_carlini() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 40, (3000,), generator=generator).double()  # many ties
    members = torch.rand(3000, generator=generator) < 0.3
    scores[members] += 3
    roc = roc_curve(scores, members)
    assert roc.auc == pytest.approx(roc_auc_score(members.numpy(), scores.numpy()), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(members.numpy(), scores.numpy(), drop_intermediate=False)
    for alpha in (0.001, 0.01, 0.1):
        assert roc.tpr_at(alpha) == pytest.approx(tpr[np.where(fpr <= alpha)[0][-1]])
    # hand-made: members 3, 2, 1; non-members 2.5, 0 -> at FPR 0 only the 3 is caught
    small = roc_curve(torch.tensor([3.0, 2.0, 1.0, 2.5, 0.0]), torch.tensor([1, 1, 1, 0, 0]))
    assert small.tpr_at(0.0) == pytest.approx(1 / 3)
    assert small.tpr_at(0.5) == pytest.approx(1.0)
    assert small.auc == pytest.approx(4 / 6)  # 4 of the 6 member/non-member pairs ranked right


def test_local_process_executor_gives_the_same_shadows_as_in_process() -> None:
    split = load_builtin("digits", seed=0)
    x, y = split.train.x[:60], split.train.y[:60]
    population = LabelledData(split.train.x[60:120], split.train.y[60:120])
    target = TorchTarget(digits_cnn(), SPEC)
    trainer = ShadowTrainer(digits_cnn, functools.partial(fit, epochs=3))
    shadows = [
        train_shadows(target, x, y, trainer, population=population, n_shadows=4, seed=3, executor=executor)
        for executor in (InProcessExecutor(), LocalProcessExecutor(2))
    ]
    assert torch.equal(shadows[0].logits, shadows[1].logits)
    assert torch.equal(shadows[0].population_logits, shadows[1].population_logits)
    assert torch.equal(shadows[0].members, shadows[1].members)
    assert (shadows[0].members.sum(0) == 2).all()  # every record in exactly half of the models
    assert target.queries.total == 0  # training shadows never queries the target


def test_label_only_target_is_refused_before_any_work() -> None:
    model = digits_cnn()
    target = TorchTarget(model, SPEC)
    view = label_only(target)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    population = LabelledData(torch.rand(6, 1, 8, 8), torch.arange(6))
    calls: list[int] = []

    def fit(model: nn.Module, data: LabelledData, seed: int) -> nn.Module:
        calls.append(seed)
        return model

    with pytest.raises(CapabilityError, match="labels only"):
        train_shadows(view, x, y, ShadowTrainer(digits_cnn, fit), population=population, n_shadows=4)
    shadows = ShadowModels(
        logits=torch.zeros(4, 6, 10),
        members=torch.arange(4)[:, None].expand(4, 6) < 2,
        population=population,
        population_logits=torch.zeros(4, 6, 10),
        population_members=torch.arange(4)[:, None].expand(4, 6) < 2,
    )
    with pytest.raises(CapabilityError, match="labels only"):
        loss_threshold_attack(view, x, y)
    with pytest.raises(CapabilityError, match="labels only"):
        lira(view, x, y, shadows)
    with pytest.raises(CapabilityError, match="labels only"):
        rmia(view, x, y, shadows)
    assert calls == []
    assert view.queries.total == 0 and target.queries.total == 0


def test_bad_shadow_settings_are_refused_before_any_query() -> None:
    target = TorchTarget(digits_cnn(), SPEC)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    population = LabelledData(torch.rand(6, 1, 8, 8), torch.arange(6))
    offline = ShadowModels(
        logits=torch.zeros(4, 6, 10),
        members=torch.zeros(4, 6, dtype=torch.bool),
        population=None,
        population_logits=None,
        population_members=None,
    )
    with pytest.raises(BadInputError, match="online LiRA"):
        lira(target, x, y, offline)
    with pytest.raises(BadInputError, match="population"):
        rmia(target, x, y, offline, online=False)
    with pytest.raises(BadInputError, match="population"):
        train_shadows(target, x, y, ShadowTrainer(digits_cnn, FIT), online=False)
    with pytest.raises(BadInputError, match="in some models and out of others"):
        train_shadows(target, x, y, ShadowTrainer(digits_cnn, FIT), population=population, train_size=12)
    assert target.queries.total == 0


def test_scores_from_a_probability_api_rank_like_logits(setting: Setting) -> None:
    """The same victim served as probabilities (float32, as an API returns them) gives LiRA the same
    ranking at low FPR: phi is read from the small probabilities of the other classes."""

    def serve(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return setting.victim(x).softmax(1)

    served = CallableTarget(serve, SPEC, accepts="torch")
    online = lira(served, setting.x, setting.y, setting.shadows, members=setting.members)
    reference, _ = _run(setting, lira, shadows=setting.shadows)
    assert online.tpr_at[0.001] == pytest.approx(reference.tpr_at[0.001], abs=0.011)
    assert online.auc == pytest.approx(reference.auc, abs=0.01)
    blind = lira(served, setting.x, setting.y, setting.shadows)  # no truth: scores only
    assert blind.roc is None and blind.auc is None and blind.tpr_at == {}
    assert torch.equal(blind.scores, online.scores)
