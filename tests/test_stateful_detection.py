"""Stateful detection (Chen, Carlini & Wagner 2020) on the digits CNN: the query streams that Square and
HopSkipJump send while attacking one image, as one client would, against natural clients' streams.

The attacks query the model through a CallableTarget that records every batch it is sent; each attacked image
is one client's stream, fed to a fresh detector whose threshold is calibrated on the digits training split.
Natural clients replay the test split (540 images): each client a seeded permutation of all of it (no image
twice within a client; the disjoint 54-image slices of ten clients would barely fill a buffer of k = 50), and
a variant in which a client resends an earlier image after 10 % of its queries.
"""

from __future__ import annotations

import statistics
from typing import Literal

import numpy as np
import pytest
import torch
from seed_figures import SEEDS
from torch import nn

from aisec.attacks.evasion.hopskipjump import HSJConfig, hopskipjump
from aisec.attacks.evasion.square import SquareConfig, square
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.defend.robustness.stateful_detection import StatefulConfig, StatefulDetector, calibrate_threshold
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.callable_target import CallableTarget

K = 50
BUDGET = 500  # queries per attacked image
IMAGES = 5  # attacked images per seed: test images 5 * seed ... 5 * seed + 4
CLIENTS = 10


def _recorded(
    model: nn.Module, returns: Literal["scores", "labels"]
) -> tuple[CallableTarget, list[np.ndarray]]:
    """The model behind a function that keeps every batch it is sent."""
    log: list[np.ndarray] = []

    def answer(x: np.ndarray) -> np.ndarray:
        log.append(x.copy())
        with torch.no_grad():
            p = torch.softmax(model(torch.as_tensor(x)), 1).numpy()
        return p if returns == "scores" else p.argmax(1)

    return CallableTarget(answer, InputSpec((1, 8, 8), 10), returns=returns), log


def attack_streams(model: nn.Module, data: Split, seed: int) -> dict[str, list[np.ndarray]]:
    """Per attack, the query stream of each attacked image (Square L-inf eps 0.1 with scores; HopSkipJump
    minimal L2 with labels; BUDGET queries each)."""
    streams: dict[str, list[np.ndarray]] = {"square": [], "hopskipjump": []}
    for i in range(IMAGES * seed, IMAGES * (seed + 1)):
        x, y = data.test.x[i : i + 1], data.test.y[i : i + 1]
        target, log = _recorded(model, "scores")
        square(
            target, x, y, SquareConfig(eps=0.1, queries=BUDGET), generator=torch.Generator().manual_seed(seed)
        )
        streams["square"].append(np.concatenate(log))
        target, log = _recorded(model, "labels")
        hopskipjump(
            target, x, y, HSJConfig(max_queries=BUDGET), generator=torch.Generator().manual_seed(seed)
        )
        streams["hopskipjump"].append(np.concatenate(log))
    return streams


def natural_streams(data: Split, seed: int, resend: float = 0.0) -> list[np.ndarray]:
    """CLIENTS streams, each a seeded permutation of the test split; with `resend`, after each query the
    client sends one of its earlier queries again with that probability."""
    test = data.test.x.numpy()
    streams = []
    for client in range(CLIENTS):
        rng = np.random.default_rng(1000 * seed + client)
        sent: list[np.ndarray] = []
        for image in test[rng.permutation(len(test))]:
            sent.append(image)
            if rng.random() < resend:
                sent.append(sent[int(rng.integers(len(sent)))])
        streams.append(np.stack(sent))
    return streams


def extraction_streams(data: Split, seed: int, n: int = 2000) -> dict[str, list[np.ndarray]]:
    """Five clients each of synthetic extraction queries: from 10 natural seeds, steps of +-0.1 in every
    pixel from a seed or an earlier query (Papernot-style, as tests/test_prada.py), a seed plus N(0, 0.1^2)
    noise (T-RND-style), and uniform noise."""
    test = data.test.x.numpy()
    streams: dict[str, list[np.ndarray]] = {"sign_steps": [], "noisy_seeds": [], "uniform": []}
    for client in range(5):
        rng = np.random.default_rng(1000 * seed + client)
        seeds = test[rng.permutation(len(test))[:10]]
        walk = list(seeds)
        while len(walk) < n:
            walk.append(
                np.clip(walk[int(rng.integers(len(walk)))] + 0.1 * rng.choice([-1.0, 1.0], (1, 8, 8)), 0, 1)
            )
        streams["sign_steps"].append(np.stack(walk))
        noisy = seeds[rng.integers(10, size=n - 10)] + 0.1 * rng.standard_normal((n - 10, 1, 8, 8))
        streams["noisy_seeds"].append(np.clip(np.concatenate([seeds, noisy]), 0, 1))
        streams["uniform"].append(rng.uniform(0, 1, (n, 1, 8, 8)))
    return streams


def _run(stream: np.ndarray, threshold: float) -> StatefulDetector:
    detector = StatefulDetector(StatefulConfig(threshold=threshold, k=K))
    detector.observe(stream)
    return detector


def figures(seed: int, model: nn.Module | None = None) -> dict[str, float]:
    """Queries to first detection per attack (median, max over the images attacked long enough to be judged,
    i.e. more than K queries), the runs the attack finished within K queries, and the natural clients'
    per-query false-positive rate and clients flagged, at fpr 0.001 and 0.01."""
    data = load_builtin("digits", seed=0)
    if model is None:
        model = fit(build_model(digits_cnn, seed), data.train, seed=seed)
    attacks = attack_streams(model, data, seed)
    train = data.train.x.numpy()
    out: dict[str, float] = {}
    for fpr in (0.001, 0.01):
        threshold = calibrate_threshold(train, K, fpr)
        for name, streams in attacks.items():
            judged = [_run(s, threshold) for s in streams if len(s) > K]
            first = [d.first_detection_at or np.inf for d in judged]
            out[f"{name}_first_median@{fpr}"] = float(statistics.median(first))
            out[f"{name}_first_max@{fpr}"] = float(max(first))
            out[f"{name}_detections_min@{fpr}"] = float(min(d.detections for d in judged))
            out[f"{name}_short_runs"] = float(len(streams) - len(judged))
        for name, streams in extraction_streams(data, seed).items():
            detectors = [_run(s, threshold) for s in streams]
            first = [d.first_detection_at or np.inf for d in detectors]
            out[f"{name}_first_median@{fpr}"] = float(statistics.median(first))
            out[f"{name}_first_max@{fpr}"] = float(max(first))
            out[f"{name}_detected@{fpr}"] = float(sum(d.detections > 0 for d in detectors))
        for label, resend in (("natural", 0.0), ("resending", 0.1)):
            clients = [_run(s, threshold) for s in natural_streams(data, seed, resend)]
            out[f"{label}_query_fpr@{fpr}"] = sum(d.detections for d in clients) / sum(
                d.queries for d in clients
            )
            out[f"{label}_clients_flagged@{fpr}"] = float(sum(d.detections > 0 for d in clients))
    return out


@pytest.fixture(scope="module")
def runs(digits_model) -> list[dict[str, float]]:
    return [figures(seed, digits_model) for seed in SEEDS]


def test_attacks_are_caught_at_the_first_query_judged(runs):
    """A query is judged once the buffer holds K of the client's queries, and every attacked image's stream
    was flagged at the first query judged. Measured (seeds 0-2 on the session's CNN, 5 images each, and
    bench/seed_study.py test_stateful_detection --seeds 0-4 with a CNN trained per seed, native and default
    kernels, n=10): first detection at query 51 in every run of both attacks at both fprs (median = max = 51);
    HopSkipJump's 500 queries gave 9 detections each (the buffer is cleared after each), Square's 1-9; 0-1 of
    5 Square runs per seed fooled the model within 50 queries and were never judged."""
    for run in runs:
        for fpr in (0.001, 0.01):
            for attack in ("square", "hopskipjump"):
                assert run[f"{attack}_first_max@{fpr}"] <= K + 5, run
            assert run[f"hopskipjump_detections_min@{fpr}"] >= 5, run
        assert run["hopskipjump_short_runs"] == 0, run


def test_extraction_by_perturbing_seeds_is_caught_and_uniform_noise_is_not(runs):
    """Synthetic extraction queries near a few seeds are close to each other too. Measured
    (bench/seed_study.py test_stateful_detection --seeds 0-4, 5 clients of 2000 queries per seed, at both
    fprs): every client caught; sign steps at a median of 279-661 queries per seed, at most 427-796; noisy
    seeds at a median of 274-323, at most 299-360; uniform noise never (its queries are far apart: the
    coverage monitor's case)."""
    for run in runs:
        for fpr in (0.001, 0.01):
            assert run[f"noisy_seeds_detected@{fpr}"] == 5 and run[f"noisy_seeds_first_max@{fpr}"] <= 600, run
            assert run[f"sign_steps_detected@{fpr}"] >= 4 and run[f"sign_steps_first_median@{fpr}"] <= 1000, (
                run
            )
            assert run[f"uniform_detected@{fpr}"] == 0, run


def test_natural_clients_are_not_flagged(runs):
    """Ten natural clients per seed, 540 queries each: none flagged at fpr 0.01 (per-query rate 0 over
    10 x 490 judged queries; their smallest mean 50-NN distance, 1.37, is above the threshold 1.16), nor when
    they resend an earlier image after 10 % of their queries (measured 0 of 10 per seed)."""
    for run in runs:
        for fpr in (0.001, 0.01):
            assert run[f"natural_clients_flagged@{fpr}"] == 0, run
            assert run[f"natural_query_fpr@{fpr}"] <= 0.001, run
            assert run[f"resending_clients_flagged@{fpr}"] <= 1, run


def test_a_batch_is_judged_as_its_queries_one_at_a_time():
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 0.05, (300, 6)), axis=0)  # close queries: detections and clearing
    config = StatefulConfig(threshold=0.3, k=5, buffer_size=40)  # the ring wraps
    whole, single = StatefulDetector(config), StatefulDetector(config)
    flags = np.concatenate([whole.observe(walk[:7]), whole.observe(walk[7:])])
    one_by_one = np.concatenate([single.observe(row[None]) for row in walk])
    assert flags.tolist() == one_by_one.tolist()
    assert whole.detections == single.detections == int(flags.sum()) > 1
    assert whole.first_detection_at == int(np.argmax(flags)) + 1


def test_flags_match_a_direct_computation():
    """The ring buffer and the clearing against a plain recomputation over the kept history."""
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(0, 0.05, (60, 4))])
    config = StatefulConfig(threshold=0.5, k=3, buffer_size=25)
    flags = StatefulDetector(config).observe(rows)
    kept: list[np.ndarray] = []
    expected = []
    for row in rows:
        flag = False
        if len(kept) >= config.k:
            nearest = np.sort(np.linalg.norm(np.stack(kept[-config.buffer_size :]) - row, axis=1))[: config.k]
            flag = bool(nearest.mean() < config.threshold)
        expected.append(flag)
        kept = [] if flag else kept
        kept.append(row)
    assert flags.tolist() == expected
    assert any(expected[60:]) and not any(expected[:60])


def test_calibration_is_the_quantile_of_leave_one_out_neighbour_distances():
    x = np.random.default_rng(2).normal(size=(200, 5))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    means = np.sort(d, axis=1)[:, :7].mean(axis=1)
    assert calibrate_threshold(x, 7, 0.05, chunk=64) == pytest.approx(np.quantile(means, 0.05))


def test_an_encoder_is_applied_to_every_query():
    halves: list[int] = []

    def first_half(rows: np.ndarray) -> np.ndarray:
        halves.append(len(rows))
        return rows.reshape(len(rows), -1)[:, :2]

    rows = np.random.default_rng(3).normal(size=(30, 4))
    rows[10:, :2] = rows[9, :2]  # identical in the encoder's space, far apart in the input's
    detector = StatefulDetector(StatefulConfig(threshold=1e-6, k=2), encode=first_half)
    assert np.flatnonzero(detector.observe(rows)).tolist()[:2] == [11, 13]  # cleared after each detection
    assert halves == [30]
    assert calibrate_threshold(rows[:10], 2, 0.5, encode=first_half) > 0


def test_bad_input_is_named():
    with pytest.raises(BadInputError, match="threshold"):
        StatefulConfig(threshold=0.0)
    with pytest.raises(BadInputError, match="buffer_size"):
        StatefulConfig(threshold=1.0, k=10, buffer_size=5)
    with pytest.raises(BadInputError, match="fpr"):
        calibrate_threshold(np.zeros((5, 2)), 2, 0.0)
    with pytest.raises(BadInputError, match="k must be"):
        calibrate_threshold(np.zeros((5, 2)), 5, 0.1)
    detector = StatefulDetector(StatefulConfig(threshold=1.0, k=1))
    detector.observe(np.zeros((2, 3)))
    with pytest.raises(BadInputError, match="size 4"):
        detector.observe(np.zeros((1, 4)))
    with pytest.raises(BadInputError, match="NaN"):
        detector.observe(np.full((1, 3), np.nan))
    with pytest.raises(BadInputError, match="encoder returned"):
        StatefulDetector(StatefulConfig(threshold=1.0), encode=lambda r: r[:1]).observe(np.zeros((2, 3)))
