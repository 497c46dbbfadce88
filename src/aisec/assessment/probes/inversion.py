"""The inversion probe: what do the model's outputs reveal of what each class's training data looks like?

Class-representative inversion (Fredrikson et al. 2015; aisec.attacks.inversion) from a blank input, with
gradients when the attacker has the weights and with scores alone (NES estimates within the query budget)
otherwise, then against each output-hardening variant of the plan. A reconstruction identifies its class when
the nearest class mean of the real examples (the training set when the plan gives it, else the assessment
data) is its own class's. The report shows each reconstruction beside that mean.

Severity: medium when at least half of the classes are identified, else low. Class representatives matter
most where a class is a person (face or voice recognition): the reconstruction is then that person's likeness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aisec.assessment.finding import Finding, Gallery, Metric, Picture, Table
from aisec.assessment.images import is_image, pixels
from aisec.assessment.plan import InversionProbeSection
from aisec.assessment.probe import AssessmentContext
from aisec.assessment.probes.evasion import attacker_view
from aisec.assessment.probes.served import api_label, cell, hardened_views
from aisec.assessment.rules import INVERSION
from aisec.attacks.inversion.class_representative import (
    InversionConfig,
    InversionResult,
    identification,
    invert_classes,
)
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.data.dataset import LabelledData
from aisec.targets.base import Access, Target

STEP_SIZE = 0.01  # of the input range per signed-gradient step


@dataclass
class InversionProbe:
    config: InversionProbeSection
    attack_class: AttackClass = INVERSION.attack_class
    name: str = "inversion"

    def check(self, context: AssessmentContext) -> None:
        context.require_scores("probes.inversion needs", advice="remove the probe")
        view, _ = attacker_view(context.target, context.threat_model.knowledge)
        classes = self._classes(context)
        if view.access is not Access.WHITE_BOX or hardened_views(view, context.defences):
            step = 2 * InversionConfig().samples * len(classes)
            if self.config.query_budget < step + len(classes):
                raise BadInputError(
                    f"probes.inversion.query_budget: one score-only step for {len(classes)} classes costs {step} "
                    f"queries; {self.config.query_budget} cannot pay for it"
                )
        reference = _reference(context)
        missing = sorted(set(classes) - set(reference.y.tolist()))
        if missing:
            raise BadInputError(
                f"probes.inversion: no real examples of classes {missing} in {reference.name}"
            )

    def _classes(self, context: AssessmentContext) -> list[int]:
        classes = list(self.config.classes or range(context.target.spec.num_classes))
        bad = [c for c in classes if not 0 <= c < context.target.spec.num_classes]
        if bad:
            raise BadInputError(
                f"probes.inversion.classes: {bad} outside [0, {context.target.spec.num_classes})"
            )
        return classes

    def run(self, context: AssessmentContext) -> list[Finding]:
        view, note = attacker_view(context.target, context.threat_model.knowledge)
        classes = self._classes(context)
        reference = _reference(context)
        generator = torch.Generator().manual_seed(context.seed)
        with context.progress.task("model inversion", total=1) as task:
            main = self._invert(view, classes, generator)
            results: list[tuple[Target, InversionResult | None]] = [(view, main)]
            for hardened in hardened_views(view, context.defences):
                scores = hardened.access is Access.SCORES
                results.append((hardened, self._invert(hardened, classes, generator) if scores else None))
            task.advance()
        hits, distances = identification(main.images.cpu(), main.classes, reference.x, reference.y)
        rows: list[tuple[str, str, InversionResult | None, float | None]] = [
            (api_label(view), view.access.value, main, hits)
        ]
        for api, result in results[1:]:
            share = (
                None
                if result is None
                else identification(result.images.cpu(), result.classes, reference.x, reference.y)[0]
            )
            rows.append((api_label(api), api.access.value, result, share))
        provenance = context.provenance(
            len(reference),
            {
                "attacker_access": view.access.value,
                "classes": classes,
                "steps": self.config.steps,
                "query_budget": self.config.query_budget
                if view.access is not Access.WHITE_BOX
                else "n/a (gradients)",
                "start": "blank input (the lower bound)",
                "real examples": reference.name,
            },
            data=reference,
        )
        severity = Severity.MEDIUM if hits >= 0.5 else Severity.LOW
        message = (
            f"From a blank start, {view.access.value} inversion rebuilds an input the model assigns to each class "
            f"with median confidence {main.confidence.median():.1%}; {hits:.0%} of the {len(classes)} "
            f"reconstructions are nearest to their own class's mean real example ({main.queries} queries)."
        )
        if note:
            message += " " + note
        return [
            Finding(
                rule_id=INVERSION.id,
                title=INVERSION.title,
                attack_class=INVERSION.attack_class,
                severity=severity,
                message=message,
                recommendation=(
                    "Where a class is a person or otherwise sensitive, return labels only (inversion then needs "
                    "far more than scores), round or truncate confidences, and train with differential privacy; "
                    "re-run this probe with the `defences` section to measure each."
                ),
                provenance=provenance,
                metrics=(
                    Metric(
                        "classes identified",
                        hits,
                        id="classes_identified",
                        description="reconstructions nearest to their class's mean",
                    ),
                    Metric(
                        "median confidence of the reconstructions",
                        float(main.confidence.median()),
                        id="median_confidence",
                    ),
                    Metric("queries", main.queries, "queries", id="queries"),
                ),
                tables=(_table(rows),),
                galleries=_galleries(context.target, main, reference, distances),
            )
        ]

    def _invert(self, target: Target, classes: list[int], generator: torch.Generator) -> InversionResult:
        config = InversionConfig(
            steps=self.config.steps,
            step_size=STEP_SIZE,
            query_budget=None if target.access is Access.WHITE_BOX else self.config.query_budget,
        )
        return invert_classes(target, classes, config, generator=generator)


def _reference(context: AssessmentContext) -> LabelledData:
    """The real examples reconstructions are compared with: the training set if known, else the data."""
    return context.training.data if context.training is not None else context.data


def _table(rows: Sequence[tuple[str, str, InversionResult | None, float | None]]) -> Table:
    """One row per API: classes identified (computed once per reconstruction), confidence and queries."""
    return Table(
        "Inversion against each API",
        ("API", "access", "classes identified", "median confidence", "queries"),
        tuple(
            (api, access, "not possible: no scores", None, 0)
            if result is None
            else (api, access, cell(hits), cell(float(result.confidence.median())), result.queries)
            for api, access, result, hits in rows
        ),
    )


def _galleries(
    target: Target, result: InversionResult, reference: LabelledData, distances: torch.Tensor
) -> tuple[Gallery, ...]:
    """Each reconstruction with its facts, and each class's mean real example, when inputs are images."""
    if not is_image(tuple(target.spec.shape)):
        return ()
    present = sorted(set(reference.y.tolist()))
    class_means = {c: reference.x[reference.y == c].mean(0) for c in present}
    images = result.images.detach().cpu()
    stacked = torch.stack([class_means[c] for c in present]).flatten(1).float()
    nearest = [present[int(i)] for i in torch.cdist(images.flatten(1).float(), stacked).argmin(1)]
    spec = target.spec
    reconstructions = tuple(
        Picture(
            f"class {c}",
            pixels(images[i], spec),
            (
                ("confidence", f"{float(result.confidence[i]):.1%}"),
                ("nearest class mean", str(nearest[i])),
                ("L2 to own class mean", f"{float(distances[i]):.2f}"),
            ),
        )
        for i, c in enumerate(result.classes)
    )
    real = tuple(Picture(f"class {c}", pixels(class_means[c], spec)) for c in result.classes)
    return (
        Gallery("Reconstructions (one per class)", reconstructions),
        Gallery(f"Mean real example of each class ({reference.name})", real),
    )
