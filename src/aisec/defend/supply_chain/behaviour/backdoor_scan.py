"""The backdoor scan of a model you did not build: Neural Cleanse (Wang et al. 2019) and MM-BD (Wang et al.
2024) run side by side, combined by a rule chosen on a model zoo (bench/inspection.py, docs/inspect.md).

Neural Cleanse's paper rule (anomaly index > 2) false-alarms on clean digits CNNs, whose ten classes' reversed
masks cluster so tightly that the MAD is tiny; its scale-free `norm_ratio` (smallest mask over the median) and
MM-BD's p-value (which needs no clean data at all) separate the zoo's clean and backdoored models best, and a
class that both detectors point at is stronger evidence than either figure alone (`decide`). The rule names the
class that the clause that fired points at. Each result carries its calibration: how many of the zoo's clean models scored
at least as suspect, from `zoo_calibration.json` (written by `bench/inspection.py --write-calibration`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aisec.core.errors import BadInputError
from aisec.core.progress import Progress
from aisec.data.dataset import LabelledData
from aisec.defend.supply_chain.behaviour.max_margin import MaxMarginConfig, MaxMarginResult, max_margin_scan
from aisec.defend.supply_chain.behaviour.neural_cleanse import (
    NeuralCleanseConfig,
    NeuralCleanseResult,
    neural_cleanse,
)

CALIBRATION_FILE = Path(__file__).with_name("zoo_calibration.json")


@dataclass(frozen=True)
class BackdoorScanConfig:
    """The rule's thresholds, chosen on the zoo study (docs/inspect.md): the zoo's 30 clean models reach a norm
    ratio of 0.604 at the lowest and an MM-BD p-value of 1.4e-3, and both detectors point at the same class on
    a third of them. ratio_alone: flag when Neural Cleanse's smallest reversed mask is below this share of the
    median class's; ratio_agreeing: flag below this when MM-BD's largest margin is the same class (two detector
    families agree); p_value_alone: flag when MM-BD's p-value is below this."""

    ratio_alone: float = 0.55
    ratio_agreeing: float = 0.7
    p_value_alone: float = 1e-3
    neural_cleanse: NeuralCleanseConfig = field(default_factory=NeuralCleanseConfig)
    max_margin: MaxMarginConfig = field(default_factory=MaxMarginConfig)

    def __post_init__(self) -> None:
        if not 0 < self.ratio_alone <= self.ratio_agreeing < 1:
            raise BadInputError(
                "backdoor scan: need 0 < ratio_alone <= ratio_agreeing < 1, got "
                f"{self.ratio_alone} and {self.ratio_agreeing}"
            )
        if not 0 < self.p_value_alone < 1:
            raise BadInputError(f"backdoor scan: p_value_alone must be in (0, 1), got {self.p_value_alone}")

    @property
    def rule(self) -> str:
        return (
            f"flagged when Neural Cleanse's norm ratio < {self.ratio_alone:g}, or < {self.ratio_agreeing:g} with "
            f"MM-BD's largest margin on the same class, or MM-BD's p-value < {self.p_value_alone:g}"
        )


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    suspected_target: int | None
    reasons: tuple[str, ...]
    by_p_value: bool  # only MM-BD's p-value fired


def decide(
    norm_ratio: float, nc_class: int, p_value: float, mm_class: int, config: BackdoorScanConfig
) -> Verdict:
    """The rule on the two detectors' figures: Neural Cleanse's norm ratio and smallest-mask class, MM-BD's
    p-value and largest-margin class. The class named is Neural Cleanse's when one of its clauses fired."""
    reasons = []
    if norm_ratio < config.ratio_alone:
        reasons.append(
            f"Neural Cleanse's smallest reversed trigger (class {nc_class}) is {norm_ratio:.2f} of the median "
            f"class's (< {config.ratio_alone:g})"
        )
    elif norm_ratio < config.ratio_agreeing and nc_class == mm_class:
        reasons.append(
            f"Neural Cleanse's smallest reversed trigger (class {nc_class}) is {norm_ratio:.2f} of the median "
            f"class's (< {config.ratio_agreeing:g}) and MM-BD's largest margin is the same class"
        )
    nc_fired = bool(reasons)
    if p_value < config.p_value_alone:
        reasons.append(
            f"MM-BD: class {mm_class}'s maximum margin has p = {p_value:.2g} (< {config.p_value_alone:g})"
        )
    if not reasons:
        return Verdict(False, None, (), False)
    return Verdict(True, nc_class if nc_fired else mm_class, tuple(reasons), not nc_fired)


@dataclass(frozen=True)
class ZooCalibration:
    """How this model's figures compare with the calibration zoo's clean models: how many scored a norm
    ratio as low, a p-value as low, and at least as suspect on the figure the rule used (`as_suspect`: the
    norm ratio when it fired or when neither did, else the p-value)."""

    clean_models: int
    norm_ratio_as_low: int
    p_value_as_low: int
    as_suspect: int
    false_alarms: int  # the rule's, on the zoo's clean models
    backdoors_detected: int  # of `backdoors`: the zoo's backdoored models whose backdoor took
    backdoors: int
    command: str


@dataclass(frozen=True)
class BackdoorScanResult:
    flagged: bool
    suspected_target: int | None
    reasons: tuple[str, ...]
    rule: str
    neural_cleanse: NeuralCleanseResult
    max_margin: MaxMarginResult
    calibration: ZooCalibration


def backdoor_scan(
    model: nn.Module,
    clean: LabelledData,
    config: BackdoorScanConfig = BackdoorScanConfig(),
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> BackdoorScanResult:
    """Run both detectors on `model` with the clean samples `clean` (images (n, C, H, W) in [lower, upper])
    and apply the rule. Bad input is refused by Neural Cleanse's and MM-BD's checks before any optimisation."""
    generator = generator or torch.Generator().manual_seed(0)
    nc = neural_cleanse(
        model, clean, config.neural_cleanse, lower=lower, upper=upper, generator=generator, progress=progress
    )
    mm = max_margin_scan(
        model,
        tuple(clean.x.shape[1:]),
        config.max_margin,
        lower=lower,
        upper=upper,
        generator=generator,
        progress=progress,
    )
    smallest = min(nc.triggers, key=lambda t: t.norm).target
    verdict = decide(nc.norm_ratio, smallest, mm.p_value, mm.suspected_target, config)
    return BackdoorScanResult(
        flagged=verdict.flagged,
        suspected_target=verdict.suspected_target,
        reasons=verdict.reasons,
        rule=config.rule,
        neural_cleanse=nc,
        max_margin=mm,
        calibration=calibrate(nc.norm_ratio, mm.p_value, by_p_value=verdict.by_p_value),
    )


def calibrate(norm_ratio: float, p_value: float, *, by_p_value: bool) -> ZooCalibration:
    """This model's figures against the zoo's clean models (zoo_calibration.json)."""
    zoo = _zoo()
    rule = zoo["rule"]
    ratios = [m["norm_ratio"] for m in zoo["clean"]]
    p_values = [m["p_value"] for m in zoo["clean"]]
    ratio_low = sum(r <= norm_ratio for r in ratios)
    p_low = sum(p <= p_value for p in p_values)
    return ZooCalibration(
        clean_models=len(ratios),
        norm_ratio_as_low=ratio_low,
        p_value_as_low=p_low,
        as_suspect=p_low if by_p_value else ratio_low,
        false_alarms=rule["false_alarms"],
        backdoors_detected=rule["detected"],
        backdoors=rule["backdoored"],
        command=zoo["command"],
    )


@cache
def _zoo() -> dict[str, Any]:
    zoo: dict[str, Any] = json.loads(CALIBRATION_FILE.read_text())
    return zoo
