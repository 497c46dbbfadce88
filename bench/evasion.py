"""Evasion benchmark: aisec against a bare torch loop (the floor), ART and torchattacks, in one process.

Part 1, PGD-40 L-inf on the same model and samples: wall time of each (median over interleaved repeats),
the ratio to the floor, and the success rate of each.
Part 2, the whole robust-accuracy curve (5 budgets): aisec's cascade (APGD-CE, APGD-T, FAB-T, Square)
against ART's AutoAttack at each budget: robust accuracy and wall time.

    make bench                       # or: .venv/bin/python bench/evasion.py --samples 1000
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from aisec.attacks.evasion.cascade import run_cascade
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.attacks.evasion.registry import STRONGEST
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.demo.models import digits_cnn
from aisec.targets.base import Access, InputSpec
from aisec.targets.torch_target import TorchTarget


def floor_pgd(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, gen: torch.Generator
) -> torch.Tensor:
    """The least work PGD can do: random start, then `steps` forward/backward passes w.r.t. the input only."""
    alpha = 2.5 * eps / steps
    x_adv = (x + (2 * torch.rand(x.shape, generator=gen, device=x.device) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def success(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) != y).float().mean())


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.03, 0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default="pgd,curve", help="comma-separated: pgd, curve")
    parser.add_argument("--curve-samples", type=int, default=1000, help="samples for part 2 (the first ones)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from art.estimators.classification import PyTorchClassifier

    split = load_builtin("digits", seed=0)
    model = fit(build_model(digits_cnn, 0), split.train, seed=0).to(args.device)
    # 1,000 samples: the 540 held-out digits, then training digits (speed does not depend on which)
    x = torch.cat([split.test.x, split.train.x])[: args.samples].to(args.device)
    y = torch.cat([split.test.y, split.train.y])[: args.samples].to(args.device)
    target = TorchTarget(model, InputSpec((1, 8, 8), 10), device=args.device)
    art_clf = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if args.device == "cuda" else "cpu",
    )
    print(f"# device={args.device} threads={args.threads} torch={torch.__version__}")

    parts = {p.strip() for p in args.parts.split(",")}
    if "pgd" in parts:
        bench_pgd(args, model, target, art_clf, x, y)
    if "curve" in parts:
        n = args.curve_samples
        bench_curve(args, model, target, art_clf, x[:n], y[:n])


def bench_pgd(args: argparse.Namespace, model, target, art_clf, x: torch.Tensor, y: torch.Tensor) -> None:  # noqa: ANN001
    """Part 1: PGD-40 of each implementation, interleaved repeats, medians and ratios to the floor."""
    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    eps, steps = args.eps, 40
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    runners: dict[str, Callable[[int], float]] = {
        "floor (bare torch loop)": lambda s: success(
            model, floor_pgd(model, x, y, eps, steps, torch.Generator(args.device).manual_seed(s)), y
        ),
        "aisec pgd (early_stop=False)": lambda s: (
            pgd(
                target,
                x,
                y,
                PGDConfig(eps=eps, steps=steps, early_stop=False),
                generator=torch.Generator(args.device).manual_seed(s),
            ).success_rate
        ),
        "aisec pgd (default)": lambda s: (
            pgd(
                target,
                x,
                y,
                PGDConfig(eps=eps, steps=steps),
                generator=torch.Generator(args.device).manual_seed(s),
            ).success_rate
        ),
        "torchattacks PGD": lambda s: success(
            model,
            torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)(x, y),
            y,
        ),
        "ART ProjectedGradientDescentPyTorch": lambda s: success(
            model,
            torch.as_tensor(
                ProjectedGradientDescentPyTorch(
                    art_clf,
                    eps=eps,
                    eps_step=2.5 * eps / steps,
                    max_iter=steps,
                    num_random_init=1,
                    batch_size=len(x),
                    verbose=False,
                ).generate(x_np, y_np),
                device=args.device,
            ),
            y,
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for run in runners.values():  # warm-up
        run(0)
    for r in range(args.repeats):
        for name, run in runners.items():  # interleaved, so drift on a shared machine hits all alike
            t, rate = timed(functools.partial(run, r + 1))
            times[name].append(t)
            rates[name].append(rate)
    floor = statistics.median(times["floor (bare torch loop)"])
    sys.stdout.flush()
    print(f"\n## PGD-40 L-inf eps={eps}, {len(x)} samples, median of {args.repeats}\n")
    print("| implementation | median s | x floor | success rate |\n|---|---|---|---|")
    for name in runners:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.3f} | {med / floor:.3f} | {statistics.median(rates[name]):.3f} |")


def bench_curve(args: argparse.Namespace, model, target, art_clf, x: torch.Tensor, y: torch.Tensor) -> None:  # noqa: ANN001
    """Part 2: the robust-accuracy curve from aisec's cascade and from ART's AutoAttack, same budgets."""
    from art.attacks.evasion import AutoAttack

    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    print(f"\n## Robust-accuracy curve, {len(x)} samples, budgets {args.budgets}\n")
    t, cascade = timed(
        lambda: run_cascade(
            target,
            x,
            y,
            args.budgets,
            "linf",
            STRONGEST[Access.WHITE_BOX],
            query_budget=5000,
            generator=torch.Generator(args.device).manual_seed(0),
        )
    )
    ours = {o.eps: o.robust_count / len(x) for o in cascade.outcomes}
    print(f"#   aisec cascade, 5 budgets: {t:.1f} s, robust accuracy {ours}", flush=True)
    art_acc, art_time = {}, 0.0
    for b in args.budgets:
        attack = AutoAttack(art_clf, norm=np.inf, eps=b, eps_step=2.5 * b / 100, batch_size=len(x))
        tb, x_adv = timed(functools.partial(attack.generate, x_np, y_np))
        art_time += tb
        art_acc[b] = 1 - success(model, torch.as_tensor(x_adv, device=args.device), y)
        print(f"#   ART AutoAttack eps={b}: {tb:.1f} s, robust accuracy {art_acc[b]:.3f}", flush=True)
    print("\n| budget | aisec cascade robust acc | ART AutoAttack robust acc |\n|---|---|---|")
    for b in args.budgets:
        print(f"| {b:g} | {ours[b]:.3f} | {art_acc[b]:.3f} |")
    print(
        f"\n| tool | total s | ratio |\n|---|---|---|\n| aisec cascade (5 budgets) | {t:.1f} | 1.00 |\n"
        f"| ART AutoAttack (5 budgets) | {art_time:.1f} | {art_time / t:.2f} |"
    )


if __name__ == "__main__":
    main()
