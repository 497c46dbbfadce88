"""Guard under attack: aisec's own red team against the guard over HTTP, with the guard's monitors read in process.

The set-up, the attackers and the configuration are those of tests/guard/test_guard_attacks.py (imported from
there, so the test and this benchmark measure the same thing): the digits CNN (built and trained with seed 0, as
the test session's) behind the guard, served by uvicorn in a thread on loopback; PRADA, stateful detection and
coverage at their defaults, calibrated on the training split; each attacker holds keys of its own and reaches
the guard through aisec's HttpTarget. Parts:

1. extraction by one client (synthetic uniform, Jacobian-based and random perturbations from 50 natural seeds,
   active learning over synthetic candidates): where the guard stops it (block at the first alarm), where the
   escalating ladder would act (shadow mode), against the copy the same attack makes of the bare model at a
   grid of budgets and at those points;
2. the natural-data (Knockoff) attacker within a key's daily row quota: alarms, and the agreement of its copy;
3. Square (L-inf 0.1, scores) and HopSkipJump (minimal L2, labels) on one image per client: the query at which
   the stateful detector fires;
4. ten benign clients per seed replaying the test split at 10 requests per second: clients flagged and the
   per-query alarm rate;
5. one attacker spreading a perturbation-based extraction over 2, 5 and 10 keys.

    OMP_NUM_THREADS=1 .venv/bin/python bench/guard_attacks.py > bench/results/guard_attacks.md
    OMP_NUM_THREADS=1 .venv/bin/python bench/guard_attacks.py --seeds 2 --parts natural benign   # a quick look
Results are recorded in docs/benchmarks.md ("Guard under attack").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "guard"))
import test_guard_attacks as ga  # noqa: E402

from aisec.core.seeding import build_model  # noqa: E402
from aisec.core.training import fit  # noqa: E402
from aisec.data.builtin import Split, load_builtin  # noqa: E402
from aisec.demo.models import digits_cnn  # noqa: E402

GRID = (50, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2000)
QUOTAS = (50, 100, 250, 500, 540)  # 540: the whole test split, the attacker's pool
SYBIL_KEYS = (2, 5, 10)
SYBIL_PER_KEY = 90  # rows a careful attacker sends per key: with a request of up to 10 more, under 100


def spread(values: Sequence[float | None], fmt: str = "{:.0f}") -> str:
    """ "median [min-max]" of the values present, and how many are missing ("never")."""
    present = [v for v in values if v is not None]
    missing = len(values) - len(present)
    if not present:
        return "never"
    low, mid, high = min(present), statistics.median(present), max(present)
    text = fmt.format(mid) if low == high else f"{fmt.format(mid)} [{fmt.format(low)}-{fmt.format(high)}]"
    return text + (f", never in {missing}" if missing else "")


def first_reaching(curve: dict[int, float], level: float) -> int | None:
    """The smallest budget of the grid at which the copy's agreement reaches `level`."""
    return next((budget for budget in sorted(curve) if curve[budget] >= level), None)


def detectors(alarms: list[tuple[str, int]]) -> str:
    return "/".join(sorted({name for name, _ in alarms})) or "-"


def timed(label: str, fn: Callable[[], None]) -> None:
    started = time.perf_counter()
    fn()
    print(f"\n({label}: {time.perf_counter() - started:.0f} s)\n", flush=True)


def part_extraction(model: nn.Module, digits: Split, seeds: Sequence[int], folder: Path) -> None:
    live: dict[str, list[dict[str, Any]]] = {}
    with ga.guarded(folder / "block", model, digits) as served:
        for strategy in ga.SYNTHETIC:
            live[strategy] = [
                ga.extraction_through(served, strategy, s, digits, f"{strategy}-{s}") for s in seeds
            ]
    with ga.guarded(folder / "ladder", model, digits, monitor=ga.LADDER) as served:
        for strategy in ga.SYNTHETIC:
            for s in seeds:
                ga.extraction_through(served, strategy, s, digits, f"{strategy}-{s}", persistent=True)
    ladder = {
        strategy: [ga.steps_taken(folder / "ladder", f"{strategy}-{s}") for s in seeds]
        for strategy in ga.SYNTHETIC
    }
    curves = {
        strategy: [
            {budget: ga.bare_agreement(model, strategy, budget, digits, s) for budget in GRID} for s in seeds
        ]
        for strategy in ga.SYNTHETIC
    }

    print(f"\n### Extraction by one client, blocked at its first alarm (seeds {seeds[0]}-{seeds[-1]})\n")
    print(
        "| strategy | first alarm: detector, query | answered before 403 | bare copy at that many queries "
        "| bare copy reaches 80 % at | blocked before 80 % |"
    )
    print("|---|---|---|---|---|---|")
    for strategy in ga.SYNTHETIC:
        runs = live[strategy]
        at = [
            ga.bare_agreement(model, strategy, r["answered"], digits, s)
            for r, s in zip(runs, seeds, strict=True)
        ]
        reach = [first_reaching(c, ga.TARGET_AGREEMENT) for c in curves[strategy]]
        holds = sum(r["status"] == 403 and a < ga.TARGET_AGREEMENT for r, a in zip(runs, at, strict=True))
        first = [r["alarms"][0][1] if r["alarms"] else None for r in runs]
        print(
            f"| {strategy} | {detectors([r['alarms'][0] for r in runs if r['alarms']])}, {spread(first)} "
            f"| {spread([r['answered'] for r in runs])} | {spread(at, '{:.3f}')} | {spread(reach)} "
            f"| {holds} of {len(runs)} |"
        )

    print(
        "\n### The ladder (`escalate: true, escalate_every: 100`: first alarm slow; each further alarm or 100 rows one step more)\n"
    )
    print(
        "Rows the guard had answered the persistent attacker when each step first applied (from the audit log),"
    )
    print("and the copy the same attack makes of the bare model with that many queries.\n")
    print(
        "| strategy | slow | labels only | block | bare copy at slow | at labels only | at block "
        "| slowed before 80 % | blocked before 80 % |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for strategy in ga.SYNTHETIC:
        steps = ladder[strategy]
        cells, copies = [], []
        for action in ("slow", "labels_only", "block"):
            rows = [st.get(action) for st in steps]
            cells.append(spread(rows))
            copies.append(
                [
                    ga.bare_agreement(model, strategy, n, digits, s) if n else None
                    for n, s in zip(rows, seeds, strict=True)
                ]
            )
        before = [
            sum(c is not None and c < ga.TARGET_AGREEMENT for c in copy) for copy in (copies[0], copies[2])
        ]
        print(
            f"| {strategy} | {' | '.join(cells)} | {' | '.join(spread(c, '{:.3f}') for c in copies)} "
            f"| {before[0]} of {len(seeds)} | {before[1]} of {len(seeds)} |"
        )

    print("\n### The bare copy's agreement by queries (median over seeds), beside the tables above\n")
    print("| queries | " + " | ".join(ga.SYNTHETIC) + " |")
    print("|---|" + "---|" * len(ga.SYNTHETIC))
    for budget in GRID:
        cells = [f"{statistics.median(c[budget] for c in curves[strategy]):.3f}" for strategy in ga.SYNTHETIC]
        print(f"| {budget:,} | " + " | ".join(cells) + " |")
    print("\nThe same as CSV (strategy, queries, median agreement), for a chart:\n\n```")
    for strategy in ga.SYNTHETIC:
        for budget in GRID:
            print(f"{strategy},{budget},{statistics.median(c[budget] for c in curves[strategy]):.4f}")
    print("```")


def part_natural(model: nn.Module, digits: Split, seeds: Sequence[int], folder: Path) -> None:
    print(
        f"\n### The natural-data (Knockoff) attacker within a key's daily quota (seeds {seeds[0]}-{seeds[-1]})\n"
    )
    print("| rows per day | copy's agreement, scores (top-3, 2 decimals) | copy's agreement, labels only "
          "| clients flagged | next row refused (429) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for quota in QUOTAS:
        limits = {"requests_per_second": 1000, "burst": 1000, "rows_per_day": quota}
        with ga.guarded(folder / f"quota-{quota}", model, digits, limits=limits) as served:
            runs = {
                tier: [ga.natural_through(served, quota, s, digits, f"{tier}-{s}", tier) for s in seeds]
                for tier in ("default", "basic")
            }
        every = runs["default"] + runs["basic"]
        flagged = sum(bool(r["alarms"]) for r in every)
        refused = sum(r["beyond"] == 429 for r in every)
        print(
            f"| {quota:,} | {spread([r['copy'] for r in runs['default']], '{:.3f}')} "
            f"| {spread([r['copy'] for r in runs['basic']], '{:.3f}')} | {flagged} of {len(every)} "
            f"| {refused} of {len(every)} |"
        )


def part_evasion(model: nn.Module, digits: Split, seeds: Sequence[int], images: int, folder: Path) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"square": [], "hopskipjump": []}
    ladder: dict[str, list[dict[str, Any]]] = {"square": [], "hopskipjump": []}
    with ga.guarded(folder / "evasion", model, digits) as served:
        for attack in runs:
            for s in seeds:
                for image in range(images * s, images * (s + 1)):
                    runs[attack].append(
                        ga.evasion_through(served, attack, image, s, digits, f"{attack}-{s}-{image}")
                    )
    with ga.guarded(folder / "evasion-ladder", model, digits, monitor=ga.LADDER) as served:
        for attack in ladder:
            for s in seeds:
                for image in range(images * s, images * (s + 1)):
                    name = f"{attack}-{s}-{image}"
                    run = ga.evasion_through(served, attack, image, s, digits, name, persistent=True)
                    ladder[attack].append(run | {"name": name})
    for attempts in ladder.values():
        for run in attempts:
            run["steps"] = ga.steps_taken(folder / "evasion-ladder", run["name"])
    print(
        f"\n### Square and HopSkipJump, one client per image ({images} images x seeds {seeds[0]}-{seeds[-1]})\n"
    )
    print(
        "| attack | runs | finished before being judged (fooled) | first alarm: detector, query "
        "| queries answered before 403 | ladder: slowed at | ladder: blocked at | ladder: fooled the model |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for attack, attempts in runs.items():
        judged = [r for r in attempts if r["alarms"]]
        early = [r for r in attempts if not r["alarms"]]
        first = [r["alarms"][0][1] for r in judged]
        slow = [r["steps"].get("slow") for r in ladder[attack]]
        block = [r["steps"].get("block") for r in ladder[attack]]
        print(
            f"| {attack} | {len(attempts)} | {len(early)} ({sum(r['fooled'] for r in early)}) "
            f"| {detectors([r['alarms'][0] for r in judged])}, {spread(first)} "
            f"| {spread([r['answered'] for r in judged])} | {spread(slow)} | {spread(block)} "
            f"| {sum(r['fooled'] for r in ladder[attack])} of {len(ladder[attack])} |"
        )


def part_benign(digits: Split, model: nn.Module, seeds: Sequence[int], folder: Path) -> None:
    print(f"\n### Benign clients: {ga.CLIENTS} per seed, the test split each, {ga.RATE:g} requests/s\n")
    print("| seed | clients flagged | alarms | rows | per-query alarm rate |")
    print("|---|---|---|---|---|")
    total_flagged = total_alarms = total_rows = 0
    with ga.guarded(folder / "benign", model, digits, limits=ga.BENIGN_LIMITS) as served:
        clients = ga.benign_clients(served, digits, tuple(seeds))
    for s in seeds:
        mine = [c for c in clients if c["seed"] == s]
        flagged = sum(bool(c["alarms"]) or c["status"] is not None for c in mine)
        alarms = sum(len(c["alarms"]) for c in mine)
        rows = sum(c["rows"] for c in mine)
        total_flagged, total_alarms, total_rows = (
            total_flagged + flagged,
            total_alarms + alarms,
            total_rows + rows,
        )
        print(f"| {s} | {flagged} of {len(mine)} | {alarms} | {rows:,} | {alarms / rows:.2g} |")
    n = len(clients)
    print(
        f"| all | {total_flagged} of {n} | {total_alarms} | {total_rows:,} | {total_alarms / total_rows:.2g} |"
    )
    if total_flagged == 0:
        print(
            f"\nNone of {n} clients flagged: a 95 % upper bound of {3 / n:.1%} on the share flagged (rule of three);"
        )
        print(f"no alarm in {total_rows:,} queries: a 95 % upper bound of {3 / total_rows:.2g} per query.")


def part_sybil(model: nn.Module, digits: Split, seeds: Sequence[int], folder: Path) -> None:
    budget = ga.BUDGET
    print(f"\n### One attacker, several keys (perturbation-based extraction; seeds {seeds[0]}-{seeds[-1]})\n")
    print(
        f"Naive: a {budget:,}-query plan, requests of {ga.BATCH} rows each to the key answered least so far, a "
        "refused key dropped."
    )
    print(
        f"Careful: {SYBIL_PER_KEY} queries per key (requests to the key answered least so far), so that no key"
    )
    print("reaches the 100 queries PRADA and coverage need before they judge.\n")
    print(
        "| strategy | keys | naive: keys blocked | naive: rows per key before its block | naive: rows answered "
        "| naive: bare copy at those rows | careful: keys flagged | careful: copy made through the guard |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with ga.guarded(folder / "sybil", model, digits) as served:
        for strategy in ("jacobian", "random"):
            for keys in SYBIL_KEYS:
                naive = [
                    ga.sybil_through(
                        served, strategy, keys, budget, s, digits, f"naive-{strategy}-{keys}-{s}"
                    )
                    for s in seeds
                ]
                careful = [
                    ga.sybil_through(
                        served,
                        strategy,
                        keys,
                        keys * SYBIL_PER_KEY,
                        s,
                        digits,
                        f"careful-{strategy}-{keys}-{s}",
                    )
                    for s in seeds
                ]
                blocked = sum(sum(bool(a) for a in r["alarms"]) for r in naive)
                per_key = [n for r in naive for n, a in zip(r["answered"], r["alarms"], strict=True) if a]
                rows = [sum(r["answered"]) for r in naive]
                at = [
                    ga.bare_agreement(model, strategy, n, digits, s) for n, s in zip(rows, seeds, strict=True)
                ]
                flagged = sum(sum(bool(a) for a in r["alarms"]) for r in careful)
                print(
                    f"| {strategy} | {keys} | {blocked} of {keys * len(seeds)} | {spread(per_key)} | {spread(rows)} "
                    f"| {spread(at, '{:.3f}')} | {flagged} of {keys * len(seeds)} "
                    f"| {spread([r['copy'] for r in careful], '{:.3f}')} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="attack seeds 0..N-1 (default 5)")
    parser.add_argument("--images", type=int, default=5, help="images Square and HopSkipJump attack per seed")
    parts = ("extraction", "natural", "evasion", "benign", "sybil")
    parser.add_argument("--parts", nargs="+", choices=parts, default=list(parts))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    digits = load_builtin("digits", seed=0)
    model = fit(build_model(digits_cnn, 0), digits.train, seed=0).eval()
    print(f"# Guard under attack ({time.strftime('%Y-%m-%d')}; torch {torch.__version__}, 1 thread)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        steps: dict[str, Callable[[], None]] = {
            "extraction": lambda: part_extraction(model, digits, seeds, folder),
            "natural": lambda: part_natural(model, digits, seeds, folder),
            "evasion": lambda: part_evasion(model, digits, seeds, args.images, folder),
            "benign": lambda: part_benign(digits, model, seeds, folder),
            "sybil": lambda: part_sybil(model, digits, seeds, folder),
        }
        for part in args.parts:
            timed(part, steps[part])


if __name__ == "__main__":
    main()
