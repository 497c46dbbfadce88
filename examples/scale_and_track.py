"""Run an assessment's shadow models on a pool of processes (or a Ray cluster), resume it from its task cache, and
log it as an MLflow run (docs/scale.md).

    .venv/bin/python examples/scale_and_track.py [OUTPUT_FOLDER] [--executor pool|ray|in_process]

Needs `pip install 'aisec[mlflow]'` (and `'aisec[ray]'` for --executor ray).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import aisec
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.demo.models import digits_cnn


def main(output: Path, executor: str) -> None:
    digits = load_builtin("digits", seed=0)
    model = fit(build_model(digits_cnn, 0), digits.train, seed=0, epochs=10)
    plan = {
        "seed": 0,
        "threat_model": {"knowledge": "scores"},
        "target": {"factory": digits_cnn, "input": {"shape": [1, 8, 8], "num_classes": 10}},
        "training": {"data": digits.train, "recipe": fit, "recipe_args": {"epochs": 10}},
        "probes": {"membership": {"records": 100, "shadows": 16, "attacks": ["lira", "rmia"]}},
        # where the 16 shadow models train: two processes here, or a Ray (`{kind: ray, address: auto}`)
        "executor": {"kind": executor, **({"workers": 2} if executor != "in_process" else {})},
    }
    cache = output / "tasks"  # each finished shadow model is kept here, named by a hash of what made it
    x, y = digits.test.x[:300], digits.test.y[:300]

    started = time.perf_counter()
    first = aisec.assess(model, x, y, plan=plan, task_cache=cache)
    print(
        f"first run: {time.perf_counter() - started:.1f} s, {len(list(cache.rglob('*.pt')))} jobs in {cache}"
    )
    started = time.perf_counter()
    again = aisec.assess(model, x, y, plan=plan, task_cache=cache)  # an interrupted run resumes the same way
    print(f"rerun from the cache: {time.perf_counter() - started:.1f} s")
    figures = [(m.id, m.value) for f in first.findings for m in f.metrics]
    assert figures == [(m.id, m.value) for f in again.findings for m in f.metrics]
    shown = [f"{name} {getattr(value, 'value', value):.3f}" for name, value in figures[:3]]
    print("the same figures:", ", ".join(shown))

    uri = f"sqlite:///{output.resolve()}/mlflow.db"
    run_id = first.log_to_mlflow(uri, experiment="digits membership")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    print(f"MLflow run {run_id}: verdict {run.data.tags['aisec.verdict']}, {len(run.data.metrics)} metrics")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", nargs="?", type=Path, default=Path("out/scale"))
    parser.add_argument("--executor", default="pool", choices=["in_process", "pool", "ray"])
    arguments = parser.parse_args()
    arguments.output.mkdir(parents=True, exist_ok=True)
    main(arguments.output, arguments.executor)
