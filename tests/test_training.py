"""The one training loop (aisec.core.training) and its seeding (aisec.core.seeding)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model, global_rng
from aisec.core.training import PrivateTraining, TrainingConfig, accuracy, evaluating, fit, train
from aisec.data.dataset import LabelledData
from aisec.demo.models import digits_cnn

pytestmark = pytest.mark.training  # its figures depend on trained models

SMALL = TrainingConfig(epochs=2, batch_size=32)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def small(digits) -> LabelledData:
    return digits.train.subset(300, seed=0)


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_build_model_draws_the_same_weights_whatever_ran_before() -> None:
    first = build_model(digits_cnn, 7)
    torch.rand(1000)  # the global generator moves; the built model must not
    second = build_model(digits_cnn, 7)
    assert torch.equal(_weights(first), _weights(second))
    assert not torch.equal(_weights(first), _weights(build_model(digits_cnn, 8)))


def test_library_training_leaves_the_global_generator_as_it_found_it(small) -> None:
    state = torch.get_rng_state()
    fit(build_model(_mlp, 0), small, seed=0, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    with global_rng(3):
        torch.rand(10)
    assert torch.equal(torch.get_rng_state(), state)


def test_same_seed_same_model_with_dropout(small) -> None:
    """Dropout masks come from torch's global generator: the loop seeds it from the generator, so two runs
    agree bit for bit and another seed differs."""
    runs = [_weights(fit(build_model(_mlp, 0), small, seed=s, epochs=2)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_the_batch_step_makes_every_batch_and_its_loss(small) -> None:
    """The hook sees every batch in training mode and its loss is what is minimised: a step that adds
    Gaussian noise from the loop's generator (noise training) is reproducible."""
    seen: list[int] = []

    def noised(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        assert model.training
        seen.append(len(x))
        noisy = x + 0.1 * torch.randn(x.shape, generator=generator)
        return nn.functional.cross_entropy(model(noisy), y)

    models = [
        train(
            build_model(_mlp, 0), small, SMALL, generator=torch.Generator().manual_seed(5), step=noised
        ).model
        for _ in range(2)
    ]
    assert sum(seen) == 2 * SMALL.epochs * len(small) and max(seen) == SMALL.batch_size
    assert torch.equal(_weights(models[0]), _weights(models[1]))
    assert not models[0].training


def test_only_the_given_parameters_move_and_epoch_end_runs_each_epoch(small) -> None:
    model = build_model(_mlp, 0)
    first_before, last_before = model[1].weight.clone(), model[4].weight.clone()
    epochs: list[int] = []
    train(model, small, SMALL, generator=torch.Generator().manual_seed(0), parameters=model[4].parameters(),
          epoch_end=lambda epoch, m: epochs.append(epoch))  # fmt: skip
    assert torch.equal(model[1].weight, first_before)
    assert not torch.equal(model[4].weight, last_before)
    assert epochs == [0, 1]


def test_soft_labels_train_a_copy(small) -> None:
    """A surrogate trains on a victim's probabilities (model extraction)."""
    victim = fit(build_model(_mlp, 0), small, seed=0, epochs=20)
    with torch.no_grad():
        answers = victim(small.x).softmax(1)
    copy = train(build_model(_mlp, 1), LabelledData(small.x, answers.argmax(1), "labels"), SMALL,
                 generator=torch.Generator().manual_seed(0)).model  # fmt: skip
    soft = train(build_model(_mlp, 1), _Soft(small.x, answers), TrainingConfig(epochs=20),
                 generator=torch.Generator().manual_seed(0)).model  # fmt: skip
    agreement = float((soft(small.x).argmax(1) == answers.argmax(1)).float().mean())
    assert agreement > 0.8  # measured 0.97
    assert accuracy(copy, small) > 0.1


class _Soft:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


def test_private_training_accounts_for_what_it_spent(small) -> None:
    result = train(build_model(_mlp, 0), small, TrainingConfig(epochs=3, batch_size=50, optimizer="sgd", lr=0.1),
                   generator=torch.Generator().manual_seed(0), private=PrivateTraining(noise_multiplier=1.0))  # fmt: skip
    again = train(build_model(_mlp, 0), small, TrainingConfig(epochs=3, batch_size=50, optimizer="sgd", lr=0.1),
                  generator=torch.Generator().manual_seed(0), private=PrivateTraining(noise_multiplier=1.0))  # fmt: skip
    assert result.sample_rate == pytest.approx(1 / 6)
    assert result.delta == pytest.approx(1 / 3000)
    assert result.epsilon is not None and 0 < result.epsilon < 20
    assert torch.equal(_weights(result.model), _weights(again.model))  # Poisson batches and noise are seeded
    assert type(result.model) is nn.Sequential  # the model itself, not Opacus's wrapper


def test_bad_input_fails_before_any_step(small) -> None:
    generator = torch.Generator().manual_seed(0)
    nan = LabelledData(small.x.clone(), small.y, "nan")
    nan.x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="nan: inputs contain NaN"):
        train(build_model(_mlp, 0), nan, generator=generator)
    with pytest.raises(DataError, match="labels range up to 10"):
        train(
            build_model(_mlp, 0),
            LabelledData(small.x, small.y.clamp(max=9) + 1, "shifted"),
            generator=generator,
        )
    with pytest.raises(DataError, match="cannot take inputs of shape"):
        train(build_model(_mlp, 0), LabelledData(small.x[:, :, :4], small.y, "cut"), generator=generator)
    with pytest.raises(BadInputError, match="batch_size 400 exceeds the 300 samples"):
        train(build_model(_mlp, 0), small, TrainingConfig(batch_size=400), generator=generator,
              private=PrivateTraining(1.0))  # fmt: skip
    with pytest.raises(BadInputError, match="epochs >= 1"):
        train(build_model(_mlp, 0), small, TrainingConfig(epochs=0), generator=generator)


def test_evaluating_restores_the_mode_and_accuracy_counts_right_answers(small) -> None:
    model = build_model(_mlp, 0).train()
    with evaluating(model):
        assert not model.training
    assert model.training
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0) == 3)
    assert accuracy(constant, small) == pytest.approx(float((small.y == 3).float().mean()))
