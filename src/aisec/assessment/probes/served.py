"""What the privacy probes share: the model as its API serves it, the hardened variants of that API the plan
asks to measure, seeded splits of the assessment data between the attacker and the judge, and how a figure
appears in a table."""

from __future__ import annotations

import math

import torch

from aisec.assessment.plan import DefencesSection
from aisec.assessment.probes.evasion import attacker_view
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.output_hardening import HardenedTarget, harden
from aisec.targets.base import Access, Target
from aisec.targets.views import RestrictedView


def api_view(target: Target, knowledge: Access) -> tuple[Target, str]:
    """The target as a querying attacker sees it: the threat model's knowledge, but never more than scores
    (an attacker holding the weights has nothing to steal or to query for), and a note when the model offers
    less than the threat model assumes."""
    view, note = attacker_view(target, knowledge)
    if view.access is Access.WHITE_BOX:
        view = RestrictedView(target, Access.SCORES)
    return view, note


def hardened_views(target: Target, defences: DefencesSection | None) -> list[HardenedTarget]:
    """The served target under each output-hardening variant of the plan, in the plan's order."""
    if defences is None:
        return []
    return [
        harden(target, top_k=h.top_k, decimals=h.decimals, label_only=h.label_only)
        for h in defences.output_hardening
    ]


def api_label(view: Target) -> str:
    """How a table row names the API an attack ran against."""
    if isinstance(view, HardenedTarget):
        return view.variant
    return "as served" if view.access is Access.SCORES else f"as served ({view.access.value})"


def split(data: LabelledData, first: int, seed: int) -> tuple[LabelledData, LabelledData]:
    """A seeded shuffle of `data` cut after `first` samples (0 < first < len(data): both parts non-empty)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    head, tail = order[:first], order[first:]
    return (
        LabelledData(data.x[head], data.y[head], f"{data.name} (part 1)"),
        LabelledData(data.x[tail], data.y[tail], f"{data.name} (part 2)"),
    )


def cell(value: float | None) -> float | None:
    """A figure for a table cell: four decimals; None for a missing or non-finite one."""
    return None if value is None or not math.isfinite(value) else round(value, 4)
