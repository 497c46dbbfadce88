"""Randomized smoothing benchmark: aisec's CERTIFY (aisec.defend.robustness.certification.smoothing)
against IBM ART's PyTorchRandomizedSmoothing.certify, in one process, on the same noise-trained digits CNN,
the same test points and the same sigma, n0, N and alpha (Cohen, Rosenfeld & Kolter, ICML 2019).

The model is the digits CNN trained by `train_with_noise` (sigma as given, the demo recipe: Adam lr 0.01, 30
epochs, batch 64) from the seed. ART wraps that same model: `sample_size` is its n0 (the selection samples),
`certify(x, n=N)` draws the N estimation samples; both sides get the same batch size (samples per forward
pass) unless --art-batch-size gives ART another (its own default is 32). ART's Clopper-Pearson bound needs
statsmodels, which ART does not declare (`pip install statsmodels`).

For each N the table gives the certified accuracy at radii 0, 0.25, 0.5 and 0.75 with its exact
(Clopper-Pearson) 95 % interval over the points, the share of points on which the two agree on the
prediction, the median absolute difference of their radii (all from the first run, seeded by --seed), the
median wall and CPU time of `--repeats` runs (seeds --seed, --seed + 1, ...) with their ratios (CPU time is
the steadier figure on a shared machine), and the CPU time of drawing the noise and running the model's
forward passes alone over as many samples, which neither side can go below. A certified accuracy "matches"
when each side's figure lies inside the other's interval.

    .venv/bin/python bench/robustness_smoothing.py                      # 100 points, N 1000 and 10000
    .venv/bin/python bench/robustness_smoothing.py --n 1000 --repeats 1  # a quick run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn

from aisec.core.seeding import build_model
from aisec.core.training import accuracy
from aisec.data.builtin import load_builtin
from aisec.defend.robustness.certification.smoothing import smoothing_certify, train_with_noise
from aisec.demo.models import digits_cnn

RADII = (0.0, 0.25, 0.5, 0.75)
Run = tuple[tuple[float, float], np.ndarray, np.ndarray]  # (wall, CPU) seconds, predictions, radii


def interval(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided 95 % interval of k successes in n."""
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


def certified_accuracy(prediction: np.ndarray, radius: np.ndarray, y: np.ndarray, r: float) -> int:
    """How many points are predicted correctly with a certified radius >= r (Cohen et al.'s count)."""
    return int(((prediction == y) & (radius >= r)).sum())


def art_certify(model: nn.Module, x: np.ndarray, args: argparse.Namespace, n: int, seed: int) -> Run:
    """ART's certify on `x` with the bench's settings; its noise comes from numpy's global generator, which
    the bench seeds here (a benchmark script, not library code)."""
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    smoothed = PyTorchRandomizedSmoothing(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=args.n0,
        scale=args.sigma,
        alpha=args.alpha,
    )
    np.random.seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    prediction, radius = smoothed.certify(x, n=n, batch_size=args.art_batch_size or args.batch_size)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    return seconds, np.asarray(prediction), np.asarray(radius, dtype=np.float64)


def ours_certify(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, n: int, seed: int) -> Run:
    cpu = time.process_time()
    result = smoothing_certify(
        model,
        x,
        sigma=args.sigma,
        n0=args.n0,
        n=n,
        alpha=args.alpha,
        batch_size=args.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = (result.seconds, time.process_time() - cpu)
    return seconds, result.prediction.numpy(), result.radius.numpy()


def forward_floor(model: nn.Module, x: torch.Tensor, samples: int, sigma: float, batch_size: int) -> float:
    """CPU seconds of drawing the noise and running the model's forward passes over `samples` noisy copies
    of `x` per input, in passes of `batch_size`, nothing else: what both sides must spend. (Noisy copies, not
    clean ones: the max-pooling kernel runs about a third slower on them.)"""
    total, cpu = len(x) * samples, time.process_time()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for begin in range(0, total, batch_size):
            clean = x[torch.arange(begin, min(begin + batch_size, total)) // samples]
            model(clean + sigma * torch.randn(clean.shape, generator=generator))
    return time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100, help="test points certified (default 100)")
    parser.add_argument("--n", default="1000,10000", help="estimation sample counts N (default 1000,10000)")
    parser.add_argument("--n0", type=int, default=100, help="selection samples n0 (default 100)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000, help="noisy samples per forward pass")
    parser.add_argument("--art-batch-size", type=int, help="ART's samples per pass (default: --batch-size)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side; times are medians")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("art").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    split = load_builtin("digits", seed=0)
    start = time.perf_counter()
    trained = train_with_noise(
        build_model(digits_cnn, args.seed),
        split.train,
        args.sigma,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, train_seconds = trained.model, time.perf_counter() - start
    points = split.test.subset(args.points, seed=args.seed)
    x, y = points.x, points.y.numpy()
    print(
        f"# Randomized smoothing: aisec vs ART {__import__('art').__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(
        f"digits CNN noise-trained at sigma {args.sigma} (seed {args.seed}, {train_seconds:.1f} s,"
        f" clean test accuracy {accuracy(model, split.test):.3f}); {len(y)} test points, n0 {args.n0}, "
        f"alpha {args.alpha}, {args.batch_size} samples per forward pass (ART: "
        f"{args.art_batch_size or args.batch_size}), median of {args.repeats} run(s)\n"
    )
    header = (
        ["N", "side"] + [f"cert. acc. @ {r} [95 % CI]" for r in RADII] + ["abstain", "seconds", "CPU seconds"]
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    summary = []
    for n in (int(v) for v in args.n.split(",")):
        runs: dict[str, list[Run]] = {"aisec": [], "ART": []}
        for repeat in range(args.repeats):
            runs["aisec"].append(ours_certify(model, x, args, n, args.seed + repeat))
            runs["ART"].append(art_certify(model, x.numpy(), args, n, args.seed + repeat))
        seconds = {
            side: statistics.median(run[0][0] for run in side_runs) for side, side_runs in runs.items()
        }
        cpu = {side: statistics.median(run[0][1] for run in side_runs) for side, side_runs in runs.items()}
        counts = {
            side: [certified_accuracy(r[1], r[2], y, radius) for radius in RADII]
            for side, (r, *_) in runs.items()
        }
        for side, (first, *_) in runs.items():
            cells = []
            for k in counts[side]:
                low, high = interval(k, len(y))
                cells.append(f"{k / len(y):.2f} [{low:.2f}, {high:.2f}]")
            abstain = int((first[1] == -1).sum())
            print(
                f"| {n} | {side} | "
                + " | ".join(cells)
                + f" | {abstain} | {seconds[side]:.2f} | {cpu[side]:.2f} |"
            )
        ours, art = runs["aisec"][0], runs["ART"][0]
        floor = forward_floor(model.eval(), x, args.n0 + n, args.sigma, args.batch_size)
        matches = all(
            interval(b, len(y))[0] <= a / len(y) <= interval(b, len(y))[1]
            and interval(a, len(y))[0] <= b / len(y) <= interval(a, len(y))[1]
            for a, b in zip(counts["aisec"], counts["ART"], strict=True)
        )
        summary.append(
            f"N {n}: time ratio aisec / ART {seconds['aisec'] / seconds['ART']:.2f} (wall), "
            f"{cpu['aisec'] / cpu['ART']:.2f} (CPU); noise and forward passes alone take {floor:.2f} CPU s, "
            f"{floor / cpu['ART']:.2f} of ART's; same prediction on "
            f"{float((ours[1] == art[1]).mean()):.2f} of the points; median |radius difference| "
            f"{float(np.median(np.abs(ours[2] - art[2]))):.4f}; certified accuracies match within the 95 % "
            f"intervals at every radius: {'yes' if matches else 'NO'}"
        )
    print()
    for line in summary:
        print(f"- {line}")


if __name__ == "__main__":
    main()
