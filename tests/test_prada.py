"""PRADA on the digits CNN: benign clients stream natural digits, attackers stream perturbation-based
synthetic queries (Papernot-style augmentation of a few seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aisec.core.errors import BadInputError
from aisec.defend.robustness.prada import PradaDetector, replay


@pytest.fixture(scope="module")
def pool(digits) -> np.ndarray:
    return torch.cat([digits.train.x, digits.test.x]).numpy()


def _answers(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).argmax(1).numpy()


def _synthetic(pool: np.ndarray, seed: int, n: int = 500, step: float = 0.1) -> np.ndarray:
    """10 natural seeds, then each query a seed or earlier query moved by +-step in every pixel."""
    rng = np.random.default_rng(seed)
    queries = list(pool[rng.permutation(len(pool))[:10]])
    while len(queries) < n:
        base = queries[rng.integers(len(queries))]
        queries.append(
            np.clip(base + step * np.sign(rng.standard_normal(base.shape)), 0, 1).astype(np.float32)
        )
    return np.stack(queries)


def test_benign_clients_raise_no_alarm(digits_model, pool):
    alarms = []
    for client in range(10):
        stream = pool[np.random.default_rng(100 + client).permutation(len(pool))[:500]]
        alarms.append(replay(stream, _answers(digits_model, stream)))
    assert alarms == [None] * 10


def test_synthetic_extraction_is_caught_early(digits_model, pool):
    caught = []
    for attacker in range(10):
        stream = _synthetic(pool, attacker)
        caught.append(replay(stream, _answers(digits_model, stream)))
    detected = [c for c in caught if c is not None]
    assert len(detected) >= 8, caught  # measured: 9 of 10
    assert np.median(detected) <= 150, caught  # measured: at the first test, ~110 queries


def test_uniform_noise_is_a_known_blind_spot(digits_model):
    stream = np.random.default_rng(0).uniform(0, 1, (400, 1, 8, 8)).astype(np.float32)
    assert replay(stream, _answers(digits_model, stream)) is None


def test_bad_settings():
    with pytest.raises(BadInputError):
        PradaDetector(delta=1.5)
    with pytest.raises(BadInputError):
        PradaDetector(min_queries=2)
    with pytest.raises(BadInputError):
        replay(np.zeros((3, 2)), np.zeros(2))
