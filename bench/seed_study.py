"""Seed study: a training-dependent figure measured over many seeds and several CPU kernel sets.

A figure read off one training run on one machine is a coin toss on another: a different CPU rounds
differently, training takes another path, and the figure moves. The tests assert such figures over several
seeds (a median, or k of n) with thresholds set from the spread this script measures. Each test module that
asserts such a figure defines `figures(seed) -> dict[str, float]`; this script runs it for every seed under
every requested `ATEN_CPU_CAPABILITY` (torch picks its kernels at start-up, so each capability runs in its own
process) and prints min / median / max per figure:

    .venv/bin/python bench/seed_study.py test_fine_pruning --seeds 0-9 --capabilities native,default,avx2

`native` leaves the variable unset (the best kernels this CPU has). Torch runs on `--threads` threads (2, as
the tests do; 1 on a machine other jobs share, where several multi-threaded torch processes slow each other
down many times over; the thread count is one more source of rounding differences the study then covers).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def _worker(module: str, seeds: list[int], threads: int) -> None:
    """Run in a child process: print one JSON line of figures per seed."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(TESTS))
    figures = importlib.import_module(module).figures
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)  # a module may set its own
    for seed in seeds:
        start = time.perf_counter()
        values = figures(seed)
        print(json.dumps({"seed": seed, "seconds": time.perf_counter() - start, **values}), flush=True)


def _study(module: str, seeds: list[int], capability: str, threads: int) -> list[dict[str, float]]:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability != "native":
        env["ATEN_CPU_CAPABILITY"] = capability
    seeds_arg = ",".join(map(str, seeds))
    command = [sys.executable, __file__, module, "--seeds", seeds_arg, "--threads", str(threads), "--worker"]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    print(f"  {capability}: torch ran on {lines[0]['threads']} thread(s)", flush=True)
    rows = lines[1:]
    for row in rows:
        print(f"  {capability:8} seed {row['seed']:3d}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in row.items() if k not in ("seed", "seconds")
        ), flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("module", help="a test module under tests/ that defines figures(seed)")
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,3,5 (default 0-9)")
    parser.add_argument("--capabilities", default="native,default,avx2")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    seeds = _seeds(args.seeds)
    if args.worker:
        _worker(args.module, seeds, args.threads)
        return
    every: dict[str, list[float]] = {}
    print(f"# {args.module}.figures over seeds {args.seeds}")
    for capability in args.capabilities.split(","):
        rows = _study(args.module, seeds, capability, args.threads)
        for name in rows[0]:
            if name == "seed":
                continue
            values = [row[name] for row in rows]
            every.setdefault(name, []).extend(values)
            print(f"{capability:8} {name:40} min {min(values):.3f}  median {statistics.median(values):.3f}  "
                  f"max {max(values):.3f}", flush=True)  # fmt: skip
    print("# all capabilities together")
    for name, values in every.items():
        print(f"{'all':8} {name:40} min {min(values):.3f}  median {statistics.median(values):.3f}  "
              f"max {max(values):.3f}  (n={len(values)})")  # fmt: skip


if __name__ == "__main__":
    main()
