"""The assessment's rules: one id per kind of finding a probe emits, with what it is about, its attack class and
the figure that sums it up.

Ids are stable (they appear in JSON, SARIF and JUnit reports and in users' CI suppressions); a new kind of
finding gets a new id in its probe's range. Probes take their ids from here and spell none themselves
(tests/test_probe_framework.py checks it). A finding's title may say more than the rule's, e.g. which attacker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aisec.assessment.finding import Finding, Metric
from aisec.core.attack_class import AttackClass


@dataclass(frozen=True)
class Rule:
    """`headline`: the metric ids that sum a finding of this rule up, in order of preference; an id ending in "@"
    stands for the metric with that prefix and the largest parameter (`robust_accuracy@` at the largest budget,
    the strongest attacker the threat model allows). Empty for a rule whose findings carry no figure."""

    id: str
    title: str
    attack_class: AttackClass
    headline: tuple[str, ...] = ()


_EVA, _EXT, _INF = AttackClass.EVASION, AttackClass.EXTRACTION, AttackClass.INFERENCE
_POI, _BKD = AttackClass.POISONING, AttackClass.BACKDOOR

# A served model's controls (rate limits, monitors, hardening: `aisec guard`) measured by the same probes.
STOPPED_BY_SERVICE = Rule(
    "AISEC-GRD-001", "A probe stopped by the service's controls", _EXT, ("queries_answered",)
)
SERVICE_EFFECT = Rule(
    "AISEC-GRD-002", "The service's controls: the same probes against the bare and the served model", _EXT
)
ROBUSTNESS = Rule("AISEC-EVA-001", "Robust accuracy under evasion", _EVA, ("robust_accuracy@",))
# The masking findings and the input-transformation finding carry tables and no metric, hence no headline.
MASKING = Rule("AISEC-EVA-002", "Gradient masking suspected: robustness figures are unreliable", _EVA)
NO_MASKING = Rule("AISEC-EVA-003", "No sign of gradient masking", _EVA)
EXTRACTION = Rule(
    "AISEC-EXT-001",
    "Model extraction: a working copy can be stolen through the API",
    _EXT,
    ("best_agreement",),
)
# "Model reverse engineering & inversion" is one class in the AIVD's taxonomy.
INVERSION = Rule(
    "AISEC-INV-001",
    "Model inversion: class representatives can be rebuilt from the outputs",
    _EXT,
    ("classes_identified",),
)
MEMBERSHIP = Rule("AISEC-MIA-001", "Membership inference", _INF, ("highest_auc", "tpr_at_fpr@"))
MEMBERSHIP_DEFENCES = Rule(
    "AISEC-MIA-002",
    "Membership inference against the defended model",
    _INF,
    ("dp_epsilon", "dp_accuracy_cost"),
)
ATTRIBUTE = Rule("AISEC-ATT-001", "Attribute inference", _INF, ("member_gain",))
LABEL_FLIPS = Rule(
    "AISEC-POI-001", "Poisoning: flipped training labels", _POI, ("accuracy_lost_at_lowest_rate",)
)
LABEL_FLIP_DEFENCES = Rule(
    "AISEC-POI-002", "Poisoning defences: label audit and repair", _POI, ("lowest_audit_recall",)
)
LABEL_AUDIT = Rule("AISEC-POI-003", "Label audit of the training set", _POI, ("flagged_by_both",))
BACKDOOR = Rule(
    "AISEC-BKD-001",
    "Backdoor: a small share of poisoned training data plants a trigger",
    _BKD,
    ("attack_success_at_lowest_rate",),
)
BACKDOOR_DEFENCES = Rule(
    "AISEC-BKD-002",
    "Backdoor defences: screening, repair and run-time detection",
    _BKD,
    ("highest_attack_success_after_retraining", "lowest_screening_recall"),
)
BACKDOOR_SCAN = Rule(
    "AISEC-BKD-003", "Backdoor scan of the model (Neural Cleanse)", _BKD, ("largest_anomaly_index",)
)
HARDENED_MODELS = Rule(
    "AISEC-ROB-001",
    "Hardened models beside the undefended one: robustness bought at a cost",
    _EVA,
    ("best_robust_accuracy@",),
)
CERTIFIED = Rule(
    "AISEC-ROB-002",
    "Certified robustness beside the empirical robust accuracy",
    _EVA,
    ("best_certified_accuracy@", "smoothing_certified_accuracy@"),
)
DETECTORS = Rule(
    "AISEC-ROB-003",
    "Detectors of manipulated input, against non-adaptive and adaptive attacks",
    _EVA,
    ("adaptive_fooled_undetected@",),
)
INPUT_TRANSFORMS = Rule(
    "AISEC-ROB-004", "Input transformations: plain-gradient against BPDA robust accuracy", _EVA
)
NULL_LABELLING = Rule(
    "AISEC-ROB-005",
    "NULL labelling: transfer, adaptive and clean-NULL figures",
    _EVA,
    ("adaptive_success@", "transfer_success@"),
)
# Inspection of a model you did not build (probes.inspection, `aisec inspect`): the file, then its behaviour.
MODEL_FILE_SCAN = Rule("AISEC-INS-001", "Static scan of the model file before it is loaded", _BKD, ("safe",))
MODEL_SIGNATURE = Rule("AISEC-INS-002", "Signature of the model file", _BKD, ("signature_verified",))
INSPECTION_COVERAGE = Rule("AISEC-INS-003", "Inspection checks run and skipped", _BKD, ("checks_skipped",))
INSPECTED_BACKDOOR = Rule(
    "AISEC-BKD-004",
    "Backdoor scan of a model you did not build (calibrated on a model zoo)",
    _BKD,
    ("flagged",),
)
SHORTCUT = Rule(
    "AISEC-AUD-001",
    "Shortcut: a class decided by a watermark or one leaked feature",
    _BKD,
    ("shortcut_class",),
)
EXPLANATIONS = Rule(
    "AISEC-AUD-002", "What the model looks at: attributions per class", _BKD, ("ig_completeness_error",)
)
# Validation of data you did not make (probes.data_validation, `aisec validate`).
DATA_SCHEMA = Rule(
    "AISEC-DAT-001",
    "Schema and ranges of the current data against the reference",
    _POI,
    ("out_of_range_rate",),
)
DATA_DRIFT = Rule(
    "AISEC-DAT-002", "Drift of the current data from the reference", _POI, ("drifted_features",)
)
LABEL_CHANGES = Rule("AISEC-DAT-003", "Labels the data provider changed", _POI, ("label_change_rate",))
SOURCE_DEPENDENCE = Rule("AISEC-DAT-004", "Dependence on one data source", _POI, ("largest_source_share",))
DUPLICATES = Rule("AISEC-DAT-005", "Duplicates and leakage between data sets", _POI, ("leaked_share",))

RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        ROBUSTNESS,
        MASKING,
        NO_MASKING,
        EXTRACTION,
        INVERSION,
        MEMBERSHIP,
        MEMBERSHIP_DEFENCES,
        ATTRIBUTE,
        LABEL_FLIPS,
        LABEL_FLIP_DEFENCES,
        LABEL_AUDIT,
        BACKDOOR,
        BACKDOOR_DEFENCES,
        BACKDOOR_SCAN,
        HARDENED_MODELS,
        CERTIFIED,
        DETECTORS,
        INPUT_TRANSFORMS,
        NULL_LABELLING,
        MODEL_FILE_SCAN,
        MODEL_SIGNATURE,
        INSPECTION_COVERAGE,
        INSPECTED_BACKDOOR,
        SHORTCUT,
        EXPLANATIONS,
        DATA_SCHEMA,
        DATA_DRIFT,
        LABEL_CHANGES,
        SOURCE_DEPENDENCE,
        DUPLICATES,
        STOPPED_BY_SERVICE,
        SERVICE_EFFECT,
    )
}


def headline_metric(finding: Finding) -> Metric | None:
    """The figure that sums `finding` up: the one the probe named (`finding.headline`), else the first of its
    rule's `headline` ids that the finding has (for an id ending in "@", its metric with the largest parameter).
    None when none is there, or the rule is not aisec's."""
    if finding.headline is not None:
        return finding.metric(finding.headline)
    rule = RULES.get(finding.rule_id)
    for wanted in rule.headline if rule is not None else ():
        if not wanted.endswith("@"):
            found = next((m for m in finding.metrics if m.id == wanted), None)
        else:
            measured = [m for m in finding.metrics if m.id.startswith(wanted)]
            found = max(measured, key=lambda m: _parameter(m.id, wanted), default=None)
        if found is not None:
            return found
    return None


def _parameter(metric_id: str, prefix: str) -> float:
    """The number after `prefix` in a metric id (`robust_accuracy@0.05` -> 0.05); one that is none sorts first."""
    try:
        return float(metric_id[len(prefix) :])
    except ValueError:
        return -math.inf
