"""The poisoning probe: what label flipping in the training set costs the model, whether the label audit finds
the flips, and what the training set as given already holds.

For each attack and rate the training set is poisoned (aisec.attacks.poisoning.label_flip), the model
retrained with the plan's recipe and measured on the assessment data: accuracy overall and, for a targeted flip,
on the class the attacker relabelled (AISEC-POI-001). Confident learning (cleanlab, on cross-validated
probabilities of a linear model) and the nearest-neighbour rule flag suspects; the model is retrained without
them and, with `defences.gradient_shaping`, on the poisoned set with bounded, noised gradients (AISEC-POI-002).
The audit runs the same detectors on the training set as given (AISEC-POI-003).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from aisec.assessment.finding import Chart, Finding, Gallery, Metric, Picture, Provenance, Series, Table
from aisec.assessment.images import is_image, pixels
from aisec.assessment.plan import PoisoningProbeSection
from aisec.assessment.probe import AssessmentContext, Training
from aisec.assessment.probes.retraining import Retraining, detection_rows, required_training, retrain_all
from aisec.assessment.probes.served import cell
from aisec.assessment.rules import LABEL_AUDIT, LABEL_FLIP_DEFENCES, LABEL_FLIPS
from aisec.attacks.poisoning.label_flip import random_label_flip, targeted_label_flip
from aisec.attacks.poisoning.result import PoisonedData, check_classes, poison_count
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError, DataError
from aisec.core.severity import Severity
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.confident_learning import (
    confident_learning,
    cross_validated_probabilities,
    fit_linear,
)
from aisec.defend.data_quality.label_consistency import label_consistency
from aisec.defend.data_quality.screening import union
from aisec.defend.data_quality.suspects import SuspectRanking

AUDIT_PICTURES = 8


@dataclass(frozen=True)
class _Accuracy:
    overall: float
    on_source: float | None  # on the relabelled class, for a targeted flip


@dataclass(frozen=True)
class _Run:
    attack: str
    rate: float
    flipped: int
    accuracy: _Accuracy
    detection: tuple[tuple[str, int, float, float], ...]  # method, flagged, precision, recall
    repairs: tuple[tuple[str, _Accuracy, str], ...]  # defence, accuracy, cost


@dataclass
class PoisoningProbe:
    config: PoisoningProbeSection
    attack_class: AttackClass = AttackClass.POISONING
    name: str = "poisoning"

    def classes(self, training: Training, num_classes: int) -> tuple[int, int]:
        """The targeted flip's source (default: the largest class) and target (default: the next class)."""
        source = self.config.source
        if source is None:
            source = int(torch.bincount(training.data.y, minlength=num_classes).argmax())
        target = self.config.target if self.config.target is not None else (source + 1) % num_classes
        return source, target

    def check(self, context: AssessmentContext) -> None:
        training = required_training(context, self.name)
        check_classes(training.data)
        num_classes = context.target.spec.num_classes
        counts = torch.bincount(training.data.y, minlength=num_classes)
        if self.config.folds > int(counts[counts > 0].min()):
            raise DataError(
                f"probes.poisoning.folds {self.config.folds} exceeds the {int(counts[counts > 0].min())} samples of "
                "the rarest class of the training set"
            )
        if "targeted_flip" not in self.config.attacks:
            return
        source, target = self.classes(training, num_classes)
        for name, value in (("source", source), ("target", target)):
            if value >= num_classes:
                raise BadInputError(
                    f"probes.poisoning.{name} {value} is not one of the model's {num_classes} classes"
                )
        if source == target:
            raise BadInputError(f"probes.poisoning: source and target are both class {source}")
        for rate in self.config.rates:
            poison_count(
                len(training.data),
                rate,
                int(counts[source]),
                f"of class {source} (the targeted flip's source)",
            )

    def run(self, context: AssessmentContext) -> list[Finding]:
        training = required_training(context, self.name)
        config, seed, data = self.config, context.seed, context.data
        num_classes = context.target.spec.num_classes
        source, target = self.classes(training, num_classes)
        measure = functools.partial(_accuracy, data=data, source=source)
        # Three phases: the clean and the poisoned models (one batch of the assessment's task runner, which a pool
        # or Ray trains in parallel), the label audits of the poisoned sets, and the repairs they call for (a batch).
        work = [(attack, rate) for attack in config.attacks for rate in config.rates]
        flips = [
            _flip(training.data, attack, rate, num_classes, source, target, seed) for attack, rate in work
        ]
        models: dict[str | int, Retraining] = {"clean": Retraining(training.data, seed)}
        models |= {i: Retraining(flipped.data, seed) for i, flipped in enumerate(flips)}
        trained = retrain_all(context.tasks, training, models, what="poisoning: clean and poisoned models")
        baseline = measure(trained["clean"])
        audits = []
        with context.progress.task("poisoning: auditing the poisoned labels", total=len(work)) as task:
            for flipped in flips:
                audits.append(_detect(flipped, num_classes, config.folds, seed))
                task.advance()
        shaping = context.defences.gradient_shaping if context.defences else None
        repairs = {
            (i, "cleaned"): Retraining(f.without(flagged), seed)
            for i, (f, (_, flagged)) in enumerate(zip(flips, audits, strict=True))
        }
        if shaping is not None:
            repairs |= {(i, "shaped"): Retraining(f.data, seed, shaping) for i, f in enumerate(flips)}
        repaired = retrain_all(context.tasks, training, repairs, what="poisoning: repairs")
        runs = []
        for i, ((attack, _), flipped, (detection, flagged)) in enumerate(
            zip(work, flips, audits, strict=True)
        ):
            fixes = [
                (
                    "retrain without flagged samples",
                    measure(repaired[i, "cleaned"]),
                    f"{int(flagged.sum())} samples removed",
                )
            ]
            if shaping is not None:
                fixes.append((
                    f"gradient shaping (clip {shaping.max_grad_norm:g}, noise {shaping.noise_multiplier:g})",
                    measure(repaired[i, "shaped"]),
                    "training with per-example clipping and noise",
                ))  # fmt: skip
            count = int(flipped.poisoned.sum())
            runs.append(_Run(attack, flipped.rate, count, measure(trained[i]), detection, tuple(fixes)))
        provenance = context.provenance(
            len(data),
            {
                "attacks": list(config.attacks),
                "rates": list(config.rates),
                "targeted_flip": f"class {source} relabelled {target}",
                "confident_learning": f"cleanlab on {config.folds}-fold cross-validated logistic regression",
                "training_data_sha256": training.data.sha256,
            },
        )
        findings = [
            _flips_finding(runs, baseline, source, target, provenance),
            _defences_finding(runs, provenance),
        ]
        if config.audit:
            with context.progress.task("poisoning: auditing the training set's labels", total=1) as task:
                audit = _audit(training.data, num_classes, config.folds, seed)
                task.advance()
            findings.append(_audit_finding(training.data, audit, context, provenance))
        return findings


def _flip(
    data: LabelledData, attack: str, rate: float, num_classes: int, source: int, target: int, seed: int
) -> PoisonedData:
    """The training set with `rate` of its labels flipped by `attack`, drawn from the plan's seed."""
    generator = torch.Generator().manual_seed(seed + 13)
    if attack == "random_flip":
        return random_label_flip(data, rate, num_classes=num_classes, generator=generator)
    return targeted_label_flip(data, rate, source=source, target=target, generator=generator)


def _detect(
    poisoned: PoisonedData, num_classes: int, folds: int, seed: int
) -> tuple[tuple[tuple[str, int, float, float], ...], torch.Tensor]:
    """Each detector's (name, flagged, precision, recall) against the known flips, and what either flags."""
    rankings = _audit(poisoned.data, num_classes, folds, seed).rankings
    combined = union(rankings)
    return detection_rows(rankings, combined, poisoned.poisoned, "either (union)"), combined.flagged


def _accuracy(model: torch.nn.Module, *, data: LabelledData, source: int) -> _Accuracy:
    with torch.no_grad():
        correct = model(data.x).argmax(1) == data.y
    of_source = data.y == source
    return _Accuracy(
        float(correct.float().mean()), float(correct[of_source].float().mean()) if of_source.any() else None
    )


@dataclass(frozen=True)
class _Audit:
    """Confident learning's and the nearest-neighbour rule's rankings, and the cross-validated probabilities."""

    rankings: tuple[SuspectRanking, SuspectRanking]
    probabilities: torch.Tensor


def _audit(data: LabelledData, num_classes: int, folds: int, seed: int) -> _Audit:
    probabilities = cross_validated_probabilities(
        data, fit_linear, num_classes=num_classes, folds=folds, seed=seed
    )
    return _Audit(
        (confident_learning(data.y, probabilities), label_consistency(data.x, data.y)), probabilities
    )


def _flips_finding(
    runs: list[_Run], baseline: _Accuracy, source: int, target: int, provenance: Provenance
) -> Finding:
    def lost(run: _Run) -> float:
        if (
            run.attack == "targeted_flip"
            and run.accuracy.on_source is not None
            and baseline.on_source is not None
        ):
            return baseline.on_source - run.accuracy.on_source
        return baseline.overall - run.accuracy.overall

    lowest = min(run.rate for run in runs)
    worst = max((run for run in runs if run.rate == lowest), key=lost)
    damage = lost(worst)
    severity = Severity.HIGH if damage >= 0.2 else Severity.MEDIUM if damage >= 0.05 else Severity.LOW
    what = f"accuracy on class {source}" if worst.attack == "targeted_flip" else "accuracy"
    message = (
        f"Flipping {lowest:.0%} of the training labels ({worst.flipped} samples, {worst.attack.replace('_', ' ')}) "
        f"costs {damage:.1%} of {what} (clean model: overall {baseline.overall:.1%}"
        + (f", class {source} {baseline.on_source:.1%}" if baseline.on_source is not None else "")
        + ")."
    )
    series = [
        Series(
            "random flip: accuracy"
            if attack == "random_flip"
            else f"targeted flip {source}->{target}: class {source} accuracy",
            tuple(r.rate for r in runs if r.attack == attack),
            tuple(
                (r.accuracy.overall if attack == "random_flip" else r.accuracy.on_source or 0.0)
                for r in runs
                if r.attack == attack
            ),
        )
        for attack in dict.fromkeys(run.attack for run in runs)
    ]
    return Finding(
        rule_id=LABEL_FLIPS.id,
        title=LABEL_FLIPS.title,
        attack_class=LABEL_FLIPS.attack_class,
        severity=severity,
        message=message,
        recommendation=(
            f"Audit labels before training (confident learning, nearest neighbours: {LABEL_FLIP_DEFENCES.id} shows "
            "what they catch), keep provenance and content hashes of labelled data, and compare each new training set's "
            "label distribution with the last."
        ),
        provenance=provenance,
        metrics=(
            Metric(
                f"accuracy lost at {lowest:.0%} flipped ({worst.attack})",
                damage,
                id="accuracy_lost_at_lowest_rate",
            ),
            Metric("clean model accuracy", baseline.overall, id="clean_accuracy"),
        ),
        tables=(
            Table(
                "Accuracy of the model retrained on poisoned labels",
                ("attack", "poison rate", "labels flipped", "accuracy", f"accuracy on class {source}"),
                tuple(
                    (r.attack, r.rate, r.flipped, cell(r.accuracy.overall), cell(r.accuracy.on_source))
                    for r in runs
                ),
            ),
        ),
        charts=(
            Chart(
                "poisoning-accuracy",
                "Accuracy vs. fraction of labels flipped",
                "fraction poisoned",
                "accuracy",
                tuple(series),
            ),
        ),
    )


def _defences_finding(runs: list[_Run], provenance: Provenance) -> Finding:
    union_rows = [next(d for d in run.detection if d[0] == "either (union)") for run in runs]
    worst_recall = min(d[3] for d in union_rows)
    return Finding(
        rule_id=LABEL_FLIP_DEFENCES.id,
        title=LABEL_FLIP_DEFENCES.title,
        attack_class=LABEL_FLIP_DEFENCES.attack_class,
        severity=Severity.INFO if worst_recall >= 0.8 else Severity.MEDIUM,
        message=(
            f"The label audit recovers at least {worst_recall:.1%} of the flipped labels at every attack and rate; "
            "the tables give each detector's precision and recall, and the accuracy of the model retrained without "
            "what they flag."
        ),
        recommendation=(
            "Run the label audit (aisec.defend.data_quality.confident_learning, label_consistency) on every "
            "training set and review or drop what it flags; a targeted flip that relabels a whole class looks "
            "consistent to any label audit and needs provenance checks instead."
        ),
        provenance=provenance,
        metrics=(Metric("lowest recall of the label audit", worst_recall, id="lowest_audit_recall"),),
        tables=(
            Table(
                "Flipped labels found",
                ("attack", "poison rate", "detector", "flagged", "precision", "recall"),
                tuple(
                    (r.attack, r.rate, d[0], d[1], cell(d[2]), cell(d[3])) for r in runs for d in r.detection
                ),
            ),
            Table(
                "Repairs",
                (
                    "attack",
                    "poison rate",
                    "repair",
                    "accuracy before",
                    "accuracy after",
                    "class accuracy before",
                    "class accuracy after",
                    "cost",
                ),
                tuple(
                    (
                        r.attack,
                        r.rate,
                        name,
                        cell(r.accuracy.overall),
                        cell(acc.overall),
                        cell(r.accuracy.on_source),
                        cell(acc.on_source),
                        cost,
                    )
                    for r in runs
                    for name, acc, cost in r.repairs
                ),
            ),
        ),
    )


def _audit_finding(
    data: LabelledData, audit: _Audit, context: AssessmentContext, provenance: Provenance
) -> Finding:
    learning, neighbours = audit.rankings
    both = learning.flagged & neighbours.flagged
    share = float(both.float().mean())
    severity = Severity.MEDIUM if share >= 0.02 else Severity.LOW if both.any() else Severity.INFO
    message = (
        f"In the training set as given ({len(data)} samples), confident learning flags {int(learning.flagged.sum())} "
        f"labels and the nearest-neighbour rule {int(neighbours.flagged.sum())}; {int(both.sum())} ({share:.1%}) are "
        "flagged by both: review those first."
    )
    spec = context.target.spec
    galleries: tuple[Gallery, ...] = ()
    if is_image(tuple(spec.shape)) and both.any():
        order = [int(i) for i in learning.ranked() if both[i]][:AUDIT_PICTURES]
        pictures = tuple(
            Picture(
                f"sample {i}",
                pixels(data.x[i], spec),
                (
                    ("given label", str(int(data.y[i]))),
                    ("likely label", str(int(audit.probabilities[i].argmax()))),
                ),
            )
            for i in order
        )
        galleries = (Gallery("Training samples both detectors flag, most suspect first", pictures),)
    return Finding(
        rule_id=LABEL_AUDIT.id,
        title=LABEL_AUDIT.title,
        attack_class=LABEL_AUDIT.attack_class,
        severity=severity,
        message=message,
        recommendation="Review the flagged samples; relabel or drop the wrong ones and keep the audit in the pipeline.",
        provenance=provenance,
        metrics=(Metric("share of training labels flagged by both detectors", share, id="flagged_by_both"),),
        tables=(
            Table(
                "Most suspect training labels (flagged by both)",
                (
                    "sample",
                    "given label",
                    "likely label",
                    "confident learning score",
                    "neighbours disagreeing",
                ),
                tuple(
                    (
                        i,
                        int(data.y[i]),
                        int(audit.probabilities[i].argmax()),
                        cell(float(learning.scores[i])),
                        cell(float(neighbours.scores[i])),
                    )
                    for i in [int(j) for j in learning.ranked() if both[j]][:20]
                ),
            ),
        ),
        galleries=galleries,
    )
