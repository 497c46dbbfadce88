"""Calibration study of the model-inspection backdoor detectors on the backdoor model zoo (tests/backdoor_zoo.py).

For every zoo model (digits CNNs of widths 0.5/1/2 trained 10/20/30 epochs, clean or backdoored by dirty-label
poisoning with patch or blended triggers at rates 3-10 %), trained once as a `TrainJob` through aisec's task
runner (`--executor in_process|pool|ray`, `--workers`; the weights kept in the task cache `--cache`, so that a
rerun, or a run cut short, resumes): its clean accuracy and the attack success of its trigger on the test digits
the defender does not hold, then
- Neural Cleanse (Wang et al. 2019, "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
  Networks"), with `--clean-samples` clean test digits: every class's reversed mask norm, the anomaly index,
  norm_ratio, the suspected target and the scan time;
- MM-BD (Wang et al. 2022, "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary Backdoor Pattern
  Types Using a Maximum Margin Statistic"), which needs no clean data: every class's maximum-margin statistic,
  the p-value, the suspected target and the scan time.
Every raw figure goes to the JSON (`--out`, rewritten after each model), so a rule can be re-evaluated
without re-running. The summary gives, per detector score (NC's largest anomaly index, NC's 1 - norm_ratio,
MM-BD's -log10 p), the ROC AUC over the zoo and, for candidate thresholds (the papers' rules, the threshold
that false-alarms on at most one clean model, the one on none, the one that flags 90 % of the backdoored
models), false alarms, detections and right targets. A backdoored model whose trigger reaches an attack success
below 0.8 did not take: it is reported and kept out of the AUCs and detection rates.

    OMP_NUM_THREADS=1 .venv/bin/python bench/inspection.py --zoo test                # smoke test, 6 models
    OMP_NUM_THREADS=1 .venv/bin/python bench/inspection.py > bench/results/inspect_study.log 2>&1   # the study
    OMP_NUM_THREADS=1 .venv/bin/python bench/inspection.py --executor pool --workers 8   # the zoo trained on 8 cores
    .venv/bin/python bench/inspection.py --art    # the ART anchor: what ART 1.20.1 offers an inspecting user
    .venv/bin/python bench/inspection.py --rescore bench/results/inspect_study.json   # the summary again

Every model trains with one torch thread whichever executor trains it, so its weights, and the study's figures,
do not depend on the executor. The training jobs' modules (tests/backdoor_zoo.py) must be importable where they
run: a pool's workers inherit this script's path; Ray's need tests/ on their PYTHONPATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from backdoor_zoo import (  # noqa: E402
    STUDY_ZOO,
    TEST_ZOO,
    ZooModel,
    inspection_data,
    poisoned_training_set,
    scaled_cnn,
    training_set,
)
from torch import nn  # noqa: E402

from aisec.attacks.backdoor.success import measure_backdoor  # noqa: E402
from aisec.core.atomic import write_atomic  # noqa: E402
from aisec.core.executor import make_executor  # noqa: E402
from aisec.core.progress import LineProgress  # noqa: E402
from aisec.core.tasks import TaskCache, TaskRunner, task_key  # noqa: E402
from aisec.core.train_jobs import TrainJob, run_train_job, trained_models  # noqa: E402
from aisec.core.training import accuracy, fit  # noqa: E402
from aisec.data.dataset import LabelledData  # noqa: E402

ROOT = BENCH.parent
TOOK = 0.8  # a backdoor whose attack success stays below this did not take
INPUT_SHAPE = (1, 8, 8)
DETECTOR_SEED = 0  # every scan's generator


# ---------------------------------------------------------------------------------------------- training


def train_job(spec: ZooModel) -> TrainJob:
    """The spec's model as a job: `scaled_cnn(width)` from spec.seed, trained by `fit` for spec.epochs on
    `training_set(spec)`, as backdoor_zoo.train_zoo_model trains it."""
    return TrainJob(
        functools.partial(scaled_cnn, spec.width),
        functools.partial(fit, epochs=spec.epochs),
        training_set(spec),
        spec.seed,
    )


def task_runner(args: argparse.Namespace) -> TaskRunner:
    """The runner the zoo trains through: `--executor` with `--workers`, the weights kept under `--cache`."""
    return TaskRunner(
        make_executor(args.executor, workers=args.workers),
        cache=TaskCache(args.cache),
        progress=LineProgress(sys.stdout),
    )


def train_zoo(specs: Sequence[ZooModel], args: argparse.Namespace) -> tuple[list[nn.Module], dict[str, Any]]:
    """Every spec's model, trained through the task runner in one batch (cached ones read back), and a record
    of the training: executor, workers, jobs run and read back, seconds."""
    runner = task_runner(args)
    try:
        seconds, models = timed(
            lambda: trained_models(runner, [train_job(s) for s in specs], what="zoo models")
        )
    finally:
        runner.close()
    record = {
        "executor": args.executor,
        "workers": args.workers,
        "trained": runner.executed,
        "read_back": runner.reused,
        "seconds": seconds,
        "cache": str(args.cache),
    }
    return models, record


# ---------------------------------------------------------------------------------------------- scanning


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def scan_neural_cleanse(model: nn.Module, clean: LabelledData) -> dict[str, Any]:
    from aisec.defend.supply_chain.behaviour.neural_cleanse import NeuralCleanseConfig, neural_cleanse

    config = NeuralCleanseConfig(samples=len(clean))
    generator = torch.Generator().manual_seed(DETECTOR_SEED)
    seconds, r = timed(lambda: neural_cleanse(model, clean, config, generator=generator))
    return {
        "norms": [t.norm for t in r.triggers],
        "anomaly_index": list(r.anomaly_index),
        "trigger_success": [t.attack_success for t in r.triggers],
        "reached": [t.reached for t in r.triggers],
        "median_norm": r.median_norm,
        "mad": r.mad,
        "norm_ratio": r.norm_ratio,
        "threshold": r.threshold,
        "flagged": r.flagged,
        "suspected_target": r.suspected_target,
        "samples": r.samples,
        "seconds": seconds,
    }


def scan_max_margin(model: nn.Module, clean: LabelledData) -> dict[str, Any]:
    from aisec.defend.supply_chain.behaviour.max_margin import MaxMarginConfig, max_margin_scan

    generator = torch.Generator().manual_seed(DETECTOR_SEED)
    seconds, r = timed(lambda: max_margin_scan(model, INPUT_SHAPE, MaxMarginConfig(), generator=generator))
    return {
        "statistics": list(r.statistics),
        "p_value": r.p_value,
        "alpha": r.alpha,
        "flagged": r.flagged,
        "suspected_target": r.suspected_target,
        "seconds": seconds,
    }


SCANS: dict[str, tuple[str, Callable[[nn.Module, LabelledData], dict[str, Any]]]] = {
    "nc": ("neural_cleanse", scan_neural_cleanse),
    "mmbd": ("max_margin", scan_max_margin),
}


def trigger_record(spec: ZooModel) -> dict[str, Any] | None:
    if spec.trigger is None:
        return None
    return {"kind": type(spec.trigger).__name__, **dataclasses.asdict(spec.trigger)}


def study_model(
    spec: ZooModel, model: nn.Module, clean: LabelledData, evaluation: LabelledData, detectors: Sequence[str]
) -> dict[str, Any]:
    """Every detector run on one trained zoo model: the JSON record of the model."""
    record: dict[str, Any] = {
        "name": spec.name,
        "seed": spec.seed,
        "width": spec.width,
        "epochs": spec.epochs,
        "backdoored": spec.backdoored,
        "trigger": trigger_record(spec),
        "target": spec.target,
        "rate": spec.rate,
        "task_key": task_key(run_train_job, train_job(spec)),
        "clean_accuracy": accuracy(model, evaluation),
        "attack_success": None,
        "took": None,
    }
    if spec.trigger is not None and spec.target is not None:
        success = measure_backdoor(model, evaluation, spec.trigger, spec.target).attack_success
        record["attack_success"], record["took"] = success, success >= TOOK
    for key in detectors:
        field, scan = SCANS[key]
        record[field] = scan(model, clean)
    return record


def model_line(r: dict[str, Any]) -> str:
    parts = [f"{r['name']:<48}", f"acc {r['clean_accuracy']:.3f}"]
    if r["backdoored"]:
        parts.append(f"ASR {r['attack_success']:.3f}{'' if r['took'] else ' (did not take)'}")
    else:
        parts.append(" " * 9)
    if "neural_cleanse" in r:
        nc = r["neural_cleanse"]
        parts.append(
            f"NC index {max(nc['anomaly_index']):5.2f} ratio {nc['norm_ratio']:.3f} -> {nc['suspected_target']} "
            f"({nc['seconds']:.1f} s)"
        )
    if "max_margin" in r:
        mm = r["max_margin"]
        parts.append(f"MM-BD p {mm['p_value']:.2e} -> {mm['suspected_target']} ({mm['seconds']:.1f} s)")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Score:
    """A detector's score of a model (larger = more suspicious), its suspected target, and the papers' rule
    as a threshold on the score (flag when score > threshold)."""

    name: str
    field: str
    value: Callable[[dict[str, Any]], float]
    suspect: Callable[[dict[str, Any]], int | None]
    rules: tuple[tuple[str, float], ...]


def _neg_log10(p: float) -> float:
    return -math.log10(max(p, 1e-300))


SCORES = (
    Score(
        "NC max anomaly index",
        "neural_cleanse",
        lambda nc: max(nc["anomaly_index"]),
        lambda nc: nc["suspected_target"],
        (("paper rule: index > 2", 2.0),),
    ),
    Score(
        "NC 1 - norm_ratio",
        "neural_cleanse",
        lambda nc: 1.0 - nc["norm_ratio"],
        lambda nc: int(np.argmin(nc["norms"])),
        (("module docstring's gap: ratio < 0.7", 0.3),),
    ),
    Score(
        "MM-BD -log10 p",
        "max_margin",
        lambda mm: _neg_log10(mm["p_value"]),
        lambda mm: mm["suspected_target"],
        (("paper rule: p < 0.05", _neg_log10(0.05)),),
    ),
)


def _finite(values: Sequence[float]) -> list[float]:
    return [min(max(v, -1e300), 1e300) for v in values]


def evaluate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per score: AUC (clean vs backdoors that took, and vs all backdoored) and the candidate rules' counts."""
    clean = [r for r in records if not r["backdoored"]]
    took = [r for r in records if r["backdoored"] and r["took"]]
    failed = [r for r in records if r["backdoored"] and not r["took"]]
    summary: dict[str, Any] = {
        "clean_models": len(clean),
        "backdoors_that_took": len(took),
        "backdoors_that_did_not_take": [r["name"] for r in failed],
        "scores": {},
    }
    from sklearn.metrics import roc_auc_score

    for score in SCORES:
        if not all(score.field in r for r in records) or not clean or not took:
            continue
        c = [score.value(r[score.field]) for r in clean]
        b = [score.value(r[score.field]) for r in took]
        f = [score.value(r[score.field]) for r in failed]
        auc = float(roc_auc_score([0] * len(c) + [1] * len(b), _finite(c + b)))
        auc_all = float(roc_auc_score([0] * len(c) + [1] * (len(b) + len(f)), _finite(c + b + f)))
        ranked_clean = sorted(c, reverse=True)
        ranked_b = sorted(b)
        misses = math.floor(0.1 * len(b))  # 90 % detection: at most this many backdoors at or below it
        thresholds = [
            *score.rules,
            ("at most 1 clean flagged", ranked_clean[1] if len(c) > 1 else -math.inf),
            ("no clean flagged", ranked_clean[0]),
            ("flags 90 % of backdoors", float(np.nextafter(ranked_b[misses], -np.inf))),
        ]
        rules = []
        for label, threshold in thresholds:
            flagged = [r for r in took if score.value(r[score.field]) > threshold]
            right = sum(score.suspect(r[score.field]) == r["target"] for r in flagged)
            rules.append(
                {
                    "rule": label,
                    "threshold": threshold,
                    "false_alarms": sum(v > threshold for v in c),
                    "clean": len(c),
                    "detected": len(flagged),
                    "backdoored": len(b),
                    "right_target": right,
                    "missed": [r["name"] for r in took if r not in flagged],
                }
            )
        times = [r[score.field]["seconds"] for r in records]
        summary["scores"][score.name] = {
            "auc": auc,
            "auc_with_failed_backdoors": auc_all,
            "rules": rules,
            "median_seconds": statistics.median(times),
        }
    return summary


def rule_verdicts(records: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], Any]]:
    """Every model with the verdict of aisec inspect's rule (BackdoorScanConfig's defaults, `decide`)."""
    from aisec.defend.supply_chain.behaviour.backdoor_scan import BackdoorScanConfig, decide

    config = BackdoorScanConfig()
    verdicts = []
    for r in records:
        nc, mm = r["neural_cleanse"], r["max_margin"]
        verdict = decide(
            nc["norm_ratio"], int(np.argmin(nc["norms"])), mm["p_value"], mm["suspected_target"], config
        )
        verdicts.append((r, verdict))
    return verdicts


def evaluate_rule(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """False alarms, detections and right targets of aisec inspect's rule, on backdoors that took."""
    from aisec.defend.supply_chain.behaviour.backdoor_scan import BackdoorScanConfig

    verdicts = rule_verdicts(records)
    clean = [v for r, v in verdicts if not r["backdoored"]]
    took = [(r, v) for r, v in verdicts if r["backdoored"] and r["took"]]
    detected = [(r, v) for r, v in took if v.flagged]
    return {
        "rule": BackdoorScanConfig().rule,
        "false_alarms": sum(v.flagged for v in clean),
        "clean": len(clean),
        "detected": len(detected),
        "backdoored": len(took),
        "right_target": sum(v.suspected_target == r["target"] for r, v in detected),
        "false_alarm_models": [r["name"] for r, v in verdicts if not r["backdoored"] and v.flagged],
        "missed": [r["name"] for r, v in took if not v.flagged],
    }


def calibration(document: dict[str, Any]) -> dict[str, Any]:
    """What `aisec inspect` compares a model with: the study's clean models' figures, and the rule's counts."""
    clean = [r for r in document["models"] if not r["backdoored"]]
    return {
        "command": "bench/inspection.py, the study of docs/inspect.md",
        "zoo": "tests/backdoor_zoo.py STUDY_ZOO",
        "rule": evaluate_rule(document["models"]),
        "clean": [
            {
                "name": r["name"],
                "norm_ratio": r["neural_cleanse"]["norm_ratio"],
                "p_value": r["max_margin"]["p_value"],
            }
            for r in clean
        ],
    }


def print_rule(rule: dict[str, Any]) -> None:
    print(
        f"\n## aisec inspect's rule: {rule['rule']}\n\nfalse alarms {rule['false_alarms']}/{rule['clean']}"
        f"{' (' + ', '.join(rule['false_alarm_models']) + ')' if rule['false_alarm_models'] else ''}; "
        f"detected {rule['detected']}/{rule['backdoored']}; right target {rule['right_target']}/{rule['detected']}"
        f"; missed: {', '.join(rule['missed']) or 'none'}"
    )


def plot_roc(records: Sequence[dict[str, Any]], path: Path) -> None:
    """The ROC curve of every detector score over the zoo (backdoors that took against clean models), with
    aisec inspect's rule as a point, as an SVG for docs/inspect.md."""
    import matplotlib

    matplotlib.use("svg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    clean = [r for r in records if not r["backdoored"]]
    took = [r for r in records if r["backdoored"] and r["took"]]
    figure, axes = plt.subplots(figsize=(5.2, 4.2))
    for score in SCORES:
        values = _finite([score.value(r[score.field]) for r in clean + took])
        truth = [0] * len(clean) + [1] * len(took)
        fpr, tpr, _ = roc_curve(truth, values)
        axes.plot(fpr, tpr, label=f"{score.name} (AUC {roc_auc_score(truth, values):.3f})")
    rule = evaluate_rule(records)
    axes.plot(
        [rule["false_alarms"] / rule["clean"]],
        [rule["detected"] / rule["backdoored"]],
        "k*",
        markersize=11,
        label="aisec inspect's rule",
    )
    axes.plot([0, 1], [0, 1], color="0.8", linewidth=0.8)
    axes.set_xlabel(f"false alarms ({len(clean)} clean models)")
    axes.set_ylabel(f"backdoors detected ({len(took)} backdoored models)")
    axes.legend(loc="lower right", fontsize=8, frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    print(f"ROC curves written to {path}")


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\n{summary['clean_models']} clean models, {summary['backdoors_that_took']} backdoored models whose "
        f"backdoor took (attack success >= {TOOK:g}); {len(summary['backdoors_that_did_not_take'])} did not "
        "take and are kept out of the AUCs and detection rates"
        + (
            f": {', '.join(summary['backdoors_that_did_not_take'])}"
            if summary["backdoors_that_did_not_take"]
            else ""
        )
    )
    for name, s in summary["scores"].items():
        print(
            f"\n## {name}: ROC AUC {s['auc']:.3f} (with the failed backdoors counted as backdoored: "
            f"{s['auc_with_failed_backdoors']:.3f}); median scan {s['median_seconds']:.1f} s\n"
        )
        print("| rule | threshold | false alarms | detected | right target |\n|---|---|---|---|---|")
        for rule in s["rules"]:
            print(
                f"| {rule['rule']} | {rule['threshold']:.4g} | {rule['false_alarms']}/{rule['clean']} "
                f"| {rule['detected']}/{rule['backdoored']} | {rule['right_target']}/{rule['detected']} |"
            )


def _json_value(value: Any) -> Any:
    """JSON has no infinities or NaN: they are written as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(_json_value(document), indent=1) + "\n")


def run_study(args: argparse.Namespace) -> None:
    zoo = STUDY_ZOO if args.zoo == "study" else TEST_ZOO
    clean, evaluation = inspection_data(args.clean_samples)
    detectors = args.detectors.split(",")
    document: dict[str, Any] = {
        "command": shlex.join(["bench/inspection.py", *sys.argv[1:]]),
        "zoo": args.zoo,
        "clean_samples": len(clean),
        "evaluation_samples": len(evaluation),
        "detectors": detectors,
        "detector_seed": DETECTOR_SEED,
        "took_threshold": TOOK,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "models": [],
    }
    print(
        f"{args.zoo} zoo: {len(zoo)} models ({sum(s.backdoored for s in zoo)} backdoored); defender's clean "
        f"data {len(clean)} test digits, accuracy and attack success on the other {len(evaluation)}; "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    start = time.perf_counter()
    models, document["training"] = train_zoo(zoo, args)
    write_json(args.out, document)
    for spec, model in zip(zoo, models, strict=True):
        record = study_model(spec, model, clean, evaluation, detectors)
        document["models"].append(record)
        write_json(args.out, document)
        print(model_line(record), flush=True)
    document["total_seconds"] = time.perf_counter() - start
    document["summary"] = evaluate(document["models"])
    write_json(args.out, document)
    print_summary(document["summary"])
    if set(detectors) == set(SCANS):
        print_rule(evaluate_rule(document["models"]))
    print(f"\ntotal {document['total_seconds'] / 60:.1f} min; raw figures in {args.out}")


# ---------------------------------------------------------------------------------------------- ART anchor


def art_classifier(model: nn.Module, *, penultimate: bool = False) -> Any:
    """ART's PyTorchClassifier over a copy of `model`; with `penultimate`, ART's `layer_names` stop before the
    output layer, so its activation-based defences read the last hidden layer (as the papers do)."""
    from art.estimators.classification import PyTorchClassifier

    class Penultimate(PyTorchClassifier):
        @property
        def layer_names(self) -> list[str]:
            return self._layer_names[:-1]

    return (Penultimate if penultimate else PyTorchClassifier)(
        copy.deepcopy(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=INPUT_SHAPE,
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def run_art(args: argparse.Namespace) -> None:
    import art
    from art.defences.detector.poison import (
        ActivationDefence,
        ProvenanceDefense,
        RONIDefense,
        SpectralSignatureDefense,
    )
    from art.defences.transformer.poisoning import STRIP, NeuralCleanse

    zoo = STUDY_ZOO if args.zoo == "study" else TEST_ZOO
    spec = next(s for s in zoo if s.backdoored)
    assert spec.trigger is not None and spec.target is not None
    (model,), _ = train_zoo([spec], args)
    clean, evaluation = inspection_data(args.clean_samples)
    print(f"ART {art.__version__} on zoo model {spec.name}\n")

    try:
        NeuralCleanse(art_classifier(model))
        print("NeuralCleanse(PyTorchClassifier): constructed")
    except Exception as exc:  # noqa: BLE001 (ART's refusal is the result)
        print(f"NeuralCleanse(PyTorchClassifier): {type(exc).__name__}: {exc}")

    print("\nART's poison detectors and what their constructors take:")
    for cls in (ActivationDefence, SpectralSignatureDefense, ProvenanceDefense, RONIDefense):
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        print(f"  {cls.__name__}({', '.join(params)})")

    poisoned = poisoned_training_set(spec)
    x_train = poisoned.data.x.numpy()
    y_train = np.eye(10, dtype=np.float32)[poisoned.data.y.numpy()]
    defence = ActivationDefence(art_classifier(model, penultimate=True), x_train, y_train)
    np.random.seed(0)  # ART draws from numpy's global generator
    seconds, (_, is_clean) = timed(lambda: defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA"))
    flags = torch.tensor(is_clean) == 0
    caught, planted = int((flags & poisoned.poisoned).sum()), int(poisoned.poisoned.sum())
    print(
        f"\nActivationDefence with the poisoned training set ({len(x_train)} samples, {planted} poisoned; last "
        f"hidden layer, 2 clusters, 10 PCA dims): flags {int(flags.sum())}, precision "
        f"{caught / max(int(flags.sum()), 1):.3f}, recall {caught / planted:.3f}, {seconds:.1f} s"
    )
    in_target = flags & (poisoned.data.y == spec.target)
    print(
        f"  of which labelled the target {spec.target}: {int(in_target.sum())} (precision "
        f"{caught / max(int(in_target.sum()), 1):.3f}); ART's 'smaller' analysis flags the smaller of the two "
        "clusters of every class, so the other classes' flags are all false"
    )

    strip_model = art_classifier(
        nn.Sequential(model, nn.Softmax(dim=1))
    )  # STRIP's entropy wants probabilities
    strip = STRIP(strip_model)()
    with contextlib.redirect_stderr(io.StringIO()):  # ART's progress bar
        strip.mitigate(clean.x.numpy())
    others = evaluation.y != spec.target
    triggered = spec.trigger.apply(evaluation.x[others])

    def abstains(x: torch.Tensor) -> float:
        return float((strip.predict(x.numpy()).sum(axis=1) == 0).mean())

    print(
        f"STRIP with the {len(clean)} clean digits only (false acceptance rate 0.01): abstains on "
        f"{abstains(evaluation.x):.3f} of clean test digits and {abstains(triggered):.3f} of triggered ones; "
        "a filter of single inputs at run time, it gives no verdict on the model"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", choices=("study", "test"), default="study")
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "bench/results/cache/inspect_zoo",
        help="the task cache: every trained model's weights, read back by a rerun",
    )
    parser.add_argument(
        "--executor",
        choices=("in_process", "pool", "ray"),
        default="in_process",
        help="where the zoo trains: here, a pool of processes on this machine, or a Ray started for the run",
    )
    parser.add_argument("--workers", type=int, help="models trained at once (default: one per CPU core)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/inspect_study.json")
    parser.add_argument("--clean-samples", type=int, default=300)
    parser.add_argument(
        "--detectors", default="nc,mmbd", help="comma-separated: nc (Neural Cleanse), mmbd (MM-BD)"
    )
    parser.add_argument("--art", action="store_true", help="run the ART anchor instead of the study")
    parser.add_argument(
        "--rescore", type=Path, help="print the summary of a study JSON written before, without scanning"
    )
    parser.add_argument(
        "--write-calibration",
        type=Path,
        help="with --rescore: write the clean models' figures and the rule's counts that aisec inspect reports "
        "beside every scan (src/aisec/defend/supply_chain/behaviour/zoo_calibration.json)",
    )
    parser.add_argument(
        "--roc", type=Path, help="with --rescore: draw the ROC curves as an SVG (docs/inspect_roc.svg)"
    )
    args = parser.parse_args()
    if args.write_calibration is not None and args.rescore is None:
        parser.error("--write-calibration needs --rescore STUDY_JSON")
    if args.rescore is not None:
        document = json.loads(args.rescore.read_text())
        print_summary(evaluate(document["models"]))
        if all("neural_cleanse" in r and "max_margin" in r for r in document["models"]):
            print_rule(evaluate_rule(document["models"]))
        if args.roc is not None:
            plot_roc(document["models"], args.roc)
        if args.write_calibration is not None:
            write_json(args.write_calibration, calibration(document))
            print(f"calibration written to {args.write_calibration}")
        print(f"\n{len(document['models'])} models of {document['command']}")
        return
    unknown = set(args.detectors.split(",")) - set(SCANS)
    if unknown:
        parser.error(f"unknown detectors {sorted(unknown)}; choose from {sorted(SCANS)}")
    if args.workers is not None and (args.workers < 1 or args.executor == "in_process"):
        parser.error("--workers: a positive count, with --executor pool or ray")
    torch.set_num_threads(1)
    (run_art if args.art else run_study)(args)


if __name__ == "__main__":
    main()
