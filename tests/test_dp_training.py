"""DP-SGD through Opacus: the guarantee spent, and the accuracy it costs on digits."""

from __future__ import annotations

import pytest

from aisec.core.errors import BadInputError
from aisec.core.training import accuracy
from aisec.defend.robustness.dp_training import train_dp
from aisec.demo.models import digits_cnn


def test_dp_training_spends_its_budget_and_keeps_a_useful_model(digits):
    result = train_dp(
        digits_cnn(), digits.train, target_epsilon=4.0, epochs=20, lr=0.05, batch_size=128, seed=0
    )
    assert 3.5 <= result.epsilon <= 4.0 + 1e-6  # the accountant spends up to the target, not past it
    assert result.delta < 1 / len(digits.train)
    assert accuracy(result.model, digits.test) > 0.85  # measured 0.937 (non-private: 0.989)


def test_bad_settings(digits):
    with pytest.raises(BadInputError, match="target_epsilon"):
        train_dp(digits_cnn(), digits.train, target_epsilon=0)
    with pytest.raises(BadInputError, match="delta"):
        train_dp(digits_cnn(), digits.train, target_epsilon=1, delta=0.5)
