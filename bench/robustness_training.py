"""Adversarial training benchmark: aisec's PGD-AT, TRADES and fast AT against ART's trainers, in one process.

On the digits CNN at L-inf eps 0.1, every model starts from the same seeded weights and trains on the same
data for the same epochs, batch size and optimiser (by default the demo recipe: 30 epochs of batches of 64, Adam
at lr 0.01, so the undefended model is the demo model):

    undefended   plain cross-entropy (aisec's training loop)
    PGD-AT       aisec `adversarial_train(method="pgd")` vs ART's AdversarialTrainerMadryPGD (ratio 1),
                 both PGD with random start, 10 steps of 2.5 eps / 10
    TRADES       aisec `adversarial_train(method="trades")` (KL inner maximisation) vs ART's
                 AdversarialTrainerTRADESPyTorch (its inner attack is ART's cross-entropy PGD, same settings)
    fast AT      aisec `adversarial_train(method="fast")` (FGSM step 1.25 eps from a random start)

aisec's runs include the catastrophic-overfitting guard (PGD-10 on 256 training samples before training and
after every epoch); PGD-AT and TRADES are also timed without it ("no guard": ART's trainers have none), which
trains the same weights unless the guard fires (the script checks, and evaluates the unguarded model when they
differ). ART's attacks craft each training batch whole (their batch_size is set to the training batch size).
Each trained model is evaluated by aisec's full white-box cascade (APGD-CE, APGD-T, FAB-T, Square with a query
budget of 1000) on the first `--samples` test digits. Training time is the median over `--repeats` interleaved
runs (the model evaluated is the first run's); every figure is the median over `--seeds`.

    .venv/bin/python bench/robustness_training.py --seeds 0,1,2            # 30 epochs, 300 samples (~20 min)
    .venv/bin/python bench/robustness_training.py --epochs 5 --samples 100  # quick: about 2 minutes
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from aisec.attacks.evasion.cascade import run_cascade
from aisec.attacks.evasion.registry import STRONGEST
from aisec.core.seeding import build_model
from aisec.core.training import TrainingConfig, accuracy, train
from aisec.data.builtin import load_builtin
from aisec.defend.robustness.adversarial_training import AdversarialTrainingConfig, Method, adversarial_train
from aisec.demo.models import digits_cnn
from aisec.targets.base import Access, InputSpec
from aisec.targets.torch_target import TorchTarget

SPEC = InputSpec((1, 8, 8), 10)


class Whole(nn.Module):
    """The model as one module: ART's PyTorchClassifier returns every layer's output for an nn.Sequential, and
    ART 1.20.1's TRADES trainer then reads the first layer's output as the logits (and fails); wrapped, the
    classifier returns the logits only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def art_trainer(
    kind: str, model: nn.Module, args: argparse.Namespace
) -> Callable[[np.ndarray, np.ndarray], None]:
    """ART's trainer of `kind` ("pgd" or "trades") over `model`, as a fit(x, y) function."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainerMadryPGD, AdversarialTrainerTRADESPyTorch
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=Whole(model),
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
        input_shape=SPEC.shape,
        nb_classes=SPEC.num_classes,
        clip_values=(0.0, 1.0),
    )
    step = 2.5 * args.eps / args.steps
    if kind == "pgd":
        madry = AdversarialTrainerMadryPGD(
            classifier,
            nb_epochs=args.epochs,
            batch_size=args.batch_size,
            eps=args.eps,
            eps_step=step,
            max_iter=args.steps,
            num_random_init=1,
        )
        madry.attack.set_params(batch_size=args.batch_size, verbose=False)
        return lambda x, y: madry.fit(x, y)
    attack = ProjectedGradientDescent(
        classifier,
        eps=args.eps,
        eps_step=step,
        max_iter=args.steps,
        num_random_init=1,
        batch_size=args.batch_size,
        verbose=False,
    )
    trades = AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0)
    return lambda x, y: trades.fit(x, y, batch_size=args.batch_size, nb_epochs=args.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=300, help="test digits the cascade attacks")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10, help="inner PGD steps (PGD-AT, TRADES)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument(
        "--seeds", default="0", help="comma-separated model seeds; figures are medians over them"
    )
    parser.add_argument("--repeats", type=int, default=1, help="training runs timed per trainer (median)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(seed) for seed in args.seeds.split(",")]

    split = load_builtin("digits", seed=0)
    x_np, y_np = split.train.x.numpy(), split.train.y.numpy()
    training = TrainingConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    x, y = split.test.x[: args.samples], split.test.y[: args.samples]
    attacks = STRONGEST[Access.WHITE_BOX]

    def ours(method: Method | None, seed: int, guard: bool = True) -> nn.Module:
        model, generator = build_model(digits_cnn, seed), torch.Generator().manual_seed(seed)
        if method is None:
            return train(model, split.train, training, generator=generator).model
        config = AdversarialTrainingConfig(method, args.eps, steps=args.steps, guard=guard)
        result = adversarial_train(model, split.train, config, training, generator=generator)
        if result.guard is not None and result.guard.rolled_back_to is not None:
            print(f"  {method}: {result.guard.message}")
        return result.model

    def art(kind: str, seed: int) -> nn.Module:
        np.random.seed(seed)  # ART shuffles its batches with numpy's global generator
        model = build_model(digits_cnn, seed)
        art_trainer(kind, model, args)(x_np, y_np)
        return model.eval()

    runs: dict[tuple[str, str], Callable[[int], nn.Module]] = {
        ("undefended", "aisec"): lambda seed: ours(None, seed),
        ("PGD-AT", "aisec"): lambda seed: ours("pgd", seed),
        ("PGD-AT", "aisec, no guard"): lambda seed: ours("pgd", seed, guard=False),
        ("PGD-AT", "ART"): lambda seed: art("pgd", seed),
        ("TRADES", "aisec"): lambda seed: ours("trades", seed),
        ("TRADES", "aisec, no guard"): lambda seed: ours("trades", seed, guard=False),
        ("TRADES", "ART"): lambda seed: art("trades", seed),
        ("fast AT", "aisec"): lambda seed: ours("fast", seed),
    }
    # per key: one (clean, robust, seconds) per seed; a run without the guard trains the same weights as the
    # guarded one until the guard fires, so it is evaluated only when the guard fired
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {key: [] for key in runs}
    for seed in seeds:
        models, seconds = {}, {key: [] for key in runs}
        for repeat in range(args.repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                model = run(seed)
                seconds[key].append(time.perf_counter() - start)
                models.setdefault(key, model)
                print(
                    f"seed {seed} repeat {repeat}: trained {key[0]} ({key[1]}) in {seconds[key][-1]:.1f} s",
                    flush=True,
                )
        for key, model in models.items():
            if key[1] == "aisec, no guard":
                guarded = models[(key[0], "aisec")]
                same = all(
                    torch.equal(a, b) for a, b in zip(model.parameters(), guarded.parameters(), strict=True)
                )
                print(f"seed {seed}: {key[0]} without the guard trained the same weights: {same}")
                if same:
                    figures[key].append(
                        (*figures[(key[0], "aisec")][-1][:2], statistics.median(seconds[key]))
                    )
                    continue
            start = time.perf_counter()
            cascade = run_cascade(
                TorchTarget(model, SPEC), x, y, [args.eps], "linf", attacks, query_budget=1000,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            robust = cascade.outcomes[0].robust_count / len(y)
            figures[key].append((accuracy(model, split.test), robust, statistics.median(seconds[key])))
            print(
                f"seed {seed}: evaluated {key[0]} ({key[1]}) in {time.perf_counter() - start:.1f} s",
                flush=True,
            )

    print(
        f"\ndigits CNN, L-inf eps {args.eps}, {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}; "
        f"clean accuracy on {len(split.test)} test digits, robust accuracy under {' > '.join(attacks)} (query "
        f"budget 1000) on {len(y)}; training seconds: median of {args.repeats} run(s), {args.threads} thread(s); "
        f"each figure the median over seeds {args.seeds} (robust accuracy per seed in brackets)"
    )
    print(
        f"{'method':<11} {'trainer':<16} {'clean':>6} {'robust':>7} {'train s':>8} {'ours/ART':>9}  per seed"
    )
    rows = {}
    for (method, trainer), values in figures.items():
        clean, robust, secs = (statistics.median(column) for column in zip(*values, strict=True))
        rows[(method, trainer)] = (clean, robust, secs)
        ratio = ""
        if trainer != "ART" and (method, "ART") in figures:
            art_secs = [value[2] for value in figures[(method, "ART")]]
            ratio = f"{statistics.median(v[2] / a for v, a in zip(values, art_secs, strict=True)):.2f}"
        per_seed = ", ".join(f"{value[1]:.3f}" for value in values)
        print(
            f"{method:<11} {trainer:<16} {clean:>6.3f} {robust:>7.3f} {secs:>8.1f} {ratio:>9}  [{per_seed}]"
        )
    plain, pgd, fast = rows[("undefended", "aisec")], rows[("PGD-AT", "aisec")], rows[("fast AT", "aisec")]
    for method in ("PGD-AT", "TRADES", "fast AT"):
        clean, robust, _ = rows[(method, "aisec")]
        print(
            f"{method} (aisec) over undefended: robust {robust - plain[1]:+.3f}, clean {clean - plain[0]:+.3f}"
        )
    for method in ("PGD-AT", "TRADES"):
        print(f"{method}: aisec - ART robust {rows[(method, 'aisec')][1] - rows[(method, 'ART')][1]:+.3f}")
    print(f"fast AT vs PGD-AT (aisec): robust {fast[1] - pgd[1]:+.3f} in {fast[2] / pgd[2]:.2f}x the time")


if __name__ == "__main__":
    main()
