"""The inspection probe's findings: the behavioural backdoor scan (AISEC-BKD-004), what the model looks at
(AISEC-AUD-002), the shortcut check (AISEC-AUD-001) and which checks ran (AISEC-INS-003)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from aisec.assessment.finding import Chart, Finding, Gallery, Metric, Picture, Series, Table
from aisec.assessment.images import pixels
from aisec.assessment.rules import EXPLANATIONS, INSPECTED_BACKDOOR, INSPECTION_COVERAGE, SHORTCUT
from aisec.core.severity import Severity
from aisec.defend.auditability.explanations import class_mean_maps

if TYPE_CHECKING:
    from aisec.assessment.probe import AssessmentContext
    from aisec.data.dataset import LabelledData
    from aisec.defend.auditability.explanations import Attributions, PermutationImportance
    from aisec.defend.auditability.shortcuts import ShortcutResult, TabularShortcutResult
    from aisec.defend.supply_chain.behaviour.backdoor_scan import BackdoorScanResult
    from aisec.targets.base import InputSpec, Target

METHOD_NAMES = {
    "integrated_gradients": "integrated gradients",
    "saliency": "saliency",
    "occlusion": "occlusion",
}


@dataclass(frozen=True)
class Check:
    """One check of the inspection: whether it ran, and why (not)."""

    name: str
    ran: bool
    why: str


def backdoor_finding(
    scan: BackdoorScanResult, data: LabelledData, spec: InputSpec, context: AssessmentContext
) -> Finding:
    nc, mm, cal = scan.neural_cleanse, scan.max_margin, scan.calibration
    smallest = min(nc.triggers, key=lambda t: t.norm).target
    shown = scan.suspected_target if scan.suspected_target is not None else smallest
    trigger = next(t for t in nc.triggers if t.target == shown)
    calibration = (
        f"Of the {cal.clean_models} clean models of the calibration zoo, {cal.norm_ratio_as_low} had a norm ratio "
        f"as low and {cal.p_value_as_low} an MM-BD p-value as low ({cal.command})."
    )
    if scan.flagged:
        severity = Severity.HIGH
        message = (
            f"The model behaves as if it holds a backdoor to class {scan.suspected_target}: "
            f"{'; '.join(scan.reasons)}. A trigger of mask L1 norm {trigger.norm:.1f} sends "
            f"{trigger.attack_success:.0%} of the clean inputs of other classes to it. {calibration}"
        )
        recommendation = (
            "Do not deploy this model. Ask its supplier how it was trained, retrain from data you control, or "
            "repair it (fine-pruning) and inspect it again; the recovered trigger shows what to filter at run time."
        )
    else:
        severity = Severity.INFO
        message = (
            f"No backdoor found: the smallest reversed trigger (class {smallest}) is {nc.norm_ratio:.2f} of the "
            f"median class's and MM-BD's p-value is {mm.p_value:.3g} (class {mm.suspected_target}); the rule: "
            f"{scan.rule}. {calibration} On that zoo the rule found {cal.backdoors_detected} of {cal.backdoors} backdoors "
            f"and false-alarmed on {cal.false_alarms} of {cal.clean_models} clean models (docs/inspect.md); the "
            "triggers it misses are larger than a few pixels or barely change the model's margins."
        )
        recommendation = (
            "Keep a run-time detector of triggered inputs (STRIP) in front of third-party models; a scan cannot "
            "rule out every kind of trigger."
        )
    mm_stats = mm.statistics
    rows = tuple(
        (
            t.target,
            round(t.norm, 3),
            round(nc.anomaly_index[i], 3),
            round(t.attack_success, 3),
            round(mm_stats[t.target], 3),
        )
        for i, t in enumerate(nc.triggers)
    )
    others = [(k, x) for k, x in first_of_each_class(data).items() if k != shown][:4]
    clean = torch.stack([x for _, x in others])
    stamped = (1 - trigger.mask) * clean + trigger.mask * trigger.pattern
    pictures = [
        Picture(
            f"reversed trigger for class {shown}",
            pixels(trigger.mask * trigger.pattern, spec),
            (("mask L1 norm", f"{trigger.norm:.1f}"), ("norm ratio", f"{nc.norm_ratio:.2f}")),
        ),
        Picture(f"MM-BD: input maximising class {shown}'s margin", pixels(mm.maximisers[shown], spec)),
    ]
    pictures += [Picture(f"clean, class {k}", pixels(x, spec)) for k, x in others]
    pictures += [Picture(f"with the trigger -> {shown}", pixels(x, spec)) for x in stamped]
    return Finding(
        rule_id=INSPECTED_BACKDOOR.id,
        title=INSPECTED_BACKDOOR.title,
        attack_class=INSPECTED_BACKDOOR.attack_class,
        severity=severity,
        message=message,
        recommendation=recommendation,
        provenance=context.provenance(len(data), {"rule": scan.rule}, data=data),
        metrics=(
            Metric("backdoor found", scan.flagged, id="flagged", description=scan.rule),
            Metric(
                "suspected target class",
                scan.suspected_target,
                id="suspected_target",
                description="the class the backdoor sends inputs to; none when not flagged",
            ),
            Metric(
                "Neural Cleanse norm ratio",
                nc.norm_ratio,
                id="norm_ratio",
                description="smallest reversed mask over the median class's (lower is more suspect)",
            ),
            Metric(
                "largest anomaly index",
                max(nc.anomaly_index),
                id="largest_anomaly_index",
                description="Neural Cleanse's paper rule flags above 2; it false-alarms on clean models",
            ),
            Metric(
                "MM-BD p-value",
                mm.p_value,
                id="max_margin_p_value",
                description="of the largest maximum margin, under a Gamma null fitted to the others",
            ),
            Metric(
                "clean zoo models as suspect",
                cal.as_suspect,
                id="clean_models_as_suspect",
                description=f"of {cal.clean_models} clean models of the calibration zoo, how many scored at "
                "least as suspect on the figure the rule used",
            ),
        ),
        tables=(
            Table(
                "Per class: reversed trigger (Neural Cleanse) and maximum margin (MM-BD)",
                ("class", "mask L1 norm", "anomaly index", "trigger success", "max margin"),
                rows,
            ),
        ),
        galleries=(Gallery(f"Class {shown}: the reversed trigger beside clean examples", tuple(pictures)),),
    )


def first_of_each_class(data: LabelledData) -> dict[int, torch.Tensor]:
    """The first sample of each class in the data, by class, for the report's pictures."""
    examples: dict[int, torch.Tensor] = {}
    for x, label in zip(data.x, data.y.tolist(), strict=True):
        examples.setdefault(int(label), x)
    return dict(sorted(examples.items()))


def explanations_finding(
    attributions: dict[str, Attributions],
    importance: PermutationImportance | None,
    completeness: float | None,
    data: LabelledData,
    spec: InputSpec,
    context: AssessmentContext,
) -> Finding:
    """Per-class mean attribution maps for images; per-feature charts (mean |attribution|, permutation
    importance) for tabular data."""
    galleries, charts = [], []
    for method, result in attributions.items():
        if result.values.dim() != 4:  # tabular: the mean |attribution| of each feature
            mean = result.values.abs().flatten(1).mean(0)
            charts.append(
                Chart(
                    f"attribution_{method}",
                    f"Mean |attribution| per feature ({METHOD_NAMES[method]})",
                    "feature",
                    "mean |attribution|",
                    (Series("", tuple(float(i) for i in range(len(mean))), tuple(float(v) for v in mean)),),
                    kind="bar",
                )
            )
            continue
        maps = class_mean_maps(result.values, data.y, spec.num_classes)
        pictures = tuple(
            Picture(f"class {k}", _unit(maps[k]).tolist(), (("samples", str(int((data.y == k).sum()))),))
            for k in range(spec.num_classes)
            if bool((data.y == k).any())
        )
        galleries.append(Gallery(f"Mean |attribution| per class ({METHOD_NAMES[method]})", pictures))
    tables, metrics = [], []
    if importance is not None:
        order = importance.drop.argsort(descending=True)[:10].tolist()
        charts.append(
            Chart(
                "permutation_importance",
                "Accuracy lost when one feature is permuted",
                "feature",
                "accuracy drop",
                (
                    Series(
                        "mean over repeats",
                        tuple(float(i) for i in range(len(importance.drop))),
                        tuple(float(v) for v in importance.drop),
                    ),
                ),
                kind="bar",
            )
        )
        tables.append(
            Table(
                "The ten most important features (permutation importance)",
                ("feature", "accuracy drop", "std"),
                tuple(
                    (i, round(float(importance.drop[i]), 4), round(float(importance.drop_std[i]), 4))
                    for i in order
                ),
            )
        )
    if completeness is not None:
        metrics.append(
            Metric(
                "integrated gradients completeness error",
                completeness,
                id="ig_completeness_error",
                description="largest |sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)| over "
                "the samples; attributions are exact up to this share",
            )
        )
    methods = [METHOD_NAMES[m] for m in attributions] + (["permutation importance"] if importance else [])
    return Finding(
        rule_id=EXPLANATIONS.id,
        title=EXPLANATIONS.title,
        attack_class=EXPLANATIONS.attack_class,
        severity=Severity.INFO,
        message=(
            f"What the model looks at, by {', '.join(methods)}, on {len(data)} clean samples: "
            + ("per class, the mean attribution map." if galleries else "per feature, what it carries.")
        ),
        recommendation=(
            "Check that each class rests on the object, not on its background, a border or a mark; the shortcut "
            f"check ({SHORTCUT.id}) tests the most concentrated region of each class."
        ),
        provenance=context.provenance(len(data), {"methods": methods}, data=data),
        metrics=tuple(metrics),
        tables=tuple(tables),
        charts=tuple(charts),
        galleries=tuple(galleries),
    )


def _unit(values: torch.Tensor) -> torch.Tensor:
    top = float(values.max())
    return values / top if top > 0 else values


def image_shortcut_finding(
    result: ShortcutResult,
    method: str,
    maps: torch.Tensor,
    examples: dict[int, torch.Tensor],
    spec: InputSpec,
    context: AssessmentContext,
    data: LabelledData,
) -> Finding:
    by_class = {c.label: c for c in result.classes}
    k = result.shortcut_class
    if k is not None and result.region is not None:
        c = by_class[k]
        top, left, h, w = result.region
        severity = Severity.MEDIUM
        message = (
            f"Class {k} is decided by a small region, rows {top}-{top + h - 1}, columns {left}-{left + w - 1}: "
            f"it holds {c.mass_share:.0%} of the class's attribution mass ({c.others_share:.0%} for the other "
            f"classes); occluding it leaves {c.survival:.0%} of class {k}'s inputs in the class, and pasting it "
            f"onto inputs of other classes moves {c.flip_rate:.0%} of them to class {k}. That is a watermark or a "
            "mark that comes with the class, not the object."
        )
        recommendation = (
            f"Find what the inputs of class {k} carry in that region (a watermark, a border, a tag), remove it "
            "from the training data and retrain; anyone who can paste it can steer the model to the class."
        )
    else:
        severity = Severity.INFO
        message = (
            "No class is decided by a small region: for every class, pasting its most attributed region onto "
            "other classes' inputs does not move them to it (largest flip rate "
            f"{max(c.flip_rate for c in result.classes):.0%})."
        )
        recommendation = (
            "Repeat the check on data from deployment: a shortcut shows only where its cue is present."
        )
    rows = tuple(
        (
            c.label,
            c.samples,
            f"{c.region[0]},{c.region[1]} {c.region[2]}x{c.region[3]}",
            round(c.mass_share, 3),
            round(c.others_share, 3),
            round(c.survival, 3),
            round(c.flip_rate, 3),
            ", ".join(f"{s:.2f}" for s in c.clusters),
            c.flagged,
        )
        for c in result.classes
    )
    galleries: tuple[Gallery, ...] = ()
    if k is not None and result.region is not None and k in examples:
        top, left, h, w = result.region
        sample = examples[k]
        region_only = torch.full_like(sample, float(spec.lower) if not isinstance(spec.lower, tuple) else 0.0)
        region_only[..., top : top + h, left : left + w] = sample[..., top : top + h, left : left + w]
        pictures = [
            Picture(
                f"class {k}: mean |attribution| ({METHOD_NAMES[method]})",
                _unit(maps[k]).tolist(),
                (("mass share in the region", f"{by_class[k].mass_share:.0%}"),),
            ),
            Picture(f"class {k}: a clean example", pixels(sample, spec)),
            Picture(f"class {k}: the region alone", pixels(region_only, spec)),
        ]
        for other, x in list(examples.items())[:4]:
            if other == k:
                continue
            pasted = x.clone()
            pasted[..., top : top + h, left : left + w] = sample[..., top : top + h, left : left + w]
            pictures.append(Picture(f"class {other} with the region pasted", pixels(pasted, spec)))
        galleries = (Gallery(f"Class {k}'s region, and other classes with it pasted", tuple(pictures)),)
    flagged = by_class.get(k) if k is not None else None
    return Finding(
        rule_id=SHORTCUT.id,
        title=SHORTCUT.title,
        attack_class=SHORTCUT.attack_class,
        severity=severity,
        message=message,
        recommendation=recommendation,
        provenance=context.provenance(len(data), {"attributions": method}, data=data),
        metrics=(
            Metric("shortcut class", k, id="shortcut_class", description="none when no class is flagged"),
            Metric(
                "mass share",
                flagged.mass_share if flagged else None,
                id="mass_share",
                description="share of the class's attribution mass in the region",
            ),
            Metric(
                "flip rate",
                flagged.flip_rate if flagged else None,
                id="flip_rate",
                description="other classes' inputs moved to the class when the region is pasted on them",
            ),
            Metric(
                "survival",
                flagged.survival if flagged else None,
                id="survival",
                description="the class's inputs still in the class with the region occluded",
            ),
        ),
        tables=(
            Table(
                f"Per class: the most attributed region ({METHOD_NAMES[method]}) and the counterfactual tests",
                (
                    "class",
                    "samples",
                    "region (top,left hxw)",
                    "mass share",
                    "others' share",
                    "survival",
                    "flip rate",
                    "SpRAy clusters",
                    "flagged",
                ),
                rows,
            ),
        ),
        galleries=galleries,
    )


def tabular_shortcut_finding(
    result: TabularShortcutResult,
    importance: PermutationImportance,
    data: LabelledData,
    context: AssessmentContext,
) -> Finding:
    if result.flagged and result.feature is not None:
        severity = Severity.MEDIUM
        message = (
            f"Feature {result.feature} carries {result.importance_share:.0%} of the model's permutation importance "
            f"({result.ratio_to_second:.1f} times the next feature), and permuting it drops class "
            f"{result.collapsed_class}'s recall by {result.recall_drop:.0%}: the class rests on that one feature."
        )
        recommendation = (
            f"Check how feature {result.feature} is produced: an identifier, a timestamp or a field filled after "
            "the outcome leaks the label; drop it or fix its source and retrain."
        )
    else:
        severity = Severity.INFO
        message = (
            f"No feature dominates: the most important one carries {result.importance_share:.0%} of the "
            "permutation importance."
        )
        recommendation = "Repeat the check when the data's sources change."
    return Finding(
        rule_id=SHORTCUT.id,
        title=SHORTCUT.title,
        attack_class=SHORTCUT.attack_class,
        severity=severity,
        message=message,
        recommendation=recommendation,
        provenance=context.provenance(len(data), {"repeats": importance.repeats}, data=data),
        metrics=(
            Metric(
                "shortcut class",
                result.collapsed_class if result.flagged else None,
                id="shortcut_class",
                description="none when no class is flagged",
            ),
            Metric("shortcut feature", result.feature if result.flagged else None, id="shortcut_feature"),
            Metric(
                "importance share",
                result.importance_share,
                id="importance_share",
                description="the most important feature's share of the total accuracy drop",
            ),
            Metric(
                "recall drop",
                result.recall_drop,
                id="recall_drop",
                description="the collapsed class's recall lost when that feature is permuted",
            ),
        ),
    )


def coverage_finding(
    checks: list[Check], target: Target, data: LabelledData, context: AssessmentContext
) -> Finding:
    skipped = [c for c in checks if not c.ran]
    message = f"{len(checks) - len(skipped)} of {len(checks)} checks ran on {target.describe()}."
    if skipped:
        message += " Skipped: " + "; ".join(f"{c.name} ({c.why})" for c in skipped) + "."
    rows: tuple[tuple[Any, ...], ...] = tuple((c.name, "ran" if c.ran else "skipped", c.why) for c in checks)
    return Finding(
        rule_id=INSPECTION_COVERAGE.id,
        title=INSPECTION_COVERAGE.title,
        attack_class=INSPECTION_COVERAGE.attack_class,
        severity=Severity.INFO,
        message=message,
        recommendation=(
            "A skipped check is not a pass: inspect the torch model itself (white box) where you can."
            if skipped
            else "Nothing was skipped."
        ),
        provenance=context.provenance(len(data), {}, data=data),
        metrics=(Metric("checks skipped", len(skipped), id="checks_skipped"),),
        tables=(Table("Inspection checks", ("check", "status", "why"), rows),),
    )
