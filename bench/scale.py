"""Scaling benchmark: the probes' jobs in this process, in a process pool and on Ray, side by side in one run.

Parts (each prints a Markdown table; docs/benchmarks.md records them):
  identical    one plan (membership with LiRA and RMIA, and the poisoning probe, which retrains) run through
               `run_plan` with each executor: are the findings identical, figure for figure?
  efficiency   the membership probe's 64 shadow models (the digits CNN, the probe's own `train_shadows`) on a
               local Ray with 1 worker and with 2, interleaved `--repeats` times; parallel efficiency
               T(1) / (2 T(2)), with the same work in this process as the anchor.
  overhead     Ray's cost per task: no-op tasks, all submitted at once and one in flight at a time; and per
               shadow model, Ray with one worker against the same jobs in this process.
  resume       `aisec assess --executor ray` killed with SIGKILL once some shadow models are cached, then run
               again: how many finished jobs were run twice (the target is none), and the findings against an
               uninterrupted run.
  resnet       ResNet-18's training FLOPs per CIFAR-10 image (counted) and images per second on this CPU and
               on CUDA where present: the per-shadow cost that docs/scale.md extrapolates to a GPU cluster.
  scan         `aisec scan`'s scanner over 1,000-5,000 small pickles in this process and on a pool of two.
  mlflow       one assessment logged to a new SQLite tracking store, then to the same store again.
  keys         the cache keys of 16 CIFAR-shaped shadow jobs sharing their inputs: one job at a time against the
               runner's batch, which hashes a shared tensor once.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py                  # all parts, about 10 minutes on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py efficiency --repeats 1 --shadows 16    # a quick look
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
import yaml  # noqa: E402

from aisec.assessment.plan import load_plan  # noqa: E402
from aisec.assessment.runner import run_plan, task_runner  # noqa: E402
from aisec.attacks.inference.membership import ShadowTrainer, train_shadows  # noqa: E402
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor  # noqa: E402
from aisec.core.ray_executor import RayExecutor, import_ray  # noqa: E402
from aisec.core.seeding import build_model  # noqa: E402
from aisec.core.tasks import TaskRunner  # noqa: E402
from aisec.core.training import fit  # noqa: E402
from aisec.data.builtin import load_builtin  # noqa: E402
from aisec.data.dataset import LabelledData  # noqa: E402
from aisec.demo.models import digits_cnn  # noqa: E402
from aisec.report.json_report import to_json_dict  # noqa: E402
from aisec.targets.base import InputSpec  # noqa: E402
from aisec.targets.torch_target import TorchTarget  # noqa: E402

SPEC = InputSpec((1, 8, 8), 10, 0.0, 1.0)
JOBS_LINE = re.compile(r"jobs: (\d+) run on (\w+), (\d+) read back")


def noop(job: int) -> int:
    return job


# -- identical ---------------------------------------------------------------------------------------------------


def write_plan(folder: Path, *, shadows: int, poisoning: bool) -> Path:
    """A plan over an untrained digits CNN (its weights do not matter here): membership with `shadows` shadow
    models, and, with `poisoning`, the poisoning probe's retrained models."""
    torch.save(build_model(digits_cnn, 0).state_dict(), folder / "model.pt")
    probes: dict[str, Any] = {"membership": {"records": 100, "shadows": shadows, "attacks": ["lira", "rmia"]}}
    if poisoning:
        probes["poisoning"] = {"attacks": ["random_flip", "targeted_flip"], "rates": [0.05, 0.1], "folds": 3}
    plan = {
        "seed": 11,
        "target": {
            "kind": "torch",
            "factory": "aisec.demo.models:digits_cnn",
            "path": "model.pt",
            "input": {"shape": [1, 8, 8], "num_classes": 10},
        },
        "data": {"builtin": "digits", "split": "test", "samples": 400},
        "probes": probes,
        "training": {
            "data": {"builtin": "digits", "split": "train", "samples": 600},
            "recipe": "aisec.core.training:fit",
            "recipe_args": {"epochs": 10},
        },
    }
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def identical(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_plan(Path(folder), shadows=args.plan_shadows, poisoning=True)
        plan, _ = load_plan(path)
        rows, documents = [], {}
        for kind, workers in (("in_process", None), ("pool", 2), ("ray", 2)):
            executor = {"kind": kind, **({"workers": workers} if workers else {})}
            chosen = plan.model_copy(update={"executor": type(plan.executor).model_validate(executor)})
            runner = task_runner(chosen, None, None)
            start = time.perf_counter()
            try:
                assessment = run_plan(chosen, tasks=runner)
            finally:
                runner.close()
            seconds = time.perf_counter() - start
            documents[kind] = to_json_dict(assessment)["findings"]
            rows.append((kind, runner.executed, seconds))
        print(
            f"\n### Identical figures: one plan, seed 11, {args.plan_shadows} shadow models and 9 poisoning retrains\n"
        )
        print("| executor | jobs run | wall time (s) | findings identical to in-process |")
        print("|---|---|---|---|")
        for kind, executed, seconds in rows:
            same = documents[kind] == documents["in_process"]
            print(f"| {kind} | {executed} | {seconds:.1f} | {'yes' if same else 'NO'} |")


# -- efficiency and overhead ---------------------------------------------------------------------------------------


def shadow_setting(shadows: int) -> Callable[[TaskRunner], Any]:
    """The membership probe's shadow training at the benchmark's size, as a function of the runner."""
    split = load_builtin("digits", seed=0)
    victim = TorchTarget(build_model(digits_cnn, 0), SPEC)
    x = torch.cat([split.train.x[:100], split.test.x[:100]])
    y = torch.cat([split.train.y[:100], split.test.y[:100]])
    population = LabelledData(split.test.x[100:400], split.test.y[100:400])
    trainer = ShadowTrainer(digits_cnn, functools.partial(fit, epochs=10))

    def run(runner: TaskRunner) -> Any:
        return train_shadows(
            victim, x, y, trainer, population=population, n_shadows=shadows, seed=5, tasks=runner
        )

    return run


def timed(run: Callable[[TaskRunner], Any], executor: Any) -> tuple[float, Any]:
    runner = TaskRunner(executor)
    start = time.perf_counter()
    result = run(runner)
    return time.perf_counter() - start, result


def efficiency(args: argparse.Namespace) -> None:
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    run = shadow_setting(args.shadows)
    times: dict[str, list[float]] = {"in process": [], "Ray, 1 worker": [], "Ray, 2 workers": []}
    logits: dict[str, torch.Tensor] = {}
    try:
        RayExecutor(workers=2).map(noop, list(range(4)))  # start both workers before timing
        for _ in range(args.repeats):
            for name, executor in (
                ("in process", InProcessExecutor()),
                ("Ray, 1 worker", RayExecutor(workers=1)),
                ("Ray, 2 workers", RayExecutor(workers=2)),
            ):
                seconds, shadows = timed(run, executor)
                times[name].append(seconds)
                logits[name] = shadows.logits
    finally:
        ray.shutdown()
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\n### Parallel efficiency: {args.shadows} shadow models of the digits CNN, median of {args.repeats}\n"
    )
    print(
        "| executor | wall time (s), median | runs | per shadow model (s) | logits identical to in-process |"
    )
    print("|---|---|---|---|---|")
    for name, values in times.items():
        same = torch.equal(logits[name], logits["in process"])
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"| {name} | {median[name]:.1f} | {runs} | {median[name] / args.shadows:.3f} | {'yes' if same else 'NO'} |"
        )
    ratio = median["Ray, 1 worker"] / (2 * median["Ray, 2 workers"])
    print(
        f"\nParallel efficiency T(1) / (2 T(2)) = **{ratio:.2f}**; speed-up {median['Ray, 1 worker'] / median['Ray, 2 workers']:.2f}x."
    )
    print(
        f"Ray with one worker against this process: {median['Ray, 1 worker'] / median['in process']:.3f}x "
        f"({(median['Ray, 1 worker'] - median['in process']) / args.shadows * 1000:.1f} ms a shadow model)."
    )


def overhead(args: argparse.Namespace) -> None:
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    rows = []
    try:
        RayExecutor(workers=2).map(noop, list(range(4)))
        for label, workers in (("all submitted at once", None), ("one in flight at a time", 1)):
            samples = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                RayExecutor(workers=workers).map(noop, list(range(args.tasks)))
                samples.append((time.perf_counter() - start) / args.tasks * 1000)
            rows.append((f"Ray, no-op tasks, {label}", statistics.median(samples), samples))
        for label, executor in (("process pool (2), no-op tasks", LocalProcessExecutor(2)),):
            samples = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                executor.map(noop, list(range(args.tasks)))
                samples.append((time.perf_counter() - start) / args.tasks * 1000)
            rows.append((label + ", pool start included", statistics.median(samples), samples))
    finally:
        ray.shutdown()
    print(f"\n### Scheduling overhead per task ({args.tasks} tasks, median of {args.repeats})\n")
    print("| what | ms per task, median | runs |")
    print("|---|---|---|")
    for label, median, samples in rows:
        print(f"| {label} | {median:.2f} | {', '.join(f'{s:.2f}' for s in samples)} |")


# -- resume --------------------------------------------------------------------------------------------------------


def resume(args: argparse.Namespace) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
    with tempfile.TemporaryDirectory() as folder:
        path = write_plan(Path(folder), shadows=args.plan_shadows, poisoning=False)
        output = Path(folder) / "out"

        def command(out: Path, *extra: str) -> list[str]:
            return [sys.executable, "-m", "aisec", "assess", str(path), "-o", str(out), "-f", "json", "-q",
                    "--executor", "ray", "--workers", "2", *extra]  # fmt: skip

        rows = []
        for kill_after in args.kill_after:
            cache = output / "tasks"
            if output.exists():
                for file in cache.rglob("*.pt"):
                    file.unlink()
            process = subprocess.Popen(
                command(output), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while len(list(cache.rglob("*.pt"))) < kill_after and process.poll() is None:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            process.wait()
            # the killed driver's local Ray outlives it: stop it (this stops every Ray on the machine)
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
            finished = len(list(cache.rglob("*.pt")))
            rerun = subprocess.run(command(output), env=environment, capture_output=True, text=True)
            match = JOBS_LINE.search(rerun.stderr)
            assert match, rerun.stderr[-2000:]
            executed, reused = int(match[1]), int(match[3])
            rows.append((kill_after, finished, executed, reused, executed - (args.plan_shadows - finished)))
        whole = Path(folder) / "whole"
        subprocess.run(command(whole, "--no-cache"), env=environment, capture_output=True, check=False)
        same = (
            json.loads((output / "report.json").read_text())["findings"]
            == json.loads((whole / "report.json").read_text())["findings"]
        )
    print(
        f"\n### Resume after kill -9: `aisec assess --executor ray --workers 2`, {args.plan_shadows} shadow models\n"
    )
    print(
        "| killed once cached | cached at the kill | rerun: run | rerun: read back | finished jobs run twice |"
    )
    print("|---|---|---|---|---|")
    for kill_after, finished, executed, reused, twice in rows:
        print(f"| {kill_after} | {finished} | {executed} | {reused} | {twice} |")
    print(f"\nFindings after the resumed run identical to an uninterrupted run: {'yes' if same else 'NO'}.")


# -- keys: naming a batch's jobs for the cache ----------------------------------------------------------------------


def keys(args: argparse.Namespace) -> None:
    """Keys of CIFAR-shaped shadow jobs that share their evaluation inputs (10,000 images, 123 MB) and each carry
    their own training subset (2,500 images): one job at a time (`task_key` alone, every shared tensor hashed
    again for each job) against the runner's batch (each shared tensor hashed once)."""
    from aisec.attacks.inference.membership import ShadowJob
    from aisec.core.tasks import task_key
    from aisec.core.train_jobs import run_train_job

    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(10_000, 3, 32, 32, generator=generator)
    trainer = ShadowTrainer(digits_cnn, functools.partial(fit, epochs=1))
    jobs = [
        ShadowJob(trainer, LabelledData(torch.rand(2_500, 3, 32, 32, generator=generator),
                                        torch.randint(10, (2_500,), generator=generator)), inputs, seed)
        for seed in range(args.key_jobs)
    ]  # fmt: skip
    for job in jobs:
        _ = job.data.sha256  # a data set's digest is computed once and kept on it, by both ways
    alone, shared = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        one_by_one = [task_key(run_train_job, job) for job in jobs]
        alone.append(time.perf_counter() - start)
        start = time.perf_counter()
        memo: dict[int, bytes] = {}
        batch = [task_key(run_train_job, job, memo) for job in jobs]
        shared.append(time.perf_counter() - start)
        assert batch == one_by_one
    a, b = statistics.median(alone), statistics.median(shared)
    print(f"\n### Keys of {args.key_jobs} shadow jobs sharing 123 MB of inputs (median of {args.repeats})\n")
    print("| how | seconds, median | runs |")
    print("|---|---|---|")
    print(f"| each job hashed alone | {a:.2f} | {', '.join(f'{v:.2f}' for v in alone)} |")
    print(f"| the batch, shared tensors once | {b:.2f} | {', '.join(f'{v:.2f}' for v in shared)} |")
    print(f"\nRatio {b / a:.2f}.")


# -- mlflow: logging an assessment as a run -------------------------------------------------------------------------


def mlflow_logging(args: argparse.Namespace) -> None:
    """`log_assessment` of one evasion assessment (a logistic regression on digits, its reports written) to a new
    SQLite tracking store, then to the same store again `--repeats` times."""
    from sklearn.linear_model import LogisticRegression

    import aisec
    from aisec.report.mlflow_run import log_assessment

    split = load_builtin("digits", seed=0)
    flat = split.train.x.flatten(1).numpy()
    model = LogisticRegression(max_iter=500).fit(flat, split.train.y.numpy())
    plan = {"threat_model": {"budgets": [0.1]}, "probes": {"evasion": {"attacks": ["apgd-ce"]}}}
    result = aisec.assess(model, split.test.x[:100].flatten(1).numpy(), split.test.y[:100].numpy(), plan=plan)
    with tempfile.TemporaryDirectory() as folder:
        paths = result.save(Path(folder) / "reports")
        uri = f"sqlite:///{folder}/mlflow.db"
        start = time.perf_counter()
        log_assessment(result.assessment, paths, None, uri=uri)
        first = time.perf_counter() - start
        again = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            log_assessment(result.assessment, paths, None, uri=uri)
            again.append(time.perf_counter() - start)
    print("\n### MLflow: one assessment logged as a run (reports as artefacts), SQLite store\n")
    print(
        f"New store: {first:.2f} s (MLflow creates its tables). Existing store: median "
        f"{statistics.median(again):.2f} s ({', '.join(f'{v:.2f}' for v in again)})."
    )


# -- resnet: the per-shadow cost the cluster extrapolation in docs/scale.md starts from ------------------------------


class BasicBlock(torch.nn.Module):
    """ResNet's two 3x3 convolutions with a shortcut (He et al. 2016)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs),
        )  # fmt: skip
        self.shortcut = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
            if stride != 1 or inputs != outputs
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18_cifar(classes: int = 10) -> torch.nn.Module:
    """ResNet-18 as CIFAR papers use it (a 3x3 stem, no max-pool): 11.2 M parameters."""
    nn = torch.nn
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    ]
    channels = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def resnet(args: argparse.Namespace) -> None:
    """Training throughput of ResNet-18 on CIFAR-shaped batches (random pixels: the cost does not depend on them)
    on this machine's CPU and, where there is one, on CUDA; and the training FLOPs of one image, counted."""
    from torch.utils.flop_counter import FlopCounterMode

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    batch = 128
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=generator)
    y = torch.randint(10, (batch,), generator=generator)
    model = build_model(resnet18_cifar, 0)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    per_image = counter.get_total_flops() / batch
    print(f"\n### ResNet-18 (CIFAR-10 shape) training cost, batch {batch}\n")
    print(
        f"Training FLOPs per image (forward and backward, counted by torch's FlopCounterMode): {per_image / 1e9:.2f} G"
    )
    print("\n| device | threads | images per second, median | steps timed |")
    print("|---|---|---|---|")
    settings = [("cpu", 1), ("cpu", os.cpu_count() or 1)] + [("cuda", 1) for d in devices if d == "cuda"]
    for device, threads in settings:
        torch.set_num_threads(threads)
        net = build_model(resnet18_cifar, 0).to(device)
        optimiser = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        xs, ys = x.to(device), y.to(device)
        rates = []
        for step in range(args.resnet_steps + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(xs), ys).backward()
            optimiser.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up
                rates.append(batch / (time.perf_counter() - start))
        print(f"| {device} | {threads} | {statistics.median(rates):.1f} | {len(rates)} |")
    torch.set_num_threads(1)


# -- scan: when spreading `aisec scan` over workers pays -------------------------------------------------------------


# Timed in a child process whose main module imports no torch, as `aisec scan`'s does: spawned workers re-import
# the main module, and this benchmark's imports torch.
SCAN_CHILD = """
import json, statistics, sys, time
from pathlib import Path
from aisec.core.executor import LocalProcessExecutor
from aisec.defend.supply_chain import scanner
scanner.SPREAD_MIN_FILES = 2
folder, repeats = Path(sys.argv[1]), int(sys.argv[2])
here, pool = [], []
for _ in range(repeats):
    start = time.perf_counter(); alone = scanner.scan_paths([folder]); here.append(time.perf_counter() - start)
    start = time.perf_counter()
    spread = scanner.scan_paths([folder], executor=LocalProcessExecutor(2))
    pool.append(time.perf_counter() - start)
    assert [f.verdict for f in alone.files] == [f.verdict for f in spread.files]
    assert "torch" not in sys.modules
print(json.dumps([statistics.median(here), statistics.median(pool)]))
"""


def scan(args: argparse.Namespace) -> None:
    """Folders of small pickles scanned in this process and on a pool of two (in a torch-free child process, the
    threshold lowered so that the pool is used): the file count from which a pool pays (SPREAD_MIN_FILES)."""
    import pickle

    rows = []
    for count in args.scan_files:
        with tempfile.TemporaryDirectory() as folder:
            for i in range(count):
                (Path(folder) / f"m{i}.pkl").write_bytes(pickle.dumps({"w": list(range(i % 50))}))
            child = subprocess.run(
                [sys.executable, "-c", SCAN_CHILD, folder, str(args.repeats)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            alone_s, pool_s = json.loads(child.stdout)
            rows.append((count, alone_s, pool_s))
    print("\n### Scanning small pickles: this process against a pool of two (pool start included)\n")
    print("| files | this process (s), median | pool of 2 (s), median | ratio |")
    print("|---|---|---|---|")
    for count, alone_s, pool_s in rows:
        print(f"| {count} | {alone_s:.2f} | {pool_s:.2f} | {pool_s / alone_s:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "parts",
        nargs="*",
        default=["identical", "efficiency", "overhead", "resume", "resnet", "scan", "keys", "mlflow"],
    )
    parser.add_argument("--shadows", type=int, default=64, help="shadow models in the efficiency part")
    parser.add_argument("--plan-shadows", type=int, default=16, help="shadow models in the plans")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks in the overhead part")
    parser.add_argument("--kill-after", type=int, nargs="+", default=[3, 8, 12])
    parser.add_argument("--key-jobs", type=int, default=16, help="jobs in the keys part")
    parser.add_argument("--scan-files", type=int, nargs="+", default=[1000, 2000, 3000, 5000])
    parser.add_argument("--resnet-steps", type=int, default=5, help="training steps timed in the resnet part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts: dict[str, Callable[[argparse.Namespace], None]] = {
        "identical": identical, "efficiency": efficiency, "overhead": overhead, "resume": resume, "resnet": resnet, "scan": scan, "keys": keys, "mlflow": mlflow_logging,
    }  # fmt: skip
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, ray {import_ray().__version__}")
    for part in args.parts:
        parts[part](args)


if __name__ == "__main__":
    main()
