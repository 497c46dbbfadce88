"""Privacy benchmark: aisec's membership-inference and extraction attacks against IBM ART's, in one process,
on the same victims, records and query pools.

Part 1 (membership): the overfit digits MLP of tests/test_membership.py (200 members, 1,000 non-members, the
attacker's population of 597 digits, 64 shadow models of the victim's architecture and training recipe).
aisec: loss threshold, LiRA online/offline, RMIA online/offline (shadow training counted in the wall time),
and the label-only gap and noise-robustness attacks; ART: MembershipInferenceBlackBoxRuleBased,
MembershipInferenceBlackBox ('nn' and 'rf' attack models trained on ART's own ShadowModels: 64 models, the
same architecture and recipe, on the population) and LabelOnlyDecisionBoundary with HopSkipJump capped
(max_iter 10, max_eval 1,000: the --lo-* flags). Every attack's AUC and TPR at 0.1 % / 1 % FPR come from the
same ROC code (aisec.attacks.inference.roc.roc_curve), ART's from infer(..., probabilities=True).
Part 2 (equation): Tramer et al.'s equation solving on scikit-learn logistic regressions (no ART anchor: ART's
FunctionallyEquivalentExtraction needs a 1-hidden-layer ReLU network), with ART's CopycatCNN at the same
number of queries as a reference.
Part 3 (learning): the digits MLP of tests/test_extraction.py, queries from the attacker's mirrored digits,
the same surrogate architecture, initial weights and training recipe: aisec extract_surrogate natural/active
against ART CopycatCNN and KnockoffNets random/adaptive, at each query budget.

    .venv/bin/python bench/privacy.py > bench/results/privacy.md     # about 7 minutes on 2 CPU cores
    .venv/bin/python bench/privacy.py --quick                        # smoke run, under a minute
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aisec.attacks.extraction.equation_solving import extract_linear, extract_linear_adaptive
from aisec.attacks.extraction.equation_solving_labels import extract_linear_from_labels
from aisec.attacks.extraction.learning import LearningConfig, default_surrogate, extract_surrogate
from aisec.attacks.extraction.metrics import accuracy, agreement, parameter_error
from aisec.attacks.inference.label_only import gap_attack, noise_robustness_attack
from aisec.attacks.inference.membership import (
    MembershipResult,
    ShadowTrainer,
    lira,
    loss_threshold_attack,
    rmia,
    train_shadows,
)
from aisec.attacks.inference.roc import roc_curve
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.targets.base import InputSpec
from aisec.targets.callable_target import CallableTarget
from aisec.targets.sklearn_models import sklearn_target
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only, scores_only

DIGITS = InputSpec((1, 8, 8), 10)
FLAT = {"breast_cancer": InputSpec((30,), 2), "digits": InputSpec((64,), 10)}
MEMBERS, NON_MEMBERS = 200, 1000
EPOCHS = 100  # the victim's and every shadow model's recipe: Adam lr 1e-2, batch 64, 100 epochs
FIT = functools.partial(fit, epochs=EPOCHS)


def mlp() -> nn.Module:
    """The membership victim's architecture (tests/test_membership.py)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def repeated(fn: Callable[[int], Any], repeats: int) -> tuple[float, list[Any]]:
    """Median wall time of fn(seed) over seeds 0..repeats-1, and every result."""
    times, values = [], []
    for seed in range(repeats):
        t, value = timed(functools.partial(fn, seed))
        times.append(t)
        values.append(value)
    return statistics.median(times), values


def med(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------- ART wrappers


@functools.cache
def _art():  # noqa: ANN202
    from art.estimators.classification import PyTorchClassifier

    class Counting(PyTorchClassifier):
        """PyTorchClassifier that counts the samples it is asked to predict (`queries`, the victim's queries)
        and trains with the victim's recipe when called without arguments, as ART's ShadowModels calls `fit`."""

        queries = 0

        def predict(self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False, **kwargs):  # noqa: ANN003, ANN201
            self.queries += len(x)
            x = np.asarray(x, dtype=np.float32)  # ART's HopSkipJump sends float64 to the float32 model
            return super().predict(x, batch_size=batch_size, training_mode=training_mode, **kwargs)

        def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64, nb_epochs: int = EPOCHS, **kwargs):  # noqa: ANN003, ANN201
            return super().fit(x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs)

    return Counting


class Whole(nn.Module):
    """`module` as one opaque module: ART's PyTorchClassifier runs an nn.Sequential child by child, which skips
    the forward of aisec's converted scikit-learn models (an nn.Sequential subclass that flattens its input)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def art_classifier(model: nn.Module, shape: tuple[int, ...], classes: int, *, lr: float | None = None):  # noqa: ANN201
    """An ART PyTorchClassifier over `model` (CPU, inputs in [0, 1]); trainable with Adam at `lr` if given."""
    optimizer = None if lr is None else torch.optim.Adam(model.parameters(), lr=lr)
    return _art()(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=classes,
        optimizer=optimizer,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def art_scores(values: np.ndarray) -> torch.Tensor:
    """An ART membership probability column as float64 scores for roc_curve."""
    return torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(len(values), -1)[:, -1])


# ---------------------------------------------------------------------------------------------- part 1


@dataclass
class Row:
    """One attack's figures: ROC figures, shadow models, victim queries, seconds (shadows, attack)."""

    name: str
    auc: float
    tpr_low: float
    tpr_one: float
    shadows: int
    queries: int | str
    shadow_s: float
    attack_s: float
    note: str = ""

    @property
    def total(self) -> float:
        return self.shadow_s + self.attack_s


def roc_row(name: str, scores: torch.Tensor, members: torch.Tensor, **kw: Any) -> Row:
    roc = roc_curve(scores, members)
    return Row(name, roc.auc, roc.tpr_at(0.001), roc.tpr_at(0.01), **kw)


def ours_row(result: MembershipResult, name: str, shadow_s: float, attack_s: float) -> Row:
    return Row(
        name,
        result.auc,
        result.tpr_at[0.001],
        result.tpr_at[0.01],
        result.shadows,
        result.queries,
        shadow_s,
        attack_s,
    )


def bench_membership(args: argparse.Namespace) -> None:
    from art.attacks.inference.membership_inference import (
        LabelOnlyDecisionBoundary,
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
        ShadowModels,
    )

    n_shadows, repeats = args.shadows, args.repeats
    # the Setting of tests/test_membership.py, seed for seed
    split = load_builtin("digits", seed=0)
    x_all, y_all = torch.cat([split.train.x, split.test.x]), torch.cat([split.train.y, split.test.y])
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
    x_all, y_all = x_all[order], y_all[order]
    n = MEMBERS + NON_MEMBERS
    x, y = x_all[:n], y_all[:n]
    members = torch.arange(n) < MEMBERS
    population = LabelledData(x_all[n:], y_all[n:], "population")
    victim = FIT(build_model(mlp, 12345), LabelledData(x[:MEMBERS], y[:MEMBERS]), seed=12345)
    with torch.no_grad():
        train_acc = float((victim(x[:MEMBERS]).argmax(1) == y[:MEMBERS]).float().mean())
        test_acc = float((victim(x[MEMBERS:]).argmax(1) == y[MEMBERS:]).float().mean())
    print(
        f"\n## Membership inference: overfit digits MLP, {MEMBERS} members / {NON_MEMBERS} non-members, "
        f"population {len(population)}, {n_shadows} shadow models (victim train acc {train_acc:.3f}, "
        f"non-member acc {test_acc:.3f})\n",
        flush=True,
    )
    rows: list[Row] = []
    trainer = ShadowTrainer(mlp, FIT)

    def target() -> TorchTarget:
        return TorchTarget(victim, DIGITS)

    # --- aisec: shadows trained once (online pool: the records and the population), then each attack
    shadow_s, shadows = timed(
        lambda: train_shadows(
            target(), x, y, trainer, population=population, n_shadows=n_shadows, train_size=MEMBERS, seed=1
        )
    )
    print(
        f"#   aisec: {n_shadows} shadow models (online pool, {len(x) + len(population)} records) "
        f"in {shadow_s:.1f} s (once)",
        flush=True,
    )
    pop_s, pop_shadows = timed(
        lambda: train_shadows(
            target(),
            x,
            y,
            trainer,
            population=population,
            n_shadows=n_shadows,
            online=False,
            train_size=MEMBERS,
            seed=2,
        )
    )
    print(
        f"#   aisec: {n_shadows} shadow models (population only, as ART's) in {pop_s:.1f} s (once)",
        flush=True,
    )
    runs: list[tuple[str, float, Callable[[], MembershipResult]]] = [
        ("aisec loss threshold", 0.0, lambda: loss_threshold_attack(target(), x, y, members=members)),
        ("aisec LiRA online", shadow_s, lambda: lira(target(), x, y, shadows, members=members)),
        (
            "aisec LiRA offline (OUT models of the online shadows)",
            shadow_s,
            lambda: lira(target(), x, y, shadows, online=False, members=members),
        ),
        ("aisec RMIA online", shadow_s, lambda: rmia(target(), x, y, shadows, members=members)),
        (
            "aisec RMIA offline (OUT models of the online shadows)",
            shadow_s,
            lambda: rmia(target(), x, y, shadows, online=False, members=members),
        ),
        (
            "aisec LiRA offline (population-only shadows)",
            pop_s,
            lambda: lira(target(), x, y, pop_shadows, online=False, members=members),
        ),
        (
            "aisec RMIA offline (population-only shadows)",
            pop_s,
            lambda: rmia(target(), x, y, pop_shadows, online=False, members=members),
        ),
        ("aisec gap (labels only)", 0.0, lambda: gap_attack(label_only(target()), x, y, members=members)),
        (
            "aisec noise robustness (labels only, sigma 0.1, 100 copies)",
            0.0,
            lambda: noise_robustness_attack(label_only(target()), x, y, sigma=0.1, members=members),
        ),
    ]
    for name, s, run in runs:
        attack_s, results = repeated(lambda _seed, run=run: run(), repeats)
        result = results[0]  # deterministic given the shadows
        rows.append(
            ours_row(result, name + ("" if "RMIA" not in name else f" [{result.attack}]"), s, attack_s)
        )

    # --- ART: the same victim behind PyTorchClassifier
    victim_art = art_classifier(victim, (1, 8, 8), 10)
    x_np, y_np = x.numpy(), y.numpy()

    def queries_of(fn: Callable[[], Any]) -> tuple[Any, int]:
        before = victim_art.queries
        value = fn()
        return value, victim_art.queries - before

    rule = MembershipInferenceBlackBoxRuleBased(victim_art)
    rule_s, rule_out = repeated(
        lambda _s: queries_of(lambda: rule.infer(x_np, y_np, probabilities=True)), repeats
    )
    probs, q = rule_out[0]
    rows.append(
        roc_row(
            "ART BlackBoxRuleBased (member iff correctly classified)",
            art_scores(probs),
            members,
            shadows=0,
            queries=q,
            shadow_s=0.0,
            attack_s=rule_s,
        )
    )

    torch.manual_seed(0)
    np.random.seed(0)
    template = art_classifier(mlp(), (1, 8, 8), 10, lr=1e-2)
    art_shadows = ShadowModels(template, num_shadow_models=n_shadows, random_state=1)
    pop_x, pop_y = population.x.numpy(), population.y.numpy()
    # each shadow model trains on 200 of the population records, as the victim trained on 200 (ART's rule:
    # int(len * member_ratio) records, the rest but the last one out)
    ratio = (MEMBERS + 0.5) / len(pop_x)
    art_shadow_s, shadow_data = timed(
        lambda: art_shadows.generate_shadow_dataset(pop_x, pop_y, member_ratio=ratio)
    )
    (mx, my, mpred), (nx, ny, npred) = shadow_data
    print(
        f"#   ART: {n_shadows} shadow models (population only) in {art_shadow_s:.1f} s (once); attack "
        f"training set {len(mpred)} members + {len(npred)} non-members",
        flush=True,
    )

    for kind, label in (("nn", "ART BlackBox, attack model 'nn'"), ("rf", "ART BlackBox, attack model 'rf'")):
        kind_repeats = repeats if kind == "rf" else args.nn_repeats

        def fit_and_infer(seed: int, kind: str = kind) -> tuple[Any, int]:
            torch.manual_seed(seed)
            np.random.seed(seed)
            attack = MembershipInferenceBlackBox(
                victim_art, attack_model_type=kind, nn_model_epochs=args.nn_epochs
            )
            if kind == "rf":
                attack.attack_model.set_params(random_state=seed)
            attack.fit(y=my, pred=mpred, test_y=ny, test_pred=npred)
            return queries_of(lambda: attack.infer(x_np, y_np, probabilities=True))

        attack_s, outs = repeated(fit_and_infer, kind_repeats)
        figures = [
            roc_row(
                label,
                art_scores(p),
                members,
                shadows=n_shadows,
                queries=q,
                shadow_s=art_shadow_s,
                attack_s=attack_s,
            )
            for p, q in outs
        ]
        row = figures[0]
        for field in ("auc", "tpr_low", "tpr_one"):
            setattr(row, field, med([getattr(f, field) for f in figures]))
        row.note = f"median of {kind_repeats} seeds" if kind_repeats > 1 else "one seed"
        rows.append(row)
        print(
            f"#   {label}: fit + infer {attack_s:.1f} s, AUC per seed {[round(f.auc, 3) for f in figures]}",
            flush=True,
        )

    if args.label_only:
        rows.extend(
            bench_label_only(
                args,
                LabelOnlyDecisionBoundary,
                victim_art,
                art_shadows,
                shadow_data,
                x_np,
                y_np,
                members,
                queries_of,
                art_shadow_s,
            )
        )

    print(
        "\n| attack | shadows | victim queries | AUC | TPR@0.1% FPR | TPR@1% FPR | shadows s | attack s | total s |"
        "\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        note = f" ({r.note})" if r.note else ""
        print(
            f"| {r.name}{note} | {r.shadows} | {r.queries} | {r.auc:.3f} | {r.tpr_low:.3f} | {r.tpr_one:.3f} "
            f"| {r.shadow_s:.1f} | {r.attack_s:.3f} | {r.total:.1f} |"
        )
    by = {
        r.name.split(" [")[0].split(" (")[0] if r.name.startswith("ART") else r.name.split(" [")[0]: r
        for r in rows
    }
    pairs = [
        ("aisec loss threshold", "ART BlackBoxRuleBased"),
        ("aisec LiRA offline (population-only shadows)", "ART BlackBox, attack model 'nn'"),
        ("aisec LiRA offline (population-only shadows)", "ART BlackBox, attack model 'rf'"),
        ("aisec RMIA offline (population-only shadows)", "ART BlackBox, attack model 'rf'"),
        ("aisec LiRA online", "ART BlackBox, attack model 'rf'"),
        (
            "aisec noise robustness (labels only, sigma 0.1, 100 copies)",
            "ART LabelOnlyDecisionBoundary, score = HSJ distance",
        ),
    ]
    print(
        "\n| aisec | ART | AUC ours / ART | TPR@0.1% ours / ART | TPR@1% ours / ART | total s ours / ART "
        "| time ratio ours/ART |\n|---|---|---|---|---|---|---|"
    )
    for ours, theirs in pairs:
        if ours in by and theirs in by:
            a, b = by[ours], by[theirs]
            print(
                f"| {ours} | {theirs} | {a.auc:.3f} / {b.auc:.3f} | {a.tpr_low:.3f} / {b.tpr_low:.3f} "
                f"| {a.tpr_one:.3f} / {b.tpr_one:.3f} | {a.total:.1f} / {b.total:.1f} "
                f"| {a.total / b.total:.2f} |"
            )
    sys.stdout.flush()


def bench_label_only(
    args: argparse.Namespace,
    attack_cls: type,
    victim_art: Any,
    art_shadows: Any,
    shadow_data: Any,
    x_np: np.ndarray,
    y_np: np.ndarray,
    members: torch.Tensor,
    queries_of: Callable,
    art_shadow_s: float,
) -> list[Row]:
    """ART's LabelOnlyDecisionBoundary (HopSkipJump distance to the boundary), on a capped subset: threshold
    calibrated on shadow model 0 with its known members (not on the victim's), then the victim attacked."""
    (mx, my, _), (nx, ny, _) = shadow_data
    k_cal, k_mem, k_non = args.lo_calibrate, args.lo_members, args.lo_non_members
    hsj = {
        "norm": 2,
        "max_iter": args.lo_iter,
        "max_eval": args.lo_max_eval,
        "init_eval": 100,
        "init_size": 100,
        "verbose": False,
    }
    np.random.seed(0)
    shadow0 = art_shadows.get_shadow_models()[0]
    n_in = len(art_shadows.get_shadow_models_train_sets()[0][0])
    n_out = len(nx) // len(art_shadows.get_shadow_models())
    calibrator = attack_cls(shadow0)
    cal_s, _ = timed(
        lambda: calibrator.calibrate_distance_threshold(
            mx[:n_in][:k_cal], my[:n_in][:k_cal], nx[:n_out][:k_cal], ny[:n_out][:k_cal], **hsj
        )
    )
    # the records under attack: the first k_mem members and the first k_non non-members
    pick = np.r_[np.arange(k_mem), MEMBERS + np.arange(k_non)]
    attack = attack_cls(victim_art, distance_threshold_tau=float(calibrator.distance_threshold_tau))
    # with no bins ART scores sigmoid(distance - tau): monotone in the HopSkipJump distance
    attack_s, (probs, q) = timed(
        lambda: queries_of(lambda: attack.infer(x_np[pick], y_np[pick], probabilities=True, **hsj))
    )
    p = np.clip(np.asarray(probs, dtype=np.float64)[:, 1], 1e-300, 1 - 1e-16)
    distance = attack.distance_threshold_tau + np.log(p / (1 - p))
    shipped = np.zeros_like(distance)  # ART's own probabilities after calibration: the bin's accuracy
    for bound, acc in calibrator.threshold_bins:
        shipped[distance > bound] = acc
    truth = members[torch.as_tensor(pick)]
    cap = (
        f"{k_mem} members + {k_non} non-members; HSJ L2 max_iter={args.lo_iter}, max_eval={args.lo_max_eval}; "
        f"tau calibrated on a shadow with {k_cal}+{k_cal} records in {cal_s:.0f} s"
    )
    print(
        f"#   ART LabelOnlyDecisionBoundary: {cap}; attack {attack_s:.1f} s, {q} victim queries", flush=True
    )
    return [
        roc_row(
            "ART LabelOnlyDecisionBoundary, score = HSJ distance",
            torch.as_tensor(distance),
            truth,
            shadows=1,
            queries=q,
            shadow_s=art_shadow_s / len(art_shadows.get_shadow_models()),
            attack_s=cal_s + attack_s,
            note=cap,
        ),
        roc_row(
            "ART LabelOnlyDecisionBoundary, ART's binned probabilities",
            torch.as_tensor(shipped),
            truth,
            shadows=1,
            queries=q,
            shadow_s=art_shadow_s / len(art_shadows.get_shadow_models()),
            attack_s=cal_s + attack_s,
            note="same run",
        ),
    ]


# ---------------------------------------------------------------------------------------------- part 2


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).double().numpy()


def bench_equation(args: argparse.Namespace) -> None:
    print("\n## Equation solving on scikit-learn LogisticRegression (held-out agreement)\n", flush=True)
    rows = [row for name in FLAT for row in _equation_rows(args, name)]
    print("| data | attack | queries | agreement | parameter error | median s |\n|---|---|---|---|---|---|")
    for name, label, q, agree, err, seconds in rows:
        err_s = "-" if err is None else f"{err:.1e}"
        print(f"| {name} | {label} | {q} | {agree:.4f} | {err_s} | {seconds:.3f} |")
    sys.stdout.flush()


def _equation_rows(args: argparse.Namespace, name: str) -> list[tuple]:
    """aisec's solvers on one logistic regression (tests/test_extraction.py), and ART's CopycatCNN with as many
    queries as extract_linear spends."""
    from art.attacks.extraction import CopycatCNN
    from sklearn.linear_model import LogisticRegression

    spec = FLAT[name]
    split = load_builtin(name, seed=0)
    model = LogisticRegression(max_iter=5000).fit(_flat(split.train.x), split.train.y.numpy())
    held = split.test.x.reshape(len(split.test.x), -1)
    coef, intercept = torch.tensor(model.coef_), torch.tensor(model.intercept_)

    def serve(x: np.ndarray, decimals: int | None = None) -> np.ndarray:
        p = model.predict_proba(x.astype(np.float64))
        return p if decimals is None else np.round(p, decimals)

    def exact(seed: int) -> Any:
        target = CallableTarget(serve, spec)
        return target, extract_linear(target)

    def rounded(seed: int) -> Any:
        target = CallableTarget(functools.partial(serve, decimals=3), spec)
        return target, extract_linear_adaptive(target, 130, generator=torch.Generator().manual_seed(seed))

    budget = 300 if name == "breast_cancer" else 7000

    def labels(seed: int) -> Any:
        target = label_only(CallableTarget(serve, spec))
        return target, extract_linear_from_labels(
            target, budget, generator=torch.Generator().manual_seed(seed)
        )

    cases = [("aisec extract_linear, exact probabilities", exact)]
    if name == "digits":
        cases.append(("aisec extract_linear_adaptive, probabilities rounded to 3 decimals", rounded))
    if name == "breast_cancer" or not args.quick:
        cases.append((f"aisec extract_linear_from_labels, labels only, budget {budget}", labels))
    rows = []
    for label, attack in cases:

        def run(seed: int, attack: Callable[[int], Any] = attack) -> tuple[int, float, float]:
            target, result = attack(seed)
            return result.queries, agreement(result, target, held), parameter_error(result, coef, intercept)

        seconds, outs = repeated(run, args.repeats)
        rows.append((name, label, outs[0][0], med([o[1] for o in outs]), med([o[2] for o in outs]), seconds))

    # the nearest ART anchor: CopycatCNN on the victim's probabilities with as many queries as extract_linear,
    # drawn from the training split, a linear surrogate trained with Adam (lr 1e-2, batch 64, 60 epochs)
    d = spec.shape[0]
    victim = sklearn_target(model, spec)
    victim_art = art_classifier(
        nn.Sequential(Whole(victim.module), nn.Softmax(dim=1)), spec.shape, spec.num_classes
    )
    x_pool = split.train.x.reshape(len(split.train.x), -1).numpy()
    truth = victim.labels(held).numpy()

    def copycat(seed: int) -> tuple[int, float]:
        np.random.seed(seed)
        torch.manual_seed(seed)
        thief = art_classifier(nn.Linear(d, spec.num_classes), spec.shape, spec.num_classes, lr=1e-2)
        before = victim_art.queries
        stolen = CopycatCNN(
            victim_art,
            batch_size_fit=64,
            batch_size_query=64,
            nb_epochs=60,
            nb_stolen=d + 1,
            use_probability=True,
        ).extract(x_pool, thieved_classifier=thief)
        return victim_art.queries - before, float((stolen.predict(held.numpy()).argmax(1) == truth).mean())

    seconds, outs = repeated(copycat, args.repeats)
    label = "ART CopycatCNN (use_probability), as many queries, linear surrogate"
    rows.append((name, label, outs[0][0], med([o[1] for o in outs]), None, seconds))
    return rows


# ---------------------------------------------------------------------------------------------- part 3


def bench_learning(args: argparse.Namespace) -> None:
    from art.attacks.extraction import CopycatCNN, KnockoffNets
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    split = load_builtin("digits", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
        model.fit(_flat(split.train.x), split.train.y.numpy())
    victim = sklearn_target(model, DIGITS)
    pool = split.train.x.flip(-1).contiguous()  # the attacker's data: training digits mirrored left to right
    pool_np, pool_y = pool.numpy(), split.train.y.numpy()
    test = split.test
    truth = victim.labels(test.x)
    victim_logits = art_classifier(Whole(victim.module), (1, 8, 8), 10)
    victim_probs = art_classifier(nn.Sequential(Whole(victim.module), nn.Softmax(dim=1)), (1, 8, 8), 10)
    config = LearningConfig()  # epochs 60, lr 1e-2, batch 64: ART's thief is trained the same way
    print(
        f"\n## Learning-based extraction: digits MLP victim (test acc {float((truth == test.y).float().mean()):.3f}), "
        f"pool {len(pool)} mirrored digits, surrogate 64-128-10 ReLU MLP",
        flush=True,
    )

    def initial(seed: int) -> nn.Module:
        return build_model(functools.partial(default_surrogate, DIGITS), 1000 + seed)

    def ours(source: str, labels: bool, budget: int, seed: int) -> tuple[float, float, int]:
        target = scores_only(victim)
        result = extract_surrogate(
            target,
            budget,
            LearningConfig(source=source, labels_only=labels),
            data=pool,
            surrogate=initial(seed),
            generator=torch.Generator().manual_seed(seed),
        )
        return agreement(result, victim, test.x), accuracy(result, test), result.queries

    def art(attack: str, probability: bool, budget: int, seed: int) -> tuple[float, float, int]:
        np.random.seed(seed)
        torch.manual_seed(seed)
        thief = art_classifier(initial(seed), (1, 8, 8), 10, lr=config.lr)
        common = {
            "batch_size_fit": config.batch_size,
            "batch_size_query": 64,
            "nb_epochs": config.epochs,
            "nb_stolen": budget,
        }
        served = victim_probs if probability else victim_logits
        before = served.queries
        if attack == "copycat":
            stolen = CopycatCNN(served, use_probability=probability, **common).extract(
                pool_np, thieved_classifier=thief
            )
        elif attack == "random":
            stolen = KnockoffNets(
                served, sampling_strategy="random", use_probability=probability, verbose=False, **common
            ).extract(pool_np, thieved_classifier=thief)
        else:  # adaptive: labels of the attacker's own data as actions; the victim's logits for the rewards
            stolen = KnockoffNets(
                served, sampling_strategy="adaptive", reward="all", verbose=False, **common
            ).extract(pool_np, pool_y, thieved_classifier=thief)
        queries = served.queries - before
        logits = torch.as_tensor(stolen.predict(test.x.numpy()))
        agree = float((logits.argmax(1) == truth).float().mean())
        return agree, float((logits.argmax(1) == test.y).float().mean()), queries

    runners: dict[str, Callable[[int, int], tuple[float, float, int]]] = {
        "aisec natural (probabilities)": functools.partial(ours, "natural", False),
        "aisec natural (labels only)": functools.partial(ours, "natural", True),
        "aisec active, pool (probabilities)": functools.partial(ours, "active", False),
        "aisec active, pool (labels only)": functools.partial(ours, "active", True),
        "ART CopycatCNN (labels)": functools.partial(art, "copycat", False),
        "ART CopycatCNN (use_probability)": functools.partial(art, "copycat", True),
        "ART KnockoffNets random (labels)": functools.partial(art, "random", False),
        "ART KnockoffNets random (use_probability)": functools.partial(art, "random", True),
        "ART KnockoffNets adaptive (labels, reward 'all')": functools.partial(art, "adaptive", False),
    }
    pairs = [
        ("aisec natural (probabilities)", "ART KnockoffNets random (use_probability)"),
        ("aisec natural (labels only)", "ART CopycatCNN (labels)"),
        ("aisec active, pool (probabilities)", "ART KnockoffNets adaptive (labels, reward 'all')"),
        ("aisec active, pool (labels only)", "ART KnockoffNets adaptive (labels, reward 'all')"),
    ]
    for run in runners.values():  # warm-up (first calls pay for lazy initialisation)
        run(min(args.budgets), 99)
    for budget in args.budgets:
        times: dict[str, list[float]] = {k: [] for k in runners}
        figs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in runners}
        for seed in range(args.repeats):
            for name, run in runners.items():  # interleaved, so drift on a shared machine hits all alike
                t, out = timed(functools.partial(run, budget, seed))
                times[name].append(t)
                figs[name].append(out)
        print(f"\n### Query budget {budget}, median of {args.repeats} seeds\n")
        print(
            "| attack | victim queries | agreement (held-out) | surrogate accuracy | median s |\n|---|---|---|---|---|"
        )
        for name in runners:
            f = figs[name]
            print(
                f"| {name} | {f[0][2]} | {med([a for a, _, _ in f]):.3f} | {med([b for _, b, _ in f]):.3f} "
                f"| {med(times[name]):.2f} |"
            )
        print("\n| aisec | ART | agreement ours / ART | time ratio ours/ART |\n|---|---|---|---|")
        for a, b in pairs:
            print(
                f"| {a} | {b} | {med([f[0] for f in figs[a]]):.3f} / {med([f[0] for f in figs[b]]):.3f} "
                f"| {med(times[a]) / med(times[b]):.2f} |"
            )
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        default="membership,equation,learning",
        help="comma-separated: membership, equation, learning",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 shadows, 1 repeat, small caps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of the quick parts (median)")
    parser.add_argument("--shadows", type=int, default=64)
    parser.add_argument(
        "--nn-epochs", type=int, default=100, help="ART's 'nn' attack model epochs (its default)"
    )
    parser.add_argument("--nn-repeats", type=int, default=1, help="seeds of ART's 'nn' attack model (slow)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--no-label-only", dest="label_only", action="store_false")
    parser.add_argument("--lo-members", type=int, default=200, help="label-only: members attacked")
    parser.add_argument("--lo-non-members", type=int, default=1000, help="label-only: non-members attacked")
    parser.add_argument("--lo-calibrate", type=int, default=50, help="label-only: shadow records per side")
    parser.add_argument("--lo-iter", type=int, default=10, help="label-only: HopSkipJump iterations")
    parser.add_argument("--lo-max-eval", type=int, default=1000, help="label-only: HopSkipJump max_eval")
    args = parser.parse_args()
    if args.quick:
        args.shadows, args.repeats, args.nn_epochs, args.budgets = 16, 1, 10, [500]
        args.lo_members, args.lo_non_members, args.lo_calibrate, args.lo_iter = 10, 20, 10, 2
    torch.set_num_threads(args.threads)
    logging.getLogger("art").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import art
    import sklearn

    print(
        f"# threads={args.threads} torch={torch.__version__} art={art.__version__} sklearn={sklearn.__version__}"
        f" quick={args.quick} shadows={args.shadows} repeats={args.repeats}"
    )
    parts = {p.strip() for p in args.parts.split(",")}
    if "membership" in parts:
        bench_membership(args)
    if "equation" in parts:
        bench_equation(args)
    if "learning" in parts:
        bench_learning(args)


if __name__ == "__main__":
    main()
