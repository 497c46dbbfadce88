"""PRADA on the digits CNN: benign clients stream natural digits, attackers stream perturbation-based
synthetic queries (Papernot-style augmentation of a few seeds, and T-RND-style noise around a few seeds); the
settings a service runs it with (a window of distances, a test every n queries, bounded growing sets) against
the paper's."""

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


def _noisy_seeds(pool: np.ndarray, seed: int, n: int = 2000, sigma: float = 0.1) -> np.ndarray:
    """T-RND-style (Juuti et al.): 10 natural seeds, then each query one of them plus N(0, sigma^2) noise."""
    rng = np.random.default_rng(seed)
    seeds = pool[rng.permutation(len(pool))[:10]]
    noisy = seeds[rng.integers(10, size=n - 10)] + sigma * rng.standard_normal((n - 10, *seeds.shape[1:]))
    return np.clip(np.concatenate([seeds, noisy]), 0, 1).astype(np.float32)


SERVICE = {"window": 1000, "test_every": 10, "max_growing": 500}


def _alarm(stream: np.ndarray, answers: np.ndarray, **settings: int) -> int | None:
    detector = PradaDetector(**settings)
    detector.observe_batch(stream, answers)
    return detector.alarm_at


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


def test_service_settings_catch_what_the_defaults_catch(digits_model, pool):
    """Ten attackers of each kind (2000 queries) and ten natural clients (1500 queries, all distinct): with
    window=1000, test_every=10, max_growing=500 the alarms fall at the same queries as the paper's settings
    (the first test: 105-108 queries for the sign steps, 104-108 for the noisy seeds; the one sign-step
    attacker the defaults miss is missed too) and no natural client is flagged. Cost on 10,000 uniform queries
    (no alarm, one thread, a shared 2-core machine): 15-31 us a query against 155-250 us with the defaults,
    whose test runs at every query over all distances."""
    paper, service, natural = [], [], []
    for attacker in range(10):
        for stream in (_synthetic(pool, attacker, n=2000), _noisy_seeds(pool, attacker)):
            answers = _answers(digits_model, stream)
            paper.append(_alarm(stream, answers))
            service.append(_alarm(stream, answers, **SERVICE))
        stream = pool[np.random.default_rng(100 + attacker).permutation(len(pool))[:1500]]
        natural.append(_alarm(stream, _answers(digits_model, stream), **SERVICE))
    assert service == paper, (service, paper)
    caught = [a for a in service if a is not None]
    assert len(caught) >= 18 and max(caught) <= 120, service  # measured: 19 of 20, at 104-108
    assert natural == [None] * 10


@pytest.mark.slow
def test_a_natural_warm_up_hides_an_attack_the_window_then_finds(digits_model, pool):
    """Known blind spot: a client that first sends 1500 natural queries, then 3000 noisy-seed queries, keeps
    W above delta: over all its distances (the defaults) measured 1 of 10 clients caught (2721 queries into
    the attack); over the last 1000 distances 2 of 10 (650 and 820 queries into it)."""
    caught = {"default": 0, "window": 0}
    for client in range(10):
        warm = pool[np.random.default_rng(100 + client).permutation(len(pool))[:1500]]
        stream = np.concatenate([warm, _noisy_seeds(pool, client, n=3000)])
        answers = _answers(digits_model, stream)
        caught["default"] += _alarm(stream, answers) is not None
        caught["window"] += _alarm(stream, answers, **SERVICE) is not None
    assert caught["default"] <= 3 and caught["window"] >= caught["default"], caught


def test_a_batch_is_observed_in_order_with_bounded_memory():
    rng = np.random.default_rng(0)
    rows, answers = rng.uniform(0, 1, (700, 16)), rng.integers(0, 3, 700)
    one, batch = PradaDetector(**SERVICE), PradaDetector(**SERVICE)
    for x, label in zip(rows, answers, strict=True):
        one.observe(x, int(label))
    batch.observe_batch(rows[:250], answers[:250])
    batch.observe_batch(rows[250:], answers[250:])
    assert (one.alarm_at, one.last_w) == (batch.alarm_at, batch.last_w)
    bounded = PradaDetector(window=100, max_growing=5)
    bounded.observe_batch(rows, answers)
    assert len(bounded.distances) == 100
    assert all(state.growing.count <= 5 for state in bounded._classes.values())


def test_bad_settings():
    with pytest.raises(BadInputError):
        PradaDetector(delta=1.5)
    with pytest.raises(BadInputError):
        PradaDetector(min_queries=2)
    with pytest.raises(BadInputError):
        replay(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(BadInputError, match="window"):
        PradaDetector(min_queries=100, window=50)
    with pytest.raises(BadInputError, match="test_every"):
        PradaDetector(test_every=0)
    with pytest.raises(BadInputError, match="max_growing"):
        PradaDetector(max_growing=0)
    with pytest.raises(BadInputError, match="integer answers"):
        PradaDetector().observe_batch(np.zeros((3, 2)), np.zeros(3))
