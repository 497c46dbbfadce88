"""The backdoor probe: what an attacker who writes part of the training set can plant, and whether the
controls find and remove it.

For each trigger and poison rate of the plan the training set is poisoned (aisec.attacks.backdoor), the model
retrained with the plan's recipe and measured on the evaluation half of the assessment data: attack success and
clean accuracy (AISEC-BKD-001). The other half is the defender's trusted reference: the screening
(aisec.defend.data_quality.screening) flags suspects, the model is retrained without them, and, with
`defences.gradient_shaping`, retrained on the poisoned set with bounded, noised gradients (AISEC-BKD-002). On
each trigger's backdoored model at the highest rate, fine-pruning repairs it and STRIP screens its inputs.
Neural Cleanse scans the model under assessment, the one a user received, with the backdoored models as its
positive controls (AISEC-BKD-003).
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from aisec.assessment.finding import Chart, Finding, Gallery, Metric, Picture, Provenance, Series, Table
from aisec.assessment.images import is_image, pixels
from aisec.assessment.plan import BackdoorProbeSection
from aisec.assessment.probe import AssessmentContext, Training
from aisec.assessment.probes.retraining import (
    reference_and_evaluation,
    required_training,
    retrain,
    scalar_bounds,
)
from aisec.assessment.probes.served import cell
from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import BackdoorMeasurement, measure_backdoor
from aisec.attacks.backdoor.triggers import TRIGGERS, Trigger
from aisec.attacks.poisoning.result import PoisonedData, check_classes, poison_count
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.core.seeding import build_model
from aisec.core.severity import Severity
from aisec.core.training import accuracy
from aisec.core.version import __version__
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.gradient_shaping import fit_with_gradient_shaping
from aisec.defend.data_quality.screening import screen_for_backdoor
from aisec.defend.robustness.strip import evaluate_strip, fit_strip
from aisec.defend.supply_chain.behaviour.fine_pruning import fine_prune
from aisec.defend.supply_chain.behaviour.neural_cleanse import NeuralCleanseResult, neural_cleanse
from aisec.targets.torch_target import TorchTarget

RULE_PLANTED = "AISEC-BKD-001"
RULE_DEFENCES = "AISEC-BKD-002"
RULE_SCAN = "AISEC-BKD-003"
STRIP_OVERLAYS, STRIP_FRR = 32, 0.02
REPAIRED_ASR = 0.1  # attack success below which a repair counts as removing the backdoor


@dataclass(frozen=True)
class _Repair:
    defence: str
    measured: BackdoorMeasurement
    cost: str


@dataclass(frozen=True)
class _Run:
    """One trigger at one rate: the attack, the screening's figures and the repairs."""

    trigger: str
    rate: float
    poisoned: int
    planted: BackdoorMeasurement
    detection: tuple[tuple[str, int, float, float], ...]  # method, flagged, precision, recall
    repairs: tuple[_Repair, ...]


@dataclass
class BackdoorProbe:
    config: BackdoorProbeSection
    attack_class: AttackClass = AttackClass.BACKDOOR
    name: str = "backdoor"

    def check(self, context: AssessmentContext) -> None:
        training = required_training(context, self.name)
        spec = context.target.spec
        scalar_bounds(spec, self.name)
        for name in self.config.triggers:
            TRIGGERS[name]().check(tuple(spec.shape))
        target_class, classes = self.config.target_class, spec.num_classes
        if target_class >= classes:
            raise BadInputError(
                f"probes.backdoor.target_class {target_class} is not one of the model's {classes} classes"
            )
        check_classes(training.data)
        pool = (
            training.data.y != target_class
            if self.config.mode == "dirty"
            else training.data.y == target_class
        )
        for rate in self.config.rates:
            poison_count(
                len(training.data),
                rate,
                int(pool.sum()),
                f"{'outside' if self.config.mode == 'dirty' else 'in'} class {target_class}",
            )
        reference, _ = reference_and_evaluation(context)
        if self.config.strip and len(reference) < STRIP_OVERLAYS + round(1 / STRIP_FRR):
            raise DataError(
                f"{context.data.name}: STRIP needs {STRIP_OVERLAYS + round(1 / STRIP_FRR)} reference samples (half "
                f"the data); give at least {2 * (STRIP_OVERLAYS + round(1 / STRIP_FRR))} samples or `strip: false`"
            )
        if self.config.neural_cleanse and not isinstance(context.target, TorchTarget):
            raise CapabilityError(
                "probes.backdoor.neural_cleanse reads the model's gradients: it needs a torch target"
            )

    def run(self, context: AssessmentContext) -> list[Finding]:
        training = required_training(context, self.name)
        config, seed = self.config, context.seed
        lower, upper = scalar_bounds(context.target.spec, self.name)
        reference, evaluation = reference_and_evaluation(context)
        with context.progress.task("backdoor: training the clean baseline", total=1) as task:
            clean_accuracy = accuracy(retrain(training, training.data, seed), evaluation)
            task.advance()
        runs: list[_Run] = []
        strip_rows: list[tuple] = []
        scans: list[tuple[str, NeuralCleanseResult]] = []
        top_rate, low_rate = max(config.rates), min(config.rates)
        work = [(name, rate) for name in config.triggers for rate in config.rates]
        with context.progress.task("backdoor: poisoning, screening and repair", total=len(work)) as task:
            for name, rate in work:
                trigger = TRIGGERS[name]()
                generator = torch.Generator().manual_seed(seed + 11)
                poisoned = plant_backdoor(training.data, trigger, config.target_class, rate, mode=config.mode,
                                          lower=lower, upper=upper, generator=generator)  # fmt: skip
                model = retrain(training, poisoned.data, seed)
                measure = functools.partial(
                    measure_backdoor,
                    test=evaluation,
                    trigger=trigger,
                    target_class=config.target_class,
                    lower=lower,
                    upper=upper,
                )
                planted = measure(model)
                detection, repairs = self._defend(
                    context, training, poisoned, model, reference, measure, rate == low_rate
                )
                if rate == top_rate:
                    if "fine_pruning" in config.repair:
                        repairs.append(_fine_pruned(model, reference, measure, seed))
                    if config.strip:
                        strip_rows.append(
                            _strip_row(
                                model, reference, evaluation, trigger, config.target_class, lower, upper, seed
                            )
                        )
                    if config.neural_cleanse:
                        scans.append(
                            (f"{name} backdoor at {rate:g}", _scan(model, reference, lower, upper, seed))
                        )
                runs.append(
                    _Run(name, rate, int(poisoned.poisoned.sum()), planted, detection, tuple(repairs))
                )
                task.advance()
        delivered = None
        if config.neural_cleanse:
            assert isinstance(context.target, TorchTarget)
            with context.progress.task(
                "backdoor: Neural Cleanse on the model under assessment", total=1
            ) as task:
                # a copy on the CPU: the scan leaves the served module, its device and its mode as they were
                delivered = _scan(copy.deepcopy(context.target.module).cpu(), reference, lower, upper, seed)
                task.advance()
        provenance = Provenance(
            tool_version=__version__,
            seed=seed,
            samples=len(evaluation),
            model_sha256=context.model_sha256,
            data_sha256=context.data.sha256,
            settings={
                "triggers": list(config.triggers),
                "rates": list(config.rates),
                "target_class": config.target_class,
                "mode": config.mode,
                "reference_samples": len(reference),
                "evaluation_samples": len(evaluation),
                "training_data_sha256": training.data.sha256,
            },
        )
        examples = _trigger_gallery(evaluation, config.triggers, context, lower, upper)
        findings = [
            _planted_finding(runs, clean_accuracy, provenance, examples, config.mode),
            _defences_finding(runs, strip_rows, provenance),
        ]
        if delivered is not None:
            findings.append(_scan_finding(delivered, scans, config.target_class, context, provenance))
        return findings

    def _defend(
        self,
        context: AssessmentContext,
        training: Training,
        poisoned: PoisonedData,
        model: nn.Module,
        reference: LabelledData,
        measure: Callable[[nn.Module], BackdoorMeasurement],
        shape: bool,
    ) -> tuple[tuple[tuple[str, int, float, float], ...], list[_Repair]]:
        """Screen the poisoned training set, retrain without the flags, and (if `shape`) retrain with gradient
        shaping: at the lowest rate only, the regime it is for (Hong et al. 2020; at 5-10 % BadNets it leaves
        98-100 % attack success on digits, tests/test_gradient_shaping.py) and one slow training saved per rate."""
        seed = context.seed
        started = time.perf_counter()
        screening = screen_for_backdoor(model, poisoned.data, reference, seed=seed)
        seconds = time.perf_counter() - started
        detection = []
        for ranking in (*screening.rankings, screening.combined):
            score = ranking.score_against(poisoned.poisoned)
            label = "all three (union)" if ranking is screening.combined else ranking.method
            detection.append((label, score.flagged, score.precision, score.recall))
        repairs: list[_Repair] = []
        if "retrain" in self.config.repair:
            flagged = screening.combined.flagged
            repaired = measure(retrain(training, poisoned.without(flagged), seed))
            repairs.append(_Repair("retrain without flagged samples", repaired,
                                   f"{int(flagged.sum())} samples removed, screening {seconds:.1f} s, one retraining"))  # fmt: skip
        shaping = context.defences.gradient_shaping if context.defences else None
        if shaping is not None and shape:
            assert training.model_fn is not None
            shaped = fit_with_gradient_shaping(
                build_model(training.model_fn, seed), poisoned.data, seed=seed, **shaping.model_dump()
            )
            repairs.append(_Repair(
                f"gradient shaping (clip {shaping.max_grad_norm:g}, noise {shaping.noise_multiplier:g})",
                measure(shaped),
                "training with per-example clipping and noise",
            ))  # fmt: skip
        return tuple(detection), repairs


def _fine_pruned(
    model: nn.Module,
    reference: LabelledData,
    measure: Callable[[nn.Module], BackdoorMeasurement],
    seed: int,
) -> _Repair:
    result = fine_prune(model, reference, seed=seed)
    return _Repair(
        "fine-pruning",
        measure(result.model),
        f"{len(result.pruned)} of {result.channels} channels of layer {result.layer} pruned, fine-tuned on "
        f"{len(reference) - result.validation} reference samples",
    )


def _strip_row(
    model: nn.Module,
    reference: LabelledData,
    evaluation: LabelledData,
    trigger: Trigger,
    target: int,
    lower: float,
    upper: float,
    seed: int,
) -> tuple:
    detector = fit_strip(model, reference, overlays=STRIP_OVERLAYS, frr=STRIP_FRR, lower=lower, upper=upper,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
    triggered = trigger.apply(evaluation.x[evaluation.y != target], lower, upper)
    result = evaluate_strip(detector, evaluation.x, triggered)
    return (
        trigger.name,
        cell(result.detection_rate),
        cell(result.frr),
        cell(result.auc),
        result.triggered,
        result.clean,
    )


def _scan(
    model: nn.Module, clean: LabelledData, lower: float, upper: float, seed: int
) -> NeuralCleanseResult:
    return neural_cleanse(
        model, clean, lower=lower, upper=upper, generator=torch.Generator().manual_seed(seed)
    )


def _trigger_gallery(
    evaluation: LabelledData,
    triggers: tuple[str, ...],
    context: AssessmentContext,
    lower: float,
    upper: float,
) -> tuple[Gallery, ...]:
    spec = context.target.spec
    if not is_image(tuple(spec.shape)):
        return ()
    sample = evaluation.x[:1]
    pictures = [Picture("clean", pixels(sample[0], spec))]
    pictures += [
        Picture(name, pixels(TRIGGERS[name]().apply(sample, lower, upper)[0], spec)) for name in triggers
    ]
    return (Gallery("The triggers on one evaluation sample", tuple(pictures)),)


def _planted_finding(
    runs: list[_Run], clean_accuracy: float, provenance: Provenance, galleries: tuple[Gallery, ...], mode: str
) -> Finding:
    lowest = min(run.rate for run in runs)
    at_lowest = max((run for run in runs if run.rate == lowest), key=lambda r: r.planted.attack_success)
    effective = [run.rate for run in runs if run.planted.attack_success >= 0.5]
    severity = (
        Severity.HIGH
        if effective and min(effective) <= 0.01
        else Severity.MEDIUM
        if effective
        else Severity.LOW
    )
    kept = min(run.planted.clean_accuracy for run in runs)
    message = (
        f"Poisoning {lowest:.0%} of the training set ({at_lowest.poisoned} samples, {mode} label) with the "
        f"{at_lowest.trigger} trigger gives an attack success rate of {at_lowest.planted.attack_success:.1%} on "
        f"{at_lowest.planted.triggered} triggered evaluation inputs; clean accuracy stays at "
        f"{at_lowest.planted.clean_accuracy:.1%} (the model retrained on clean data: {clean_accuracy:.1%}), so "
        "accuracy monitoring would not notice."
    )
    if not effective:
        message += " No trigger reached 50% attack success at the rates tried."
    series = tuple(
        Series(
            name,
            tuple(r.rate for r in runs if r.trigger == name),
            tuple(r.planted.attack_success for r in runs if r.trigger == name),
        )
        for name in dict.fromkeys(run.trigger for run in runs)
    )
    return Finding(
        rule_id=RULE_PLANTED,
        title="Backdoor: a small share of poisoned training data plants a trigger",
        attack_class=AttackClass.BACKDOOR,
        severity=severity,
        message=message,
        recommendation=(
            "Control who can write to the training data (content-hash manifests, access control), screen every "
            "training set before training (see AISEC-BKD-002 for what the screening catches), and scan models "
            "you did not train (AISEC-BKD-003)."
        ),
        provenance=provenance,
        metrics=(
            Metric(
                f"attack success at {lowest:.0%} poison ({at_lowest.trigger})",
                at_lowest.planted.attack_success,
            ),
            Metric(
                "lowest clean accuracy of a backdoored model",
                kept,
                description=f"clean model: {clean_accuracy:.4f}",
            ),
        ),
        tables=(
            Table(
                "Attack success and clean accuracy by trigger and poison rate",
                (
                    "trigger",
                    "poison rate",
                    "poisoned samples",
                    "attack success",
                    "clean accuracy",
                    "clean model accuracy",
                ),
                tuple(
                    (
                        r.trigger,
                        r.rate,
                        r.poisoned,
                        cell(r.planted.attack_success),
                        cell(r.planted.clean_accuracy),
                        cell(clean_accuracy),
                    )
                    for r in runs
                ),
            ),
        ),
        charts=(
            Chart(
                "backdoor-success",
                "Attack success vs. poison rate",
                "poison rate",
                "attack success",
                series,
                log_x=True,
            ),
        ),
        galleries=galleries,
    )


def _defences_finding(runs: list[_Run], strip_rows: list[tuple], provenance: Provenance) -> Finding:
    union = [(run, next(d for d in run.detection if d[0] == "all three (union)")) for run in runs]
    worst_recall = min(d[3] for _, d in union)
    retrained = [(run, rep) for run in runs for rep in run.repairs if rep.defence.startswith("retrain")]
    worst_after = max((rep.measured.attack_success for _, rep in retrained), default=None)
    removed = worst_after is not None and worst_after < REPAIRED_ASR
    severity = Severity.INFO if removed else Severity.MEDIUM
    message = (
        f"The screening recovers at least {worst_recall:.1%} of the planted poison at every trigger and rate."
    )
    if worst_after is not None:
        message += f" Retraining without what it flags leaves at most {worst_after:.1%} attack success" + (
            " : the backdoor is gone."
            if removed
            else f", above {REPAIRED_ASR:.0%}: the backdoor survives the repair."
        )
    tables = [
        Table(
            "Poison detection against what the red team planted",
            ("trigger", "poison rate", "detector", "flagged", "precision", "recall"),
            tuple(
                (run.trigger, run.rate, d[0], d[1], cell(d[2]), cell(d[3]))
                for run in runs
                for d in run.detection
            ),
        ),
        Table(
            "Repairs: attack success and clean accuracy before and after",
            (
                "trigger",
                "poison rate",
                "repair",
                "attack success before",
                "after",
                "clean accuracy before",
                "after",
                "cost",
            ),
            tuple(
                (
                    run.trigger,
                    run.rate,
                    rep.defence,
                    cell(run.planted.attack_success),
                    cell(rep.measured.attack_success),
                    cell(run.planted.clean_accuracy),
                    cell(rep.measured.clean_accuracy),
                    rep.cost,
                )  # fmt: skip
                for run in runs
                for rep in run.repairs
            ),
        ),
    ]
    if strip_rows:
        tables.append(
            Table(
                f"STRIP at run time, threshold set for {STRIP_FRR:.0%} false rejections on the reference",
                (
                    "trigger",
                    "triggered inputs detected",
                    "clean inputs rejected",
                    "ROC AUC",
                    "triggered",
                    "clean",
                ),
                tuple(strip_rows),
            )
        )
    return Finding(
        rule_id=RULE_DEFENCES,
        title="Backdoor defences: screening, repair and run-time detection",
        attack_class=AttackClass.BACKDOOR,
        severity=severity,
        message=message,
        recommendation=(
            "Screen training data with aisec.defend.data_quality.screening against a trusted held-out set and "
            "retrain without what it flags; keep STRIP or a similar input check in front of a model whose training "
            "data you do not fully control."
            if removed
            else "The screening leaves enough poison to keep the backdoor: remove more (lower thresholds), "
            "collect a larger trusted reference set, and do not deploy the model without a run-time detector."
        ),
        provenance=provenance,
        metrics=(
            Metric("lowest recall of the screening", worst_recall),
            Metric("highest attack success after retraining without flagged samples", worst_after),
        ),
        tables=tuple(tables),
    )


def _scan_finding(
    delivered: NeuralCleanseResult,
    controls: list[tuple[str, NeuralCleanseResult]],
    target_class: int,
    context: AssessmentContext,
    provenance: Provenance,
) -> Finding:
    suspect = delivered.suspected_target
    if delivered.flagged and suspect is not None:
        severity = Severity.HIGH
        message = (
            f"Neural Cleanse finds a trigger for class {suspect} far smaller than for any other class (anomaly index "
            f"{max(delivered.anomaly_index):.2f} > {delivered.threshold:g}): the model under assessment shows the "
            "signature of a backdoor into that class."
        )
    else:
        severity = Severity.INFO
        message = (
            f"Neural Cleanse finds no class with an anomalously small trigger (largest anomaly index "
            f"{max(delivered.anomaly_index):.2f}, threshold {delivered.threshold:g})."
        )
    caught = sum(1 for _, r in controls if r.flagged and r.suspected_target == target_class)
    if controls:
        message += (
            f" As positive controls, it flags {caught} of the {len(controls)} models the red team backdoored with the "
            f"right target class ({target_class})."
        )
    spec = context.target.spec
    galleries: tuple[Gallery, ...] = ()
    if is_image(tuple(spec.shape)):
        pictures = []
        for label, result in [("model under assessment", delivered), *controls]:
            i = _shown(result)
            trig = result.triggers[i]
            facts = (
                ("mask L1 norm", f"{trig.norm:.1f}"),
                ("anomaly index", f"{result.anomaly_index[i]:.2f}"),
            )
            pictures.append(
                Picture(f"{label}: class {trig.target}", pixels(trig.mask * trig.pattern, spec), facts)
            )
        galleries = (
            Gallery(
                "Recovered triggers (mask x pattern): the suspected class, else the smallest", tuple(pictures)
            ),
        )
    rows = [("model under assessment", *(cell(a) for a in delivered.anomaly_index))]
    rows += [(label, *(cell(a) for a in r.anomaly_index)) for label, r in controls]
    return Finding(
        rule_id=RULE_SCAN,
        title="Backdoor scan of the model (Neural Cleanse)",
        attack_class=AttackClass.BACKDOOR,
        severity=severity,
        message=message,
        recommendation=(
            "Do not deploy this model: retrain it from data you control, or repair it (fine-pruning) and re-scan."
            if severity is Severity.HIGH
            else "Neural Cleanse misses triggers that are not small patches (blended, warped); keep the data-side "
            "screening and a run-time detector for models from third parties."
        ),
        provenance=provenance,
        metrics=(
            Metric(
                "largest anomaly index",
                max(delivered.anomaly_index),
                description=f"flagged above {delivered.threshold:g}",
            ),
        ),
        tables=(
            Table(
                "Neural Cleanse anomaly index per class (one-sided: classes with small triggers)",
                ("model", *(f"class {t.target}" for t in delivered.triggers)),
                tuple(rows),
            ),
        ),
        galleries=galleries,
    )


def _shown(result: NeuralCleanseResult) -> int:
    """Position of the trigger to show: the suspected target's, else the smallest."""
    if result.suspected_target is not None:
        return next(i for i, t in enumerate(result.triggers) if t.target == result.suspected_target)
    return min(range(len(result.triggers)), key=lambda i: result.triggers[i].norm)
