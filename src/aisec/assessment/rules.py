"""The assessment's rules: one id per kind of finding a probe emits, with what it is about and its attack class.

Ids are stable (they appear in JSON, SARIF and JUnit reports and in users' CI suppressions); a new kind of
finding gets a new id in its probe's range. Probes take their ids from here and spell none themselves
(tests/test_probe_framework.py checks it). A finding's title may say more than the rule's, e.g. which attacker.
"""

from __future__ import annotations

from dataclasses import dataclass

from aisec.core.attack_class import AttackClass


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    attack_class: AttackClass


_EVA, _EXT, _INF = AttackClass.EVASION, AttackClass.EXTRACTION, AttackClass.INFERENCE
_POI, _BKD = AttackClass.POISONING, AttackClass.BACKDOOR

ROBUSTNESS = Rule("AISEC-EVA-001", "Robust accuracy under evasion", _EVA)
MASKING = Rule("AISEC-EVA-002", "Gradient masking suspected: robustness figures are unreliable", _EVA)
NO_MASKING = Rule("AISEC-EVA-003", "No sign of gradient masking", _EVA)
EXTRACTION = Rule("AISEC-EXT-001", "Model extraction: a working copy can be stolen through the API", _EXT)
# "Model reverse engineering & inversion" is one class in the AIVD's taxonomy.
INVERSION = Rule(
    "AISEC-INV-001", "Model inversion: class representatives can be rebuilt from the outputs", _EXT
)
MEMBERSHIP = Rule("AISEC-MIA-001", "Membership inference", _INF)
MEMBERSHIP_DEFENCES = Rule("AISEC-MIA-002", "Membership inference against the defended model", _INF)
ATTRIBUTE = Rule("AISEC-ATT-001", "Attribute inference", _INF)
LABEL_FLIPS = Rule("AISEC-POI-001", "Poisoning: flipped training labels", _POI)
LABEL_FLIP_DEFENCES = Rule("AISEC-POI-002", "Poisoning defences: label audit and repair", _POI)
LABEL_AUDIT = Rule("AISEC-POI-003", "Label audit of the training set", _POI)
BACKDOOR = Rule("AISEC-BKD-001", "Backdoor: a small share of poisoned training data plants a trigger", _BKD)
BACKDOOR_DEFENCES = Rule("AISEC-BKD-002", "Backdoor defences: screening, repair and run-time detection", _BKD)
BACKDOOR_SCAN = Rule("AISEC-BKD-003", "Backdoor scan of the model (Neural Cleanse)", _BKD)
HARDENED_MODELS = Rule(
    "AISEC-ROB-001", "Hardened models beside the undefended one: robustness bought at a cost", _EVA
)
CERTIFIED = Rule("AISEC-ROB-002", "Certified robustness beside the empirical robust accuracy", _EVA)
DETECTORS = Rule(
    "AISEC-ROB-003", "Detectors of manipulated input, against non-adaptive and adaptive attacks", _EVA
)
INPUT_TRANSFORMS = Rule(
    "AISEC-ROB-004", "Input transformations: plain-gradient against BPDA robust accuracy", _EVA
)
NULL_LABELLING = Rule("AISEC-ROB-005", "NULL labelling: transfer, adaptive and clean-NULL figures", _EVA)
# Inspection of a model you did not build (probes.inspection, `aisec inspect`): the file, then its behaviour.
MODEL_FILE_SCAN = Rule("AISEC-INS-001", "Static scan of the model file before it is loaded", _BKD)
MODEL_SIGNATURE = Rule("AISEC-INS-002", "Signature of the model file", _BKD)
INSPECTION_COVERAGE = Rule("AISEC-INS-003", "Inspection checks run and skipped", _BKD)
INSPECTED_BACKDOOR = Rule(
    "AISEC-BKD-004", "Backdoor scan of a model you did not build (calibrated on a model zoo)", _BKD
)
SHORTCUT = Rule("AISEC-AUD-001", "Shortcut: a class decided by a watermark or one leaked feature", _BKD)
EXPLANATIONS = Rule("AISEC-AUD-002", "What the model looks at: attributions per class", _BKD)

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
    )
}
