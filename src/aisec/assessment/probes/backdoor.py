"""The backdoor probe: what an attacker who writes part of the training set can plant, and whether the
controls find and remove it.

For each trigger and poison rate of the plan the training set is poisoned (aisec.attacks.backdoor), the model
retrained with the plan's recipe and measured on the evaluation half of the assessment data: attack success and
clean accuracy (AISEC-BKD-001). The other half is the defender's trusted reference: the screening
(aisec.defend.data_quality.screening) flags suspects, the model is retrained without them, and, with
`defences.gradient_shaping`, retrained on the poisoned set with bounded, noised gradients (AISEC-BKD-002). On
each trigger's backdoored model at the highest rate, fine-pruning repairs it and STRIP screens its inputs.
Neural Cleanse scans the model under assessment, the one a user received, with the backdoored models as its
positive controls (AISEC-BKD-003). This module runs all that; backdoor_findings.py turns it into findings.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from aisec.assessment.finding import Finding
from aisec.assessment.plan import BackdoorProbeSection
from aisec.assessment.probe import AssessmentContext
from aisec.assessment.probes.backdoor_findings import (
    Repair,
    Run,
    defences_finding,
    planted_finding,
    scan_finding,
    trigger_gallery,
)
from aisec.assessment.probes.retraining import (
    Retraining,
    detection_rows,
    reference_and_evaluation,
    required_training,
    retrain_all,
    scalar_bounds,
)
from aisec.assessment.probes.served import cell
from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import BackdoorMeasurement, measure_backdoor
from aisec.attacks.backdoor.triggers import TRIGGERS, Trigger
from aisec.attacks.poisoning.result import PoisonedData, check_classes, poison_count
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.core.training import accuracy
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.screening import screen_for_backdoor
from aisec.defend.robustness.strip import evaluate_strip, fit_strip
from aisec.defend.supply_chain.behaviour.fine_pruning import fine_prune
from aisec.defend.supply_chain.behaviour.neural_cleanse import NeuralCleanseResult, neural_cleanse
from aisec.targets.torch_target import TorchTarget

STRIP_OVERLAYS, STRIP_FRR = 32, 0.02


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
        top_rate, low_rate = max(config.rates), min(config.rates)
        # Three phases: the clean and the backdoored models (one batch of the assessment's task runner, which a
        # pool or Ray trains in parallel), the screening of each poisoned set with its model, and the repairs the
        # screening calls for (a second batch); the model-side defences then work on the backdoored models.
        work = [(TRIGGERS[name](), rate) for name in config.triggers for rate in config.rates]
        poisons = [
            plant_backdoor(training.data, trigger, config.target_class, rate, mode=config.mode, lower=lower,
                           upper=upper, generator=torch.Generator().manual_seed(seed + 11))
            for trigger, rate in work
        ]  # fmt: skip
        models: dict[str | int, Retraining] = {"clean": Retraining(training.data, seed)}
        models |= {i: Retraining(poisoned.data, seed) for i, poisoned in enumerate(poisons)}
        trained = retrain_all(context.tasks, training, models, what="backdoor: clean and backdoored models")
        clean_accuracy = accuracy(trained["clean"], evaluation)
        backdoored = [trained[i] for i in range(len(poisons))]
        measures = [
            functools.partial(measure_backdoor, test=evaluation, trigger=trigger,
                              target_class=config.target_class, lower=lower, upper=upper)
            for trigger, _ in work
        ]  # fmt: skip
        planted, screenings = [], []
        with context.progress.task("backdoor: screening the poisoned training sets", total=len(work)) as task:
            for poisoned, model, measure in zip(poisons, backdoored, measures, strict=True):
                planted.append(measure(model))
                screenings.append(_screen(model, poisoned, reference, seed))
                task.advance()
        # Gradient shaping at the lowest rate only, the regime it is for (Hong et al. 2020; at 5-10 % BadNets
        # it leaves 98-100 % attack success on digits, tests/test_gradient_shaping.py): one slow training saved
        # per rate.
        shaping = context.defences.gradient_shaping if context.defences else None
        repairs: dict[tuple[int, str], Retraining] = {}
        for i, ((_, rate), poisoned, screening) in enumerate(zip(work, poisons, screenings, strict=True)):
            if "retrain" in config.repair:
                repairs[i, "cleaned"] = Retraining(poisoned.without(screening.flagged), seed)
            if shaping is not None and rate == low_rate:
                repairs[i, "shaped"] = Retraining(poisoned.data, seed, shaping)
        repaired = retrain_all(context.tasks, training, repairs, what="backdoor: repairs")
        runs: list[Run] = []
        strip_rows: list[tuple] = []
        scans: list[tuple[str, NeuralCleanseResult]] = []
        with context.progress.task("backdoor: repairs, STRIP and scans measured", total=len(work)) as task:
            for i, ((trigger, rate), poisoned, model, measure, screening, before) in enumerate(
                zip(work, poisons, backdoored, measures, screenings, planted, strict=True)
            ):
                fixes: list[Repair] = []
                if (i, "cleaned") in repaired:
                    cost = (f"{int(screening.flagged.sum())} samples removed, screening {screening.seconds:.1f} s, "
                            "one retraining")  # fmt: skip
                    fixes.append(
                        Repair("retrain without flagged samples", measure(repaired[i, "cleaned"]), cost)
                    )
                if shaping is not None and (i, "shaped") in repaired:
                    fixes.append(Repair(
                        f"gradient shaping (clip {shaping.max_grad_norm:g}, noise {shaping.noise_multiplier:g})",
                        measure(repaired[i, "shaped"]),
                        "training with per-example clipping and noise",
                    ))  # fmt: skip
                if rate == top_rate:
                    if "fine_pruning" in config.repair:
                        fixes.append(_fine_pruned(model, reference, measure, seed))
                    if config.strip:
                        strip_rows.append(_strip_row(model, reference, evaluation, trigger, config.target_class,
                                                     lower, upper, seed))  # fmt: skip
                    if config.neural_cleanse:
                        scan = _scan(model, reference, lower, upper, seed)
                        scans.append((f"{trigger.name} backdoor at {rate:g}", scan))
                count = int(poisoned.poisoned.sum())
                runs.append(Run(trigger.name, rate, count, before, screening.detection, tuple(fixes)))
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
        provenance = context.provenance(
            len(evaluation),
            {
                "triggers": list(config.triggers),
                "rates": list(config.rates),
                "target_class": config.target_class,
                "mode": config.mode,
                "reference_samples": len(reference),
                "evaluation_samples": len(evaluation),
                "training_data_sha256": training.data.sha256,
            },
        )
        examples = trigger_gallery(evaluation, config.triggers, context, lower, upper)
        findings = [
            planted_finding(runs, clean_accuracy, provenance, examples, config.mode),
            defences_finding(runs, strip_rows, STRIP_FRR, provenance),
        ]
        if delivered is not None:
            findings.append(scan_finding(delivered, scans, config.target_class, context, provenance))
        return findings


@dataclass(frozen=True)
class _Screening:
    detection: tuple[tuple[str, int, float, float], ...]  # method, flagged, precision, recall
    flagged: torch.Tensor  # what any of the three detectors flags
    seconds: float


def _screen(model: nn.Module, poisoned: PoisonedData, reference: LabelledData, seed: int) -> _Screening:
    """Screen the poisoned training set with the features of the model trained on it, against the trusted
    reference; each detector's figures against the known poison."""
    started = time.perf_counter()
    screening = screen_for_backdoor(model, poisoned.data, reference, seed=seed)
    seconds = time.perf_counter() - started
    detection = detection_rows(screening.rankings, screening.combined, poisoned.poisoned, "all three (union)")
    return _Screening(detection, screening.combined.flagged, seconds)


def _fine_pruned(
    model: nn.Module,
    reference: LabelledData,
    measure: Callable[[nn.Module], BackdoorMeasurement],
    seed: int,
) -> Repair:
    result = fine_prune(model, reference, seed=seed)
    return Repair(
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
