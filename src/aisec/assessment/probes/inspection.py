"""Inspection of a model you did not build, with the model and some clean data only (`probes.inspection`,
`aisec inspect`; docs/inspect.md).

The file checks (static scan, signature) run before the model is loaded (`assessment/model_file.py`); this probe
runs on the loaded model: the behavioural backdoor scan (Neural Cleanse and MM-BD combined by the rule
calibrated on a model zoo, `defend/supply_chain/behaviour/backdoor_scan.py`), the explanations (Captum for torch
models, occlusion or permutation importance for black boxes) and the shortcut check built on them. A check that
cannot run on this model (no gradients, no images) is skipped and the coverage finding says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from aisec.assessment.images import is_image
from aisec.assessment.probes.inspection_findings import (
    Check,
    backdoor_finding,
    coverage_finding,
    explanations_finding,
    first_of_each_class,
    image_shortcut_finding,
    tabular_shortcut_finding,
)
from aisec.core.attack_class import AttackClass
from aisec.core.errors import DataError
from aisec.defend.auditability.explanations import (
    Attributions,
    ExplanationConfig,
    attribute,
    class_mean_maps,
    completeness_error,
    permutation_importance,
)
from aisec.defend.auditability.shortcuts import image_shortcuts, tabular_shortcuts
from aisec.defend.supply_chain.behaviour.backdoor_scan import backdoor_scan
from aisec.targets.torch_target import TorchTarget

if TYPE_CHECKING:
    from aisec.assessment.finding import Finding
    from aisec.assessment.plan import InspectionProbeSection
    from aisec.assessment.probe import AssessmentContext
    from aisec.targets.base import Target

NO_GRADIENTS = "needs the model's gradients (a torch model); this model answers queries only"


class _Queries(nn.Module):
    """A black box as a forward function, for the attribution methods that only query (occlusion)."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.scores(x)


@dataclass
class InspectionProbe:
    config: InspectionProbeSection
    attack_class: AttackClass = AttackClass.BACKDOOR
    name: str = "inspection"

    def check(self, context: AssessmentContext) -> None:
        """The clean data must hold at least two classes (every check compares classes)."""
        if torch.unique(context.data.y).numel() < 2:
            raise DataError(f"{context.data.name}: inspection needs clean samples of at least two classes")

    def run(self, context: AssessmentContext) -> list[Finding]:
        cfg, target = self.config, context.target
        data = context.data
        if len(data) > cfg.samples:
            data = data.subset(cfg.samples, seed=context.seed)
        spec = target.spec
        module = target.module if isinstance(target, TorchTarget) else None
        image = is_image(tuple(spec.shape)) and len(spec.shape) == 3
        single_range = not isinstance(spec.lower, tuple) and not isinstance(spec.upper, tuple)
        lower, upper = min(_floats(spec.lower)), max(_floats(spec.upper))  # per-feature bounds: their hull
        generator = torch.Generator().manual_seed(context.seed)
        checks: list[Check] = []
        findings: list[Finding] = []

        # 1. the behavioural backdoor scan
        why_not = (
            "probes.inspection.backdoor_scan is false"
            if not cfg.backdoor_scan
            else NO_GRADIENTS
            if module is None
            else f"triggers are reverse-engineered on images (C, H, W); the inputs have shape {tuple(spec.shape)}"
            if not image
            else "needs one input range for every pixel; the input spec gives per-feature bounds"
            if not single_range
            else None
        )
        if why_not is None and module is not None:
            scan = backdoor_scan(
                module, data, lower=lower, upper=upper, generator=generator, progress=context.progress
            )
            findings.append(backdoor_finding(scan, data, spec, context))
            checks.append(Check("backdoor scan (Neural Cleanse, MM-BD)", True, "calibrated rule"))
        else:
            checks.append(Check("backdoor scan (Neural Cleanse, MM-BD)", False, why_not or ""))

        # 2. explanations: attributions of each sample's own class
        attributions: dict[str, Attributions] = {}
        completeness: float | None = None
        for method in cfg.explanations:
            if module is None and method != "occlusion":
                checks.append(Check(f"explanations: {method}", False, NO_GRADIENTS))
                continue
            if method == "occlusion" and not image:
                checks.append(
                    Check("explanations: occlusion", False, "occlusion slides a window over images")
                )
                continue
            model = module if module is not None else _Queries(target)
            config = ExplanationConfig(method=method)
            result = attribute(model, data.x, data.y, config, lower=lower, upper=upper)
            attributions[method] = result
            if method == "integrated_gradients" and module is not None:
                completeness = float(
                    completeness_error(module, data.x, result, lower=lower, upper=upper).max()
                )
            checks.append(Check(f"explanations: {method}", True, ""))
        if module is None and image and "occlusion" not in attributions:
            # a black box still shows what it looks at: occlusion needs queries only
            attributions["occlusion"] = attribute(
                _Queries(target),
                data.x,
                data.y,
                ExplanationConfig(method="occlusion"),
                lower=lower,
                upper=upper,
            )
            checks.append(Check("explanations: occlusion", True, "queries only: chosen for a black box"))
        importance = None
        if not image:
            importance = permutation_importance(
                target.labels, data.x, data.y, num_classes=spec.num_classes, generator=generator
            )
            checks.append(Check("explanations: permutation importance", True, "tabular inputs"))
        if attributions or importance is not None:
            findings.append(explanations_finding(attributions, importance, completeness, data, spec, context))

        # 3. the shortcut check, on the attributions (images) or the permutation importance (tabular)
        if not cfg.shortcuts:
            checks.append(Check("shortcut check", False, "probes.inspection.shortcuts is false"))
        elif importance is not None:
            findings.append(
                tabular_shortcut_finding(tabular_shortcuts(importance), importance, data, context)
            )
            checks.append(Check("shortcut check", True, "permutation importance"))
        elif attributions:
            basis = (
                "integrated_gradients" if "integrated_gradients" in attributions else next(iter(attributions))
            )
            shortcut = image_shortcuts(
                target.labels,
                data.x,
                data.y,
                attributions[basis].values,
                lower=lower,
                upper=upper,
                generator=generator,
            )
            findings.append(
                image_shortcut_finding(
                    shortcut,
                    basis,
                    class_mean_maps(attributions[basis].values, data.y, spec.num_classes),
                    first_of_each_class(data),
                    spec,
                    context,
                    data,
                )
            )
            checks.append(Check("shortcut check", True, f"on {basis.replace('_', ' ')} attributions"))
        else:
            checks.append(
                Check("shortcut check", False, "no attributions to check: enable an explanation method")
            )
        findings.append(coverage_finding(checks, target, data, context))
        return findings


def _floats(bound: float | tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(b) for b in bound) if isinstance(bound, tuple) else (float(bound),)
