"""Fine-pruning (Liu et al. 2018) on a BadNets digits CNN, with the defender holding 270 clean test samples
and the attack measured on the other 270."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import measure_backdoor
from aisec.attacks.backdoor.triggers import PatchTrigger
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.dataset import LabelledData
from aisec.defend.supply_chain.behaviour.fine_pruning import fine_prune
from aisec.demo.models import digits_cnn

PATCH = PatchTrigger(size=3, pattern="square")


@pytest.fixture(scope="module")
def badnets(digits) -> nn.Module:
    poisoned = plant_backdoor(
        digits.train, PATCH, target_class=0, rate=0.05, generator=torch.Generator().manual_seed(1)
    )
    return fit(build_model(digits_cnn, 0), poisoned.data, seed=0)


@pytest.fixture(scope="module")
def halves(digits) -> tuple[LabelledData, LabelledData]:
    order = torch.randperm(len(digits.test), generator=torch.Generator().manual_seed(0))
    own, rest = order[:270], order[270:]
    return (
        LabelledData(digits.test.x[own], digits.test.y[own], "defender"),
        LabelledData(digits.test.x[rest], digits.test.y[rest], "evaluation"),
    )


def test_fine_pruning_weakens_the_backdoor_mostly_by_fine_tuning(badnets, halves):
    own, evaluation = halves
    before = measure_backdoor(badnets, evaluation, PATCH, 0)
    result = fine_prune(badnets, own)
    after = measure_backdoor(result.model, evaluation, PATCH, 0)
    pruned_only = measure_backdoor(fine_prune(badnets, own, fine_tune_epochs=0).model, evaluation, PATCH, 0)
    assert before.attack_success == 1.0
    assert result.layer == "2" and result.channels == 32
    assert result.fraction_pruned >= 0.3  # measured 16 of 32
    assert result.accuracy_pruned >= result.accuracy_before - 0.04  # the pruning budget held
    # The trigger excites the channels most active on clean digits too, so pruning the dormant ones leaves it
    # intact (measured ASR 1.000); fine-tuning at lr 1e-2 brings it down to 0.792.
    assert pruned_only.attack_success >= 0.95
    assert after.attack_success <= 0.9
    assert after.clean_accuracy >= before.clean_accuracy - 0.05  # measured 0.985 -> 0.959


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
