"""Backdoor-defence benchmark: aisec's training-set screening and Neural Cleanse against IBM ART's, in one
process, on the same poisoned data and the same backdoored model.

Part 1 (detection): digits (load_builtin seed 0, 1,257 training samples), a BadNets 3x3 white square in the
bottom-right corner planted into 1 %, 5 % and 10 % of the training set (dirty label, target class 0), and a
blended noise trigger (alpha 0.2) at 10 %; the demo's digits CNN trained on each poisoned set (seed 0).
aisec: `screen_for_backdoor` (reference distance, spectral signatures and activation clustering with the
reference rules, the held-out digits as the trusted reference; their union is what it removes), each of those
three alone, and the papers' own rules without a reference (activation clustering's size rule, spectral
signatures' 1.5 epsilon rule with epsilon = the true rate). ART: `ActivationDefence` (2 clusters, 10 PCA
dimensions, each of its cluster analyses) and `SpectralSignatureDefense` (expected_pp_poison = the true rate,
and its default 0.33), on the same model wrapped in a `PyTorchClassifier`. ART reads the last entry of
`layer_names`, which for an nn.Sequential is the output layer (the logits); the rows marked "penultimate" give
ART the last hidden layer instead (the layer its `layer_names` documentation promises and the papers use).
For every detector: flags, precision and recall against the planted poison, then the figure that matters,
the attack success and clean accuracy of the model retrained without the flagged samples (seed 0). Wall time
is the median of --repeats interleaved runs (seeds 0..repeats-1), feature extraction included on both sides,
the shared training of the backdoored model excluded; flags, precision, recall and retraining are those of
seed 0, with the range over the seeds where a detector's flags depend on its seed.
Part 2 (neural_cleanse): aisec's `neural_cleanse` on the 10 % BadNets model and on a model trained on the clean
training set, with 300 clean held-out digits, seeds 0..repeats-1; ART's `NeuralCleanse` is tried on the same
models (1.20.1 accepts only Keras classifiers: the table records its error).

    .venv/bin/python bench/backdoor.py > bench/results/backdoor.md   # 6.5 min, 1 thread, busy 2-core box
    .venv/bin/python bench/backdoor.py --parts neural_cleanse            # Neural Cleanse only
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import BackdoorMeasurement, measure_backdoor
from aisec.attacks.backdoor.triggers import BlendTrigger, PatchTrigger, Trigger
from aisec.attacks.poisoning.result import PoisonedData
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.activation_clustering import activation_clustering
from aisec.defend.data_quality.features import penultimate_features
from aisec.defend.data_quality.reference import Reference
from aisec.defend.data_quality.reference_distance import reference_distance
from aisec.defend.data_quality.screening import screen_for_backdoor
from aisec.defend.data_quality.spectral_signatures import SpectralSignaturesConfig, spectral_signatures
from aisec.demo.models import digits_cnn

TARGET = 0
CLASSES = 10
SQUARE = PatchTrigger(pattern="square")
BLEND = BlendTrigger()
# ours read the last hidden layer: their times are compared with ART's detectors on that layer
ART_AC = "ART ActivationDefence smaller, penultimate layer"
ART_SS = "ART SpectralSignatureDefense = rate, penultimate layer"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def train(data: LabelledData) -> nn.Module:
    """The victim's recipe: the demo CNN, seed 0."""
    return fit(build_model(digits_cnn, 0), data, seed=0)


# ---------------------------------------------------------------------------------------------- ART wrappers


@functools.cache
def _art_classes() -> tuple[type, type]:
    from art.estimators.classification import PyTorchClassifier

    class Penultimate(PyTorchClassifier):
        """`layer_names` without the output layer, as ART documents it ("input and output layers are
        ignored"): ART's detectors then read the last hidden layer, not the logits."""

        @property
        def layer_names(self) -> list[str]:
            return self._layer_names[:-1]

    return PyTorchClassifier, Penultimate


def art_classifier(model: nn.Module, *, penultimate: bool = False):  # noqa: ANN201
    """A fresh ART PyTorchClassifier over a copy of `model`: ART's get_activations leaves forward hooks on the
    module it is given, which must not reach the shared model or pile up over repeats."""
    plain, last_hidden = _art_classes()
    return (last_hidden if penultimate else plain)(
        copy.deepcopy(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=CLASSES,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def art_flags(is_clean: list[int]) -> torch.Tensor:
    return torch.tensor(is_clean) == 0


# ---------------------------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class Detector:
    """A detector: `run(seed)` gives its flags; `setup()` builds what must not be timed (ART's classifier)
    and is passed to `run`; `anchor` names the ART row its time is compared with (ours only)."""

    name: str
    run: Callable[[Any, int], torch.Tensor]
    setup: Callable[[], Any] = lambda: None
    anchor: str | None = None


def ours(model: nn.Module, poisoned: PoisonedData, reference: LabelledData, rate: float) -> list[Detector]:
    data = poisoned.data

    def with_reference(
        detect: Callable[[torch.Tensor, Reference, int], Any],
    ) -> Callable[[Any, int], torch.Tensor]:
        def run(_: Any, seed: int) -> torch.Tensor:
            trusted = Reference(penultimate_features(model, reference.x), reference.y)
            return detect(penultimate_features(model, data.x), trusted, seed).flagged

        return run

    return [
        Detector(
            "aisec screen_for_backdoor (union of the 3 below)",
            lambda _, seed: screen_for_backdoor(model, data, reference, seed=seed).combined.flagged,
            anchor=ART_AC,
        ),
        Detector(
            "aisec reference distance",
            with_reference(lambda f, ref, _: reference_distance(f, data.y, ref)),
            anchor=ART_AC,
        ),
        Detector(
            "aisec spectral signatures, reference rule",
            with_reference(lambda f, ref, _: spectral_signatures(f, data.y, reference=ref)),
            anchor=ART_SS,
        ),
        Detector(
            "aisec activation clustering, reference rule",
            with_reference(lambda f, ref, seed: activation_clustering(f, data.y, reference=ref, seed=seed)),
            anchor=ART_AC,
        ),
        Detector(
            "aisec activation clustering, size rule (paper)",
            lambda _, seed: (
                activation_clustering(penultimate_features(model, data.x), data.y, seed=seed).flagged
            ),
            anchor=ART_AC,
        ),
        Detector(
            "aisec spectral signatures, epsilon = rate (paper)",
            lambda _, seed: (
                spectral_signatures(
                    penultimate_features(model, data.x), data.y, SpectralSignaturesConfig(expected_rate=rate)
                ).flagged
            ),
            anchor=ART_SS,
        ),
    ]


def art(model: nn.Module, poisoned: PoisonedData, rate: float) -> list[Detector]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    x = poisoned.data.x.numpy()
    y = np.eye(CLASSES, dtype=np.float32)[poisoned.data.y.numpy()]

    def activation(analysis: str) -> Callable[[Any, int], torch.Tensor]:
        def run(classifier: Any, seed: int) -> torch.Tensor:
            np.random.seed(seed)  # ART's KMeans and MiniBatchKMeans draw from numpy's global generator
            _, is_clean = ActivationDefence(classifier, x, y).detect_poison(
                nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis=analysis
            )
            return art_flags(is_clean)

        return run

    def spectral(expected: float) -> Callable[[Any, int], torch.Tensor]:
        def run(classifier: Any, _: int) -> torch.Tensor:
            return art_flags(
                SpectralSignatureDefense(classifier, x, y, expected_pp_poison=expected).detect_poison()[1]
            )

        return run

    plain, last_hidden = art_classifier, functools.partial(art_classifier, penultimate=True)
    return [
        Detector("ART ActivationDefence smaller (defaults)", activation("smaller"), lambda: plain(model)),
        Detector("ART ActivationDefence distance", activation("distance"), lambda: plain(model)),
        Detector("ART ActivationDefence relative-size", activation("relative-size"), lambda: plain(model)),
        Detector(
            "ART ActivationDefence silhouette-scores", activation("silhouette-scores"), lambda: plain(model)
        ),
        Detector(
            "ART SpectralSignatureDefense expected_pp_poison = rate", spectral(rate), lambda: plain(model)
        ),
        Detector("ART SpectralSignatureDefense default (0.33)", spectral(0.33), lambda: plain(model)),
        Detector(ART_AC, activation("smaller"), lambda: last_hidden(model)),
        Detector(ART_SS, spectral(rate), lambda: last_hidden(model)),
    ]


# ---------------------------------------------------------------------------------------------- part 1


@dataclass
class Row:
    """A detector's figures: its flags for each seed (seed 0 first), median seconds, or the error it raised."""

    name: str
    flags: list[torch.Tensor] = field(default_factory=list)
    seconds: float = float("nan")
    error: str = ""
    anchor: str | None = None


def run_detectors(detectors: list[Detector], repeats: int) -> list[Row]:
    """Every detector once untimed (warm-up), then `repeats` interleaved timed runs with seeds 0..repeats-1."""
    rows = {d.name: Row(d.name, anchor=d.anchor) for d in detectors}
    times: dict[str, list[float]] = {d.name: [] for d in detectors}
    for seed in [None, *range(repeats)]:
        for d in detectors:
            row = rows[d.name]
            if row.error:
                continue
            state = d.setup()
            try:
                t, flags = timed(functools.partial(d.run, state, 0 if seed is None else seed))
            except Exception as exc:  # noqa: BLE001 (an anchor's failure is a result to report)
                row.error = f"{type(exc).__name__} (seed {0 if seed is None else seed}): {exc}"
                continue
            if seed is None:
                continue
            times[d.name].append(t)
            row.flags.append(flags)
    for name, ts in times.items():
        if ts:
            rows[name].seconds = statistics.median(ts)
    return list(rows.values())


class Retrainer:
    """Attack success and clean accuracy after retraining without the flagged samples; each distinct flag
    set is trained once."""

    def __init__(self, poisoned: PoisonedData, test: LabelledData, trigger: Trigger, backdoored: nn.Module):
        self.poisoned, self.test, self.trigger = poisoned, test, trigger
        self.cache: dict[bytes, BackdoorMeasurement] = {
            bytes(np.packbits(np.zeros(len(poisoned.poisoned), dtype=bool))): self.measure(backdoored)
        }

    def measure(self, model: nn.Module) -> BackdoorMeasurement:
        return measure_backdoor(model, self.test, self.trigger, TARGET)

    def __call__(self, flags: torch.Tensor) -> BackdoorMeasurement:
        key = bytes(np.packbits(flags.numpy()))
        if key not in self.cache:
            self.cache[key] = self.measure(train(self.poisoned.without(flags)))
        return self.cache[key]


def bench_detection(args: argparse.Namespace, split: Any) -> None:
    settings = [(SQUARE, "BadNets 3x3 square", r) for r in args.rates]
    settings += [(BLEND, "blend (alpha 0.2 noise)", r) for r in args.blend_rates]
    for trigger, label, rate in settings:
        poisoned = plant_backdoor(
            split.train, trigger, TARGET, rate, generator=torch.Generator().manual_seed(1)
        )
        train_s, model = timed(functools.partial(train, poisoned.data))
        retrain = Retrainer(poisoned, split.test, trigger, model)
        before = retrain(torch.zeros(len(poisoned.poisoned), dtype=torch.bool))
        n_poison = int(poisoned.poisoned.sum())
        print(
            f"\n## {label}, rate {rate:g}: {n_poison} of {len(poisoned.poisoned)} training samples poisoned, "
            f"target {TARGET}\n\nbackdoored model: attack success {before.attack_success:.3f} on "
            f"{before.triggered} triggered test digits, clean accuracy {before.clean_accuracy:.3f} "
            f"(trained in {train_s:.1f} s, not counted)\n",
            flush=True,
        )
        rows = run_detectors(
            ours(model, poisoned, split.test, rate) + art(model, poisoned, rate), args.repeats
        )
        seconds = {r.name: r.seconds for r in rows}
        print(
            "| method | flagged | precision | recall | ASR after retraining | clean acc after | median s "
            "| time ours/ART |\n|---|---|---|---|---|---|---|---|"
        )
        print(
            f"| no removal | 0 | - | 0.000 | {before.attack_success:.3f} | {before.clean_accuracy:.3f} | - | - |"
        )
        oracle = retrain(poisoned.poisoned)
        print(
            f"| oracle: remove exactly the poison | {n_poison} | 1.000 | 1.000 | {oracle.attack_success:.3f} "
            f"| {oracle.clean_accuracy:.3f} | - | - |"
        )
        for row in rows:
            if row.error:
                print(f"| {row.name} | error: {row.error} | | | | | | |")
                continue
            flags = row.flags[0]
            flagged, caught = int(flags.sum()), int((flags & poisoned.poisoned).sum())
            precision = f"{caught / flagged:.3f}" if flagged else "-"
            after = retrain(flags)
            ratio = f"{row.seconds / seconds[row.anchor]:.2f} (vs {row.anchor})" if row.anchor else "-"
            counts = [int(f.sum()) for f in row.flags]
            recalls = [int((f & poisoned.poisoned).sum()) / n_poison for f in row.flags]
            spread = any(not torch.equal(f, flags) for f in row.flags)
            flagged_cell = f"{flagged} (seeds: {min(counts)}-{max(counts)})" if spread else f"{flagged}"
            recall_cell = (
                f"{recalls[0]:.3f} ({min(recalls):.3f}-{max(recalls):.3f})" if spread else f"{recalls[0]:.3f}"
            )
            print(
                f"| {row.name} | {flagged_cell} | {precision} | {recall_cell} | {after.attack_success:.3f} | "
                f"{after.clean_accuracy:.3f} | {row.seconds:.3f} | {ratio} |",
                flush=True,
            )


# ---------------------------------------------------------------------------------------------- part 2


def bench_neural_cleanse(args: argparse.Namespace, split: Any) -> None:
    from aisec.defend.supply_chain.behaviour.neural_cleanse import NeuralCleanseConfig, neural_cleanse

    config = NeuralCleanseConfig()
    rate = 0.1
    poisoned = plant_backdoor(split.train, SQUARE, TARGET, rate, generator=torch.Generator().manual_seed(1))
    models = {f"BadNets square {rate:g}, target {TARGET}": train(poisoned.data), "clean": train(split.train)}
    print(
        f"\n## Neural Cleanse: {config.samples} clean held-out digits, {config.epochs} epochs, anomaly threshold "
        f"{config.anomaly_threshold:g}, seeds 0..{args.repeats - 1}, median time\n"
    )
    print(
        "| model | tool | anomaly index of class 0, per seed | largest index, per seed | flagged | suspected target "
        "| median s |"
        "\n|---|---|---|---|---|---|---|"
    )
    for label, model in models.items():
        results, times = [], []
        for seed in range(args.repeats):
            run = functools.partial(
                neural_cleanse, model, split.test, config, generator=torch.Generator().manual_seed(seed)
            )
            t, result = timed(run)
            times.append(t)
            results.append(result)
        index0 = ", ".join(f"{r.anomaly_index[TARGET]:.2f}" for r in results)
        top = ", ".join(f"{max(r.anomaly_index):.2f}" for r in results)
        suspects = [r.suspected_target for r in results]
        print(
            f"| {label} | aisec neural_cleanse | {index0} | {top} "
            f"| {sum(r.flagged for r in results)}/{len(results)} | {', '.join(map(str, suspects))} "
            f"| {statistics.median(times):.1f} |",
            flush=True,
        )
        print(f"| {label} | ART NeuralCleanse | {art_neural_cleanse(model)} | | | | |", flush=True)


def art_neural_cleanse(model: nn.Module) -> str:
    """What ART 1.20.1 does when asked for Neural Cleanse on the PyTorch model: the error, verbatim."""
    try:
        from art.defences.transformer.poisoning import NeuralCleanse

        NeuralCleanse(art_classifier(model))
    except Exception as exc:  # noqa: BLE001 (the anchor's failure is the result)
        first = f"transformer.poisoning.NeuralCleanse: {type(exc).__name__}: {exc}"
    else:
        return "constructed (not expected: ART 1.20.1 accepts only KerasClassifier)"
    try:
        from art.estimators.poison_mitigation.neural_cleanse import KerasNeuralCleanse

        KerasNeuralCleanse(model=model)
    except Exception as exc:  # noqa: BLE001
        return f"error: {first}; KerasNeuralCleanse: {type(exc).__name__}: {exc}"
    return f"error: {first}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", default="detection,neural_cleanse", help="comma-separated: detection, neural_cleanse"
    )
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="BadNets poison rates"
    )
    parser.add_argument(
        "--blend-rates", type=float, nargs="*", default=[0.1], help="blend-trigger rates (none: skip)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median), seeds 0..repeats-1")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = parser.parse_args()
    import art
    import scipy.linalg  # noqa: F401 (loads scipy's OpenBLAS, so that the limit below reaches it)
    import sklearn
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    from aisec.data.builtin import load_builtin

    torch.set_num_threads(args.threads)
    # numpy's and scipy's OpenBLAS start one thread per core: on a busy machine, PCA's SVD of a (125, 64)
    # matrix then takes 0.15 s instead of 4 ms. The limit reaches only the libraries already loaded.
    threadpool_limits(args.threads)
    logging.getLogger("art").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(
        f"# threads={args.threads} torch={torch.__version__} art={art.__version__} sklearn={sklearn.__version__}"
        f" repeats={args.repeats} parts={args.parts}"
        f" blas_threads={sorted({i['num_threads'] for i in threadpool_info()})}"
    )
    split = load_builtin("digits", seed=0)
    parts = {p.strip() for p in args.parts.split(",")}
    t0 = time.perf_counter()
    if "detection" in parts:
        bench_detection(args, split)
    if "neural_cleanse" in parts:
        bench_neural_cleanse(args, split)
    print(f"\n# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
