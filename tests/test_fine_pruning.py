"""Fine-pruning (Liu et al. 2018) on a BadNets digits CNN, with the defender holding 270 clean test samples
and the attack measured on the other 270."""

from __future__ import annotations

import statistics

import backdoor_victims as victims
import pytest
import torch
from backdoor_victims import badnets_victim
from seed_figures import SEEDS
from torch import nn

from aisec.attacks.backdoor.success import measure_backdoor
from aisec.core.errors import BadInputError, DataError
from aisec.data.dataset import LabelledData
from aisec.defend.supply_chain.behaviour.fine_pruning import fine_prune

pytestmark = pytest.mark.training  # its figures depend on trained models

PATCH = victims.PATCH


@pytest.fixture(scope="module")
def badnets() -> nn.Module:
    return badnets_victim(0)


@pytest.fixture(scope="module")
def halves() -> tuple[LabelledData, LabelledData]:
    return victims.halves()


def figures(seed: int) -> dict[str, float]:
    """Fine-pruning of the seed's BadNets victim (10 %, target 0) with the defender's 270 clean samples."""
    model, (own, evaluation) = badnets_victim(seed), victims.halves()
    before = measure_backdoor(model, evaluation, PATCH, 0)
    result = fine_prune(model, own, seed=seed)
    after = measure_backdoor(result.model, evaluation, PATCH, 0)
    pruned_only = measure_backdoor(fine_prune(model, own, fine_tune_epochs=0).model, evaluation, PATCH, 0)
    return {
        "success_before": before.attack_success,
        "success_pruned_only": pruned_only.attack_success,
        "success_fine_pruned": after.attack_success,
        "clean_before": before.clean_accuracy,
        "clean_fine_pruned": after.clean_accuracy,
        "fraction_pruned": result.fraction_pruned,
        "pruning_cost": result.accuracy_before - result.accuracy_pruned,
    }


def test_fine_pruning_keeps_its_budget_and_does_not_remove_these_backdoors():
    """What holds on every seed and kernel set, and what does not (docs/poisoning.md). Seed study
    (bench/seed_study.py test_fine_pruning --seeds 0-4 --threads 1, under native AVX-512, default and AVX2
    kernels, n=15): attack success before 1.000 every time; pruned 0.56-0.84 of the 32 channels at a cost of
    0.012-0.037 validation accuracy (budget 0.04); pruning alone leaves attack success at 0.61-1.00 (median
    0.996); fine-pruning ends at 0.06-0.90 (median 0.67): it weakens these backdoors by fine-tuning, by a
    different amount on every seed, and never reliably removes them; clean accuracy drops 0.00-0.04. A fresh
    environment (2026-12-04: scikit-learn 1.9.1, whose stratified split of digits the victims train on) gave
    seeds 0-2 pruning alone 0.743, 0.963, 0.694 (median 0.743) and fine-pruning 0.122, 0.335, 0.224: the
    split moves these figures, so the bound on the median is the seed study's lowest run, not its median."""
    runs = [figures(seed) for seed in SEEDS]
    for run in runs:
        assert run["success_before"] >= 0.95
        assert run["pruning_cost"] <= 0.04  # the pruning budget held
        assert run["fraction_pruned"] >= 0.5
        assert run["clean_fine_pruned"] >= run["clean_before"] - 0.05
    pruned_only = statistics.median(run["success_pruned_only"] for run in runs)
    fine_pruned = statistics.median(run["success_fine_pruned"] for run in runs)
    # The trigger excites the channels most active on clean digits too: pruning the dormant ones leaves it
    # medians of seeds 0-2: 0.967 (AVX-512), 0.984 (default), 0.967 (AVX2); 0.743 on the split of 2026-12-04
    assert pruned_only >= 0.6
    assert fine_pruned < pruned_only  # 0.620, 0.604, 0.657: fine-tuning does what little is done


def test_pruned_channels_stay_zero_and_the_input_is_untouched(badnets, halves):
    original = {k: v.clone() for k, v in badnets.state_dict().items()}
    result = fine_prune(badnets, halves[0], fine_tune_epochs=2)
    assert all(torch.equal(v, badnets.state_dict()[k]) for k, v in original.items())
    conv = result.model[2]
    assert result.pruned and set(result.pruned) <= set(range(32))
    assert (
        conv.weight[list(result.pruned)].abs().sum() == 0 and conv.bias[list(result.pruned)].abs().sum() == 0
    )
    kept = [c for c in range(32) if c not in result.pruned]
    assert conv.weight[kept].abs().sum() > 0
    assert not result.model.training


def test_layer_choice(badnets, halves):
    assert fine_prune(badnets, halves[0], layer=badnets[6], fine_tune_epochs=0).layer == "6"
    assert fine_prune(badnets, halves[0], layer="0", fine_tune_epochs=0).channels == 16
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    assert fine_prune(mlp, halves[0], fine_tune_epochs=0).layer == "1"


def test_bad_inputs(badnets, halves):
    own = halves[0]
    with pytest.raises(BadInputError, match="max_accuracy_drop"):
        fine_prune(badnets, own, max_accuracy_drop=1.5)
    with pytest.raises(BadInputError, match="fine_tune_epochs"):
        fine_prune(badnets, own, fine_tune_epochs=-1)
    with pytest.raises(BadInputError, match="lr"):
        fine_prune(badnets, own, lr=0)
    with pytest.raises(BadInputError, match="validation_fraction"):
        fine_prune(badnets, own, validation_fraction=1.0)
    with pytest.raises(BadInputError, match="named 'nope'"):
        fine_prune(badnets, own, layer="nope")
    with pytest.raises(BadInputError, match="not a Conv2d or Linear"):
        fine_prune(badnets, own, layer=nn.Linear(2, 2))
    with pytest.raises(BadInputError, match="no Conv2d and no hidden Linear"):
        fine_prune(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), own)
    nan = own.x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        fine_prune(badnets, LabelledData(nan, own.y))
    with pytest.raises(DataError, match="two classes"):
        fine_prune(badnets, LabelledData(own.x[:20], torch.zeros(20, dtype=torch.long)))
    pair = torch.cat([(own.y == 0).nonzero()[0], (own.y == 1).nonzero()[0]])
    with pytest.raises(DataError, match="leaves a part empty"):
        fine_prune(badnets, LabelledData(own.x[pair], own.y[pair]), validation_fraction=0.1)
    with pytest.raises(DataError, match="labels range"):
        fine_prune(badnets, LabelledData(own.x, own.y + 5))
