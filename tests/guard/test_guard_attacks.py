"""The guard attacked over HTTP by aisec's own red team (issue 16, "Proven by attacking it").

Set-up. The session's digits CNN behind the guard (guard_setup.py), served by uvicorn in a thread on loopback
so that the tests read `guard.monitors.figures`. Every attacker holds API keys of its own and reaches the guard
through aisec's HttpTarget, BATCH rows a request. The monitors run at their defaults, calibrated on the
training split (`natural.npz`): PRADA (delta 0.92, tested every 10 queries once 100 distances are held),
stateful detection (k = 50 nearest of the last 1,000 queries, threshold at a 0.1 % false-positive rate on
natural digits) and coverage (50 k-means cells; alarm when more than half of the last 200 queries, after 100,
lie off the manifold). Two policies:

* MONITOR blocks a client at its first alarm (`escalate: false, action: block`): no benign client raised any
  alarm, so the first one can act, and extraction gets no further;
* LADDER is the guard's escalation (`escalate: true, escalate_every: 100`: the first alarm slows the client; each
  further alarm, and each 100 rows it goes on sending, one step more: labels only, then block), read from the audit log: what the guard did
  to each request. Its attacker is persistent: when the guard withdraws the scores it goes on with the labels as
  one-hot scores (`LabelsAsScores`), until it is blocked. slow_down_s is 0.01 s to keep the runs short: at the
  default 1 s, each slowed request costs the client a second (whatever its rows).

Attackers' natural data come from the test split (540 digits): the 50 seed images of perturbation-based
extraction (a random draw per seed), the whole pool of the natural-data (Knockoff) attacker, the images Square
and HopSkipJump attack, and the benign clients' streams. Agreement is measured on the training split (1,257
natural digits no attacker sent), with the copy the same attack makes against the bare model (full scores, no
guard) at the number of queries the guard answered: the best copy an attacker who knew where it would be
stopped could hold.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import numpy as np
import pytest
import torch
from guard_setup import serving, write_guard
from torch import nn

from aisec.attacks.evasion.hopskipjump import HSJConfig, hopskipjump
from aisec.attacks.evasion.square import SquareConfig, square
from aisec.attacks.extraction.learning import LearningConfig, extract_surrogate
from aisec.attacks.extraction.metrics import agreement
from aisec.attacks.extraction.result import ExtractionResult
from aisec.data.builtin import Split
from aisec.defend.auditability.audit_log.entry import decode_entry
from aisec.defend.auditability.audit_log.log import AuditLog
from aisec.guard.app import create_app
from aisec.guard.config import load_config
from aisec.guard.keys import add_key
from aisec.guard.pipeline import Guard
from aisec.guard.service import build_guard
from aisec.targets.base import Access, InputSpec, Target
from aisec.targets.http_target import HttpTarget, ServiceRefused
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import scores_only

pytestmark = pytest.mark.training  # the session's digits CNN answers, attacks train surrogates

SPEC = InputSpec((1, 8, 8), 10)
SEEDS = (0, 1, 2)
BATCH = 10  # rows per request: the granularity at which the guard can stop a client
BUDGET = 2000  # the extraction attacker's plan (it asks for this many queries)
SEED_IMAGES = 50  # natural digits a perturbation-based attacker starts from
TARGET_AGREEMENT = 0.8
MONITOR: dict[str, Any] = {
    "reference": "natural.npz",
    "prada": {},
    "stateful": {},
    "coverage": {},
    "action": "block",
    "escalate": False,
}
LADDER: dict[str, Any] = {
    "reference": "natural.npz",
    "prada": {},
    "stateful": {},
    "coverage": {},
    "escalate": True,
    "escalate_every": 100,
    "slow_down_s": 0.01,
}
STRATEGIES = {
    "synthetic": LearningConfig(source="synthetic"),
    "jacobian": LearningConfig(source="perturbation"),
    "random": LearningConfig(source="perturbation", perturbation="random"),
    "active": LearningConfig(source="active"),
    "natural": LearningConfig(source="natural"),
}
SYNTHETIC = ("synthetic", "jacobian", "random", "active")
SQUARE = SquareConfig(eps=0.1, queries=500)
HSJ = HSJConfig(max_queries=500)
HSJ_BATCH = 100  # HopSkipJump sends its probes 100 at a time (init_evals)
CLIENTS = 10
RATE = 10.0  # a benign client's mean requests per second (Poisson arrivals), within the limit below
BENIGN_LIMITS = {"requests_per_second": 20, "burst": 40, "rows_per_day": 100_000}  # the example


@dataclass
class Served:
    """A guard in front of `model` answering on `url`, its key file, and a key per client made on demand."""

    guard: Guard
    model: nn.Module
    url: str
    folder: Path
    persistent: list[httpx.Client] = field(default_factory=list)

    def client(
        self,
        name: str,
        *,
        tier: str = "default",
        batch_size: int = BATCH,
        persistent: bool = False,
        **kwargs: Any,
    ) -> HttpTarget:
        """A new key `name` of `tier` ("basic": labels only), and aisec's HTTP target holding it; `persistent`:
        through a client that turns labels-only answers into one-hot scores (LabelsAsScores)."""
        token = add_key(self.folder / "keys.json", name, tier=tier)
        returns: Literal["scores", "labels"] = "labels" if tier == "basic" else "scores"
        headers = {"Authorization": f"Bearer {token}"}
        if persistent:
            self.persistent.append(httpx.Client(transport=LabelsAsScores()))
            kwargs["client"] = self.persistent[-1]
        return HttpTarget(
            f"{self.url}/v1/predict", SPEC, headers=headers, batch_size=batch_size, returns=returns, **kwargs
        )

    def alarms(self, name: str) -> list[tuple[str, int]]:
        """The client's alarms (detector, query index), in query order."""
        assert self.guard.monitors is not None
        raised = cast(list[tuple[str, int]], self.guard.monitors.figures(name)["alarms"])
        return sorted(raised, key=lambda alarm: alarm[1])


@contextmanager
def guarded(
    folder: Path, model: nn.Module, digits: Split, monitor: dict[str, Any] = MONITOR, **sections: Any
) -> Iterator[Served]:
    """The guard in front of `model`, configured in `folder` with `monitor` (and any other sections)."""
    folder.mkdir(parents=True, exist_ok=True)
    path, _ = write_guard(folder, model, digits, monitor=monitor, **sections)
    guard = build_guard(load_config(path))
    with serving(create_app(guard)) as url:
        served = Served(guard, model, url, folder)
        try:
            yield served
        finally:
            for client in served.persistent:
                client.close()


class LabelsAsScores(httpx.HTTPTransport):
    """A persistent attacker's HTTP client: an answer that holds labels but no scores (the guard has limited
    the key to labels) is handed on with the labels as one-hot scores, so the attack goes on."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code != 200:
            return response
        body = json.loads(response.read())
        if "scores" in body or "labels" not in body:
            return response
        body["scores"] = np.eye(SPEC.num_classes)[body["labels"]].tolist()
        return httpx.Response(200, json=body, request=request)


def steps_taken(folder: Path, name: str) -> dict[str, int]:
    """From the audit log of the guard configured in `folder` (read once it has stopped): for each action it
    took on key `name` (slow, labels_only, block), the rows it had answered the key before the first request
    the action applied to."""
    with AuditLog.open(folder / "audit.db") as log:
        entries = [decode_entry(bytes(e.content)) for e in log.store.entries(0, log.size)]
    steps: dict[str, int] = {}
    answered = 0
    for entry in entries:
        if entry["key"] != name:
            continue
        action = "block" if entry["status"] == 403 else entry.get("action")
        if action is not None:
            steps.setdefault(action, answered)
        if entry["status"] == 200:
            answered += entry["rows"]
    return steps


def attacker_data(strategy: str, digits: Split, seed: int) -> torch.Tensor | None:
    """The attacker's natural data: the test split (natural), SEED_IMAGES of it (perturbation), none else."""
    if strategy == "natural":
        return digits.test.x
    if STRATEGIES[strategy].source == "perturbation":
        order = torch.randperm(len(digits.test.x), generator=torch.Generator().manual_seed(seed))
        return digits.test.x[order[:SEED_IMAGES]]
    return None


def extract(target: Target, strategy: str, budget: int, digits: Split, seed: int) -> ExtractionResult:
    return extract_surrogate(
        target,
        budget,
        STRATEGIES[strategy],
        data=attacker_data(strategy, digits, seed),
        generator=torch.Generator().manual_seed(seed),
    )


def bare_agreement(model: nn.Module, strategy: str, budget: int, digits: Split, seed: int) -> float:
    """Agreement on the training split of the copy the attack makes with `budget` queries of the bare model."""
    bare = TorchTarget(model, SPEC)
    return agreement(extract(scores_only(bare), strategy, budget, digits, seed), bare, digits.train.x)


def extraction_through(
    served: Served, strategy: str, seed: int, digits: Split, name: str, *, persistent: bool = False
) -> dict[str, Any]:
    """One client's extraction of BUDGET queries through the guard: the status that stopped it (None: it spent
    its budget), the rows answered, and the alarms the guard raised."""
    status = None
    with served.client(name, persistent=persistent) as target:
        try:
            extract(target, strategy, BUDGET, digits, seed)
            answered = BUDGET
        except ServiceRefused as refused:
            status, answered = refused.status, refused.answered
    return {"status": status, "answered": answered, "alarms": served.alarms(name)}


def evasion_through(
    served: Served, attack: str, image: int, seed: int, digits: Split, name: str, *, persistent: bool = False
) -> dict[str, Any]:
    """Square (L-inf 0.1, scores) or HopSkipJump (minimal L2, labels) on one test image by one client of its own:
    the status that stopped it, the queries answered, whether it fooled the model before, and the alarms."""
    x, y = digits.test.x[image : image + 1], digits.test.y[image : image + 1]
    generator = torch.Generator().manual_seed(seed)
    status, fooled = None, False
    tier, batch = ("default", 1) if attack == "square" else ("basic", HSJ_BATCH)
    with served.client(name, tier=tier, batch_size=batch, persistent=persistent) as target:
        try:
            if attack == "square":
                result = square(target, x, y, SQUARE, generator=generator)
            else:
                result = hopskipjump(target, x, y, HSJ, generator=generator)
            fooled, answered = bool(result.success[0]), target.queries.total
        except ServiceRefused as refused:
            status, answered = refused.status, refused.answered
    return {"status": status, "answered": answered, "fooled": fooled, "alarms": served.alarms(name)}


def benign_clients(
    served: Served, digits: Split, seeds: tuple[int, ...], clients: int = CLIENTS
) -> list[dict[str, Any]]:
    """`clients` natural clients per seed, all at once, each replaying the whole test split in an order of its
    own (a seeded permutation: no image twice, as distinct customers' images are not exact copies of each
    other) in requests of 1-16 rows at Poisson arrivals of RATE requests per second; per client, its seed, the
    rows answered, its alarms and the status that stopped it (None: never refused)."""
    x = digits.test.x
    streams = [(seed, client) for seed in seeds for client in range(clients)]
    names = [f"benign-{seed}-{client}" for seed, client in streams]
    targets = [served.client(name, batch_size=16) for name in names]  # keys made one at a time

    def one(index: int) -> dict[str, Any]:
        seed, client = streams[index]
        rng = np.random.default_rng(1000 * seed + client)
        order = torch.from_numpy(rng.permutation(len(x)))
        status, start = None, 0
        with targets[index] as target:
            try:
                while start < len(x):
                    time.sleep(rng.exponential(1 / RATE))
                    size = int(rng.integers(1, 17))
                    target.probabilities(x[order[start : start + size]])
                    start += size
            except ServiceRefused as refused:
                status = refused.status
        return {
            "seed": seed,
            "status": status,
            "rows": min(start, len(x)),
            "alarms": served.alarms(names[index]),
        }

    with ThreadPoolExecutor(len(streams)) as pool:
        return list(pool.map(one, range(len(streams))))


class KeyPool(Target):
    """One attacker's queries spread over several keys of the guard: each request of up to BATCH rows goes to
    the key answered least so far, so the keys' rows stay within a request of each other; a key the guard
    refuses is dropped and the request sent again with the next one. Raises the last refusal once every key is
    refused. `answered[i]`: the rows key i was answered."""

    def __init__(self, targets: list[HttpTarget]) -> None:
        super().__init__(SPEC, Access.SCORES)
        self.targets = targets
        self.answered = [0] * len(targets)
        self._live = list(range(len(targets)))

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for chunk in x.split(BATCH):
            while True:
                index = min(self._live, key=lambda i: self.answered[i])
                try:
                    parts.append(self.targets[index].probabilities(chunk))
                except ServiceRefused:
                    self._live.remove(index)
                    if not self._live:
                        raise
                    continue
                self.answered[index] += len(chunk)
                break
        return torch.cat(parts)


def sybil_through(
    served: Served, strategy: str, keys: int, budget: int, seed: int, digits: Split, name: str
) -> dict[str, Any]:
    """One attacker's extraction of `budget` queries spread over `keys` keys (KeyPool): the status that stopped
    it (None: budget spent), the rows each key was answered, each key's alarms, and the agreement of the copy
    it made through the guard (None when every key was refused before the budget was spent)."""
    names = [f"{name}-{key}" for key in range(keys)]
    pool = KeyPool([served.client(n) for n in names])
    status, copy = None, None
    try:
        result = extract(pool, strategy, budget, digits, seed)
        copy = agreement(result, TorchTarget(served.model, SPEC), digits.train.x)
    except ServiceRefused as refused:
        status = refused.status
    finally:
        for target in pool.targets:
            target.close()
    return {
        "status": status,
        "answered": pool.answered,
        "alarms": [served.alarms(n) for n in names],
        "copy": copy,
    }


def natural_through(
    served: Served, quota: int, seed: int, digits: Split, name: str, tier: str
) -> dict[str, Any]:
    """The natural-data (Knockoff) attacker spending a key's whole daily `quota` (the guard's rows_per_day):
    the agreement of its copy, its alarms, and the status of one more row asked for."""
    with served.client(name, tier=tier, retries=0) as target:
        result = extract(target, "natural", quota, digits, seed)
        try:
            target.labels(digits.test.x[:1])
            beyond = 200
        except ServiceRefused as refused:
            beyond = refused.status
    copy = agreement(result, TorchTarget(served.model, SPEC), digits.train.x)
    return {"copy": copy, "alarms": served.alarms(name), "beyond": beyond}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ----------------------------------------------------------------------------------------------------------------
# Fixtures and tests


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits_model, digits) -> Iterator[Served]:
    with guarded(tmp_path_factory.mktemp("guard"), digits_model, digits) as guard:
        yield guard


@pytest.fixture(scope="module")
def extraction_runs(served, digits) -> dict[str, list[dict[str, Any]]]:
    return {
        strategy: [
            extraction_through(served, strategy, seed, digits, f"extract-{strategy}-{seed}") for seed in SEEDS
        ]
        for strategy in SYNTHETIC
    }


def test_one_client_extracting_the_model_is_blocked_before_its_copy_reaches_80_percent(
    extraction_runs, digits_model, digits
):
    """Measured (seeds 0-2): synthetic and active queries are caught by coverage at query 100 (90 answered; the
    bare model's copy at 90 queries agrees on 0.33-0.46 and 0.42-0.49 of natural digits), Jacobian-based and
    random perturbations by PRADA at its first test, query 110 (100 answered; copy 0.62-0.72 and 0.61-0.76;
    under ATEN_CPU_CAPABILITY=default 0.61-0.74 and 0.58-0.77). bench/guard_attacks.py, seeds 0-9: synthetic and
    active 10 of 10 (copies at most 0.46 and 0.58); perturbations 9 of 10 each, copies at most 0.761 and 0.794,
    a thin margin. PRADA's statistic at its first test hovers near its threshold for these streams (0.87-0.96
    replayed offline), and it missed one attacker of each kind (seeds 5 and 7): the stateful detector blocked
    those at queries 1,362 and 1,018, when their copies agreed on 0.91 and 0.92. Every attacker was blocked
    within its 2,000 queries."""
    for strategy, runs in extraction_runs.items():
        assert all(run["status"] == 403 for run in runs), (strategy, runs)
        held = 0
        for seed, run in zip(SEEDS, runs, strict=True):
            detector, at = run["alarms"][0]
            copy = bare_agreement(digits_model, strategy, run["answered"], digits, seed)
            held += at <= 120 and copy < TARGET_AGREEMENT
            if STRATEGIES[strategy].source != "perturbation":
                assert (detector, at) == ("coverage", 100) and copy < TARGET_AGREEMENT, (
                    strategy,
                    seed,
                    run,
                    copy,
                )
        assert held >= (2 if STRATEGIES[strategy].source == "perturbation" else 3), (strategy, runs)


def test_without_the_guard_a_perturbation_attackers_copy_passes_80_percent_soon_after(digits_model, digits):
    """The block matters: at three times the queries the guard answered, the same attackers' copies of the bare
    model pass 80 % (measured at 300 queries, seeds 0-2: Jacobian 0.885-0.913, random 0.894-0.930; default
    kernels 0.881-0.916, 0.896-0.924; bench, seeds 0-4: 80 % reached at 150-300 queries)."""
    for strategy in ("jacobian", "random"):
        for seed in SEEDS:
            assert bare_agreement(digits_model, strategy, 300, digits, seed) >= TARGET_AGREEMENT, (
                strategy,
                seed,
            )


def test_a_natural_data_attacker_looks_like_a_customer_and_only_the_quota_bounds_its_copy(
    tmp_path, digits_model, digits
):
    """Knockoff-style queries (the test split) raise no alarm; the daily row quota is the control, and what a
    copy reaches within it is the figure to set the quota by. Measured (seeds 0-2, scores top-3 at 2 decimals):
    100 rows give a copy agreeing on 0.898-0.906 of natural digits, 250 rows 0.932-0.946 (bench, seeds 0-4:
    50 rows 0.71-0.86, 100 rows 0.87-0.91, 500 rows 0.96-0.97); the next row is refused with 429."""
    copies: dict[int, list[float]] = {}
    for quota in (100, 250):
        limits = {"requests_per_second": 1000, "burst": 1000, "rows_per_day": quota}
        with guarded(tmp_path / f"quota-{quota}", digits_model, digits, limits=limits) as guard:
            runs = [
                natural_through(guard, quota, seed, digits, f"knockoff-{seed}", "default") for seed in SEEDS
            ]
        assert all(run["alarms"] == [] and run["beyond"] == 429 for run in runs), runs
        copies[quota] = [run["copy"] for run in runs]
    assert min(copies[100]) >= 0.85 and min(copies[250]) >= 0.9, copies
    assert median(copies[250]) > median(copies[100]), copies


def test_square_and_hopskipjump_are_blocked_when_the_stateful_detector_first_judges_them(served, digits):
    """A query is judged once the client has sent k = 50: every run the detector judged was flagged at query 51
    and blocked there (measured, seeds 0-2, two images each: all 12 runs; bench seeds 0-4 x 5 images: all 50
    but 2). Square sends one query a request, so it got 50 answers; HopSkipJump's 100-probe requests were
    refused from the one holding query 51 (11-12 answered). A Square run that fools the model within 50
    queries is never judged (none here; 2 of 25 in the bench): the limit of any detector that needs k queries."""
    early = 0
    for attack in ("square", "hopskipjump"):
        for seed in SEEDS:
            for image in (5 * seed, 5 * seed + 1):
                run = evasion_through(served, attack, image, seed, digits, f"{attack}-{seed}-{image}")
                if not run["alarms"]:
                    assert run["status"] is None and run["answered"] <= 50 and run["fooled"], run
                    early += 1
                    continue
                assert run["alarms"][0] == ("stateful", 51) and run["status"] == 403, (attack, image, run)
                assert run["answered"] <= 50, (attack, image, run)
    assert early <= 2


def test_benign_clients_are_never_flagged(tmp_path, digits_model, digits):
    """Ten natural clients per seed (seeds 0-2, all 30 at once), each the 540 test digits in its own order at
    10 requests a second within the issue's limits (20 per second, burst 40). Measured: 0 of 30 flagged, no
    alarm in 16,200 queries (bench, seeds 0-4: 0 of 50, none in 27,000; a 95 % upper bound of 6 % of clients
    and 1.1e-4 per query)."""
    with guarded(tmp_path / "benign", digits_model, digits, limits=BENIGN_LIMITS) as guard:
        clients = benign_clients(guard, digits, SEEDS)
    assert all(
        c["alarms"] == [] and c["status"] is None and c["rows"] == len(digits.test.x) for c in clients
    ), [c for c in clients if c["alarms"] or c["status"] is not None]


def test_the_ladder_slows_extraction_in_time_but_blocks_perturbations_after_80_percent(
    tmp_path, digits_model, digits
):
    """LADDER, a persistent attacker (it goes on with labels when the scores are withdrawn). Synthetic and
    active queries: slowed after 90 rows (coverage at query 100), blocked after 190 (a second coverage alarm at
    200 and 100 more rows: two steps at once), the copy then at 0.50-0.77 (seeds 0-2; bench seeds 0-9: 10 of
    10 blocked before 80 %). Perturbations: slowed after 100 rows (PRADA at 110), before 80 % (copy 0.61-0.76),
    but the scores are withdrawn after 200 rows (copy 0.80-0.88) and the key blocked after 300 (copy 0.885-0.93):
    PRADA raises no second alarm (its statistic recovers once the seed images are diluted), so only the 100-row
    steps move the client on. Bench, seeds 0-9: slowed before 80 % in 9 of 10 (PRADA's miss, as above, was
    slowed at 1,360 and 1,010), blocked before 80 % in 0 of 10 (copies at the block 0.84-0.93)."""
    names = {(strategy, seed): f"{strategy}-{seed}" for strategy in SYNTHETIC for seed in SEEDS}
    with guarded(tmp_path / "ladder", digits_model, digits, monitor=LADDER) as guard:
        for (strategy, seed), name in names.items():
            run = extraction_through(guard, strategy, seed, digits, name, persistent=True)
            assert run["status"] == 403, (strategy, seed, run)
    in_time = dict.fromkeys(SYNTHETIC, 0)
    for (strategy, seed), name in names.items():
        steps = steps_taken(tmp_path / "ladder", name)
        slowed = bare_agreement(digits_model, strategy, steps["slow"], digits, seed)
        in_time[strategy] += slowed < TARGET_AGREEMENT
        if STRATEGIES[strategy].source == "perturbation":
            blocked = bare_agreement(digits_model, strategy, steps["block"], digits, seed)
            assert blocked >= TARGET_AGREEMENT, (strategy, seed, steps, blocked)  # the limit, stated
        else:
            assert steps == {"slow": 90, "block": 190}, (strategy, seed, steps)
    assert in_time["synthetic"] == in_time["active"] == len(SEEDS), in_time
    assert min(in_time["jacobian"], in_time["random"]) >= 2, in_time


@pytest.mark.slow
def test_an_extraction_spread_over_keys_is_caught_key_by_key_but_not_as_a_whole(served, digits_model, digits):
    """The guard watches each key, not the person behind several. A Jacobian-based attacker spreading its
    requests over 2 keys sees both blocked, yet each key was first answered the 100 rows PRADA needs before its
    first test (100-110 per key, seeds 0-2), some 200 in all: a copy past 80 % (bench, seeds 0-9: 0.80-0.91 at
    the rows answered; one key of seed 3 went on to 1,250 rows). One sending 90 rows to each of 10 keys is never
    judged (PRADA and coverage need 100 queries, and its queries stay too far apart for the stateful detector)
    and its copy, made through the guard, agrees on 0.90-0.93 (seeds 0-2; bench, seeds 0-9: 0 of 100 keys
    flagged, copies 0.89-0.93)."""
    for seed in SEEDS:
        naive = sybil_through(served, "jacobian", 2, BUDGET, seed, digits, f"naive-{seed}")
        assert naive["status"] == 403 and all(alarms for alarms in naive["alarms"]), naive
        assert min(naive["answered"]) >= 100, naive
        careful = sybil_through(served, "jacobian", 10, 10 * 90, seed, digits, f"careful-{seed}")
        assert careful["status"] is None and not any(careful["alarms"]), careful
        assert careful["copy"] >= 0.85, careful
