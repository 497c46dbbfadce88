"""Every rule of aisec in the frameworks a security team reports against, and the defence-in-depth matrix.

Each assessment rule (`aisec.assessment.rules.RULES`) and scan rule (`aisec.defend.supply_chain.rules.RULES`) is
mapped to:

* its role: "attack" (the red team measured an attack) or "control" (a defence or a check was measured);
* the NCSA's attack class and the one of its five principles that the finding serves ("AI systems: develop them
  securely", NCSA of the AIVD; the principles are the folders of `aisec/defend/`);
* the life-cycle stages where the attack or the control acts, after the BSI's best practices ("Security of
  AI-Systems: Fundamentals - Adversarial Deep Learning", 2022): data, training, deployment, operation;
* MITRE ATLAS techniques (ids and names as in ATLAS `ATLAS_VERSION`, dist/ATLAS.yaml of mitre-atlas/atlas-data);
* OWASP Machine Learning Security Top Ten risks (edition `OWASP_ML_EDITION`).

`defence_matrix` files an assessment's findings by attack class and stage: the BSI's table of methods per attack
and life-cycle stage, filled with one model's figures. Nothing here imports pydantic, torch or jinja2, so the scan
path (`aisec scan`) stays light; the stages are therefore spelled as the values of
`aisec.assessment.threat_model.Stage` (tests/test_frameworks.py checks they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aisec.assessment.finding import Assessment, Finding, Metric
from aisec.assessment.rules import RULES as ASSESSMENT_RULES
from aisec.assessment.rules import headline_metric
from aisec.core.attack_class import AttackClass
from aisec.defend.supply_chain.rules import RULES as SCAN_RULES

ATLAS_NAME = "MITRE ATLAS"
ATLAS_VERSION = "5.6.0"  # the data of atlas-data release v5.6.1 (2026-05-05), whose ATLAS.yaml says 5.6.0
ATLAS_URL = "https://atlas.mitre.org/"
OWASP_ML_NAME = "OWASP Machine Learning Security Top Ten"
OWASP_ML_EDITION = "2023"  # ids ML01:2023 ... ML10:2023; the project's list is still marked draft (tag v0.3)
OWASP_ML_URL = "https://owasp.org/www-project-machine-learning-security-top-10/"
# The two documents in the project's seeds/ (named here, not linked: no address of theirs was verified).
NCSA_NAME = "AI systems: develop them securely (NCSA of the AIVD)"
BSI_NAME = "Security of AI-Systems: Fundamentals - Adversarial Deep Learning (BSI, 2022)"

Role = Literal["attack", "control"]
STAGES = ("data", "training", "deployment", "operation")  # the BSI life-cycle stages, in order


@dataclass(frozen=True)
class Reference:
    """One entry of a catalogue: an ATLAS technique or an OWASP ML risk, with the page that describes it."""

    id: str
    name: str
    url: str


@dataclass(frozen=True)
class Principle:
    """One of the NCSA's five principles; `slug` names its folder under `aisec/defend/` (with "-" for "_")."""

    number: int
    name: str
    slug: str


@dataclass(frozen=True)
class FrameworkRefs:
    """Where one rule's findings sit in each framework."""

    role: Role
    attack_class: AttackClass
    principle: Principle
    stages: tuple[str, ...]  # values of STAGES, in life-cycle order
    atlas: tuple[Reference, ...]
    owasp_ml: tuple[Reference, ...]


NCSA_ATTACKS: dict[AttackClass, str] = {
    AttackClass.POISONING: "Poisoning attacks",
    AttackClass.EVASION: "Input (evasion) attacks",
    AttackClass.BACKDOOR: "Backdoor attacks",
    AttackClass.EXTRACTION: "Model reverse engineering & inversion attacks",
    AttackClass.INFERENCE: "Inference attacks",
}
DATA_QUALITY = Principle(1, "Ensure the quality of your datasets", "data-quality")
DATA_VALIDATION = Principle(2, "Consider validation of your data", "data-validation")
SUPPLY_CHAIN = Principle(3, "Take supply chain security into account", "supply-chain")
ROBUSTNESS = Principle(4, "Make your model robust against attacks", "robustness")
AUDITABILITY = Principle(5, "Make sure your model is auditable", "auditability")
PRINCIPLES = (DATA_QUALITY, DATA_VALIDATION, SUPPLY_CHAIN, ROBUSTNESS, AUDITABILITY)


def _atlas(technique_id: str, name: str) -> Reference:
    return Reference(technique_id, name, f"{ATLAS_URL}techniques/{technique_id}")


def _owasp(risk_id: str, name: str) -> Reference:
    page = f"{risk_id}_{OWASP_ML_EDITION}-{name.replace(' ', '_')}"
    return Reference(risk_id, name, f"{OWASP_ML_URL}docs/{page}.html")


# ATLAS techniques, ids and names checked against ATLAS.yaml 5.6.0; a sub-technique is named "technique:
# sub-technique", as ATLAS's own release notes name them.
EVADE_MODEL = _atlas("AML.T0015", "Evade AI Model")
CRAFT_ADVERSARIAL_DATA = _atlas("AML.T0043", "Craft Adversarial Data")
INSERT_BACKDOOR_TRIGGER = _atlas("AML.T0043.004", "Craft Adversarial Data: Insert Backdoor Trigger")
POISON_TRAINING_DATA = _atlas("AML.T0020", "Poison Training Data")
POISON_MODEL = _atlas("AML.T0018.000", "Manipulate AI Model: Poison AI Model")
EMBED_MALWARE = _atlas("AML.T0018.002", "Manipulate AI Model: Embed Malware")
INFER_MEMBERSHIP = _atlas(
    "AML.T0024.000", "Exfiltration via AI Inference API: Infer Training Data Membership"
)
INVERT_MODEL = _atlas("AML.T0024.001", "Exfiltration via AI Inference API: Invert AI Model")
EXTRACT_MODEL = _atlas("AML.T0024.002", "Exfiltration via AI Inference API: Extract AI Model")
TRAIN_PROXY_BY_REPLICATION = _atlas("AML.T0005.001", "Create Proxy AI Model: Train Proxy via Replication")
SUPPLY_CHAIN_SOFTWARE = _atlas("AML.T0010.001", "AI Supply Chain Compromise: AI Software")
SUPPLY_CHAIN_DATA = _atlas("AML.T0010.002", "AI Supply Chain Compromise: Data")
SUPPLY_CHAIN_MODEL = _atlas("AML.T0010.003", "AI Supply Chain Compromise: Model")
UNSAFE_ARTIFACTS = _atlas("AML.T0011.000", "User Execution: Unsafe AI Artifacts")
MASQUERADING = _atlas("AML.T0074", "Masquerading")
CORRUPT_MODEL = _atlas("AML.T0076", "Corrupt AI Model")

# OWASP Machine Learning Security Top Ten, 2023 edition.
ML01 = _owasp("ML01", "Input Manipulation Attack")
ML02 = _owasp("ML02", "Data Poisoning Attack")
ML03 = _owasp("ML03", "Model Inversion Attack")
ML04 = _owasp("ML04", "Membership Inference Attack")
ML05 = _owasp("ML05", "Model Theft")
ML06 = _owasp("ML06", "AI Supply Chain Attacks")
ML07 = _owasp("ML07", "Transfer Learning Attack")
ML08 = _owasp("ML08", "Model Skewing")
ML09 = _owasp("ML09", "Output Integrity Attack")
ML10 = _owasp("ML10", "Model Poisoning")
OWASP_ML = (ML01, ML02, ML03, ML04, ML05, ML06, ML07, ML08, ML09, ML10)


_EVA, _EXT, _INF = AttackClass.EVASION, AttackClass.EXTRACTION, AttackClass.INFERENCE
_POI, _BKD = AttackClass.POISONING, AttackClass.BACKDOOR
_EVASION = (EVADE_MODEL, CRAFT_ADVERSARIAL_DATA)
_BACKDOOR = (POISON_TRAINING_DATA, POISON_MODEL, INSERT_BACKDOOR_TRIGGER)
_SHORTCUT = (POISON_TRAINING_DATA, POISON_MODEL)
_EXECUTES = (SUPPLY_CHAIN_MODEL, UNSAFE_ARTIFACTS, EMBED_MALWARE)  # code that runs when the file is loaded
_LOADS = (SUPPLY_CHAIN_MODEL, UNSAFE_ARTIFACTS)  # loading reaches outside the file or imports what it names
_HIDES = (SUPPLY_CHAIN_MODEL, EMBED_MALWARE)  # bytes the loader skips: room for a payload
_EVADES_SCANNER = (SUPPLY_CHAIN_MODEL, CORRUPT_MODEL)  # parts the scanner could not read
_TAMPERED = (SUPPLY_CHAIN_MODEL,)


def _scan(atlas: tuple[Reference, ...]) -> FrameworkRefs:
    """A static-scan rule: a supply-chain check of a model file before it is loaded."""
    return FrameworkRefs("control", _BKD, SUPPLY_CHAIN, ("deployment",), atlas, (ML06,))


_ASSESSMENT: dict[str, FrameworkRefs] = {
    "AISEC-EVA-001": FrameworkRefs("attack", _EVA, ROBUSTNESS, ("operation",), _EVASION, (ML01,)),
    # The gradient-masking checks vouch for (or against) the evasion figures: checks, so controls.
    "AISEC-EVA-002": FrameworkRefs("control", _EVA, ROBUSTNESS, ("operation",), _EVASION, (ML01,)),
    "AISEC-EVA-003": FrameworkRefs("control", _EVA, ROBUSTNESS, ("operation",), _EVASION, (ML01,)),
    "AISEC-EXT-001": FrameworkRefs(
        "attack", _EXT, ROBUSTNESS, ("operation",), (EXTRACT_MODEL, TRAIN_PROXY_BY_REPLICATION), (ML05,)
    ),
    # A served model's own controls (rate limits, quotas, monitors, hardening), measured by querying probes.
    "AISEC-GRD-001": FrameworkRefs(
        "control", _EXT, ROBUSTNESS, ("deployment", "operation"), (EXTRACT_MODEL, EVADE_MODEL), (ML05, ML01)
    ),
    "AISEC-GRD-002": FrameworkRefs(
        "control", _EXT, ROBUSTNESS, ("deployment", "operation"), (EXTRACT_MODEL, EVADE_MODEL), (ML05, ML01)
    ),
    "AISEC-INV-001": FrameworkRefs("attack", _EXT, ROBUSTNESS, ("operation",), (INVERT_MODEL,), (ML03,)),
    "AISEC-MIA-001": FrameworkRefs("attack", _INF, ROBUSTNESS, ("operation",), (INFER_MEMBERSHIP,), (ML04,)),
    # DP-SGD acts in training, rounded, top-k and label-only outputs in operation.
    "AISEC-MIA-002": FrameworkRefs(
        "control", _INF, ROBUSTNESS, ("training", "operation"), (INFER_MEMBERSHIP,), (ML04,)
    ),
    # Attribute inference rebuilds a record's hidden features from the outputs: ATLAS's model inversion.
    "AISEC-ATT-001": FrameworkRefs("attack", _INF, ROBUSTNESS, ("operation",), (INVERT_MODEL,), (ML03,)),
    # A poisoner writes to the data; the harm is done when the model is trained on it.
    "AISEC-POI-001": FrameworkRefs(
        "attack", _POI, DATA_QUALITY, ("data", "training"), (POISON_TRAINING_DATA,), (ML02,)
    ),
    "AISEC-POI-002": FrameworkRefs(
        "control", _POI, DATA_QUALITY, ("data", "training"), (POISON_TRAINING_DATA,), (ML02,)
    ),
    "AISEC-POI-003": FrameworkRefs(
        "control", _POI, DATA_QUALITY, ("data",), (POISON_TRAINING_DATA,), (ML02,)
    ),
    "AISEC-BKD-001": FrameworkRefs(
        "attack", _BKD, DATA_QUALITY, ("data", "training"), _BACKDOOR, (ML02, ML10)
    ),
    # Screening the data, retraining without what it flags, STRIP in front of the served model.
    "AISEC-BKD-002": FrameworkRefs(
        "control", _BKD, DATA_QUALITY, ("data", "training", "operation"), _BACKDOOR, (ML02, ML10)
    ),
    "AISEC-BKD-003": FrameworkRefs("control", _BKD, SUPPLY_CHAIN, ("deployment",), (POISON_MODEL,), (ML10,)),
    "AISEC-ROB-001": FrameworkRefs("control", _EVA, ROBUSTNESS, ("training",), _EVASION, (ML01,)),
    # Certified (IBP, CROWN) training, and randomised smoothing's noisy votes at prediction time.
    "AISEC-ROB-002": FrameworkRefs("control", _EVA, ROBUSTNESS, ("training", "operation"), _EVASION, (ML01,)),
    "AISEC-ROB-003": FrameworkRefs("control", _EVA, ROBUSTNESS, ("operation",), _EVASION, (ML01,)),
    "AISEC-ROB-004": FrameworkRefs("control", _EVA, ROBUSTNESS, ("operation",), _EVASION, (ML01,)),
    # The NCSA lists NULL labelling under data quality; aisec keeps it in defend/data_quality/.
    "AISEC-ROB-005": FrameworkRefs("control", _EVA, DATA_QUALITY, ("training",), _EVASION, (ML01,)),
    "AISEC-INS-001": _scan(_EXECUTES),
    "AISEC-INS-002": _scan(_TAMPERED),
    "AISEC-INS-003": _scan(_TAMPERED),
    "AISEC-BKD-004": FrameworkRefs(
        "control", _BKD, SUPPLY_CHAIN, ("deployment",), (SUPPLY_CHAIN_MODEL, POISON_MODEL), (ML06, ML10)
    ),
    "AISEC-AUD-001": FrameworkRefs("control", _BKD, AUDITABILITY, ("deployment",), _SHORTCUT, (ML02, ML10)),
    "AISEC-AUD-002": FrameworkRefs("control", _BKD, AUDITABILITY, ("deployment",), _SHORTCUT, (ML02, ML10)),
    # Data from outside: checked when it arrives; drift is also watched in operation (monitoring windows).
    "AISEC-DAT-001": FrameworkRefs(
        "control", _POI, DATA_VALIDATION, ("data",), (SUPPLY_CHAIN_DATA,), (ML06,)
    ),
    "AISEC-DAT-002": FrameworkRefs(
        "control", _POI, DATA_VALIDATION, ("data", "operation"), (SUPPLY_CHAIN_DATA,), (ML06, ML08)
    ),
    "AISEC-DAT-003": FrameworkRefs(
        "control", _POI, DATA_VALIDATION, ("data",), (SUPPLY_CHAIN_DATA, POISON_TRAINING_DATA), (ML02, ML06)
    ),
    "AISEC-DAT-004": FrameworkRefs(
        "control", _POI, DATA_VALIDATION, ("data", "training"), (SUPPLY_CHAIN_DATA,), (ML06,)
    ),
    "AISEC-DAT-005": FrameworkRefs(
        "control", _POI, DATA_VALIDATION, ("data",), (SUPPLY_CHAIN_DATA,), (ML06,)
    ),
}

_SCAN: dict[str, FrameworkRefs] = {
    "AISEC-SC-001": _scan(_EVADES_SCANNER),
    "AISEC-SC-002": _scan(_EVADES_SCANNER),
    "AISEC-SC-003": _scan(_EVADES_SCANNER),
    "AISEC-SC-004": _scan((SUPPLY_CHAIN_MODEL, MASQUERADING)),
    "AISEC-SC-005": _scan((*_EXECUTES, MASQUERADING)),
    "AISEC-SC-006": _scan(_HIDES),
    "AISEC-SC-101": _scan(_LOADS),
    "AISEC-SC-102": _scan(_LOADS),
    "AISEC-SC-103": _scan((SUPPLY_CHAIN_MODEL, MASQUERADING)),
    "AISEC-SC-104": _scan(_TAMPERED),
    "AISEC-SC-105": _scan(_EVADES_SCANNER),
    "AISEC-SC-201": _scan(_EXECUTES),
    "AISEC-SC-202": _scan(_LOADS),
    "AISEC-SC-203": _scan(_EXECUTES),
    "AISEC-SC-204": _scan(_EXECUTES),
    "AISEC-SC-205": _scan(_EXECUTES),
    "AISEC-SC-206": _scan(_EXECUTES),
    "AISEC-SC-301": _scan(_LOADS),
    "AISEC-SC-401": _scan(_EVADES_SCANNER),
    "AISEC-SC-402": _scan(_HIDES),
    "AISEC-SC-501": _scan(_EVADES_SCANNER),
    "AISEC-SC-502": _scan(_EXECUTES),
    "AISEC-SC-503": _scan(_EVADES_SCANNER),
    "AISEC-SC-601": _scan((SUPPLY_CHAIN_MODEL, SUPPLY_CHAIN_SOFTWARE)),
    "AISEC-SC-602": _scan((SUPPLY_CHAIN_MODEL, SUPPLY_CHAIN_SOFTWARE)),
    "AISEC-SC-603": _scan(_LOADS),
    "AISEC-SC-604": _scan(_TAMPERED),
    "AISEC-SC-701": _scan(_EXECUTES),
    "AISEC-SC-702": _scan(_LOADS),
    "AISEC-SC-703": _scan(_EXECUTES),
    "AISEC-SC-801": _scan(_EXECUTES),
}

# Every rule of both tables, assessment rules first, each table in its own order.
FRAMEWORKS: Mapping[str, FrameworkRefs] = {
    **{rule_id: _ASSESSMENT[rule_id] for rule_id in ASSESSMENT_RULES},
    **{rule_id: _SCAN[rule_id] for rule_id in SCAN_RULES},
}


def frameworks_of(rule_id: str) -> FrameworkRefs:
    """The frameworks of an assessment or scan rule; KeyError naming the id when aisec has no such rule."""
    try:
        return FRAMEWORKS[rule_id]
    except KeyError:
        raise KeyError(
            f"{rule_id!r} is not a rule of aisec (aisec.assessment.rules, supply_chain.rules)"
        ) from None


def as_dict(refs: FrameworkRefs) -> dict[str, Any]:
    """The frameworks as JSON-ready data (the `frameworks` object of report.json and scan JSON)."""
    return {
        "role": refs.role,
        "ncsa": {
            "attack_class": refs.attack_class.value,
            "attack": NCSA_ATTACKS[refs.attack_class],
            "principle": refs.principle.number,
            "principle_name": refs.principle.name,
        },
        "bsi_stages": list(refs.stages),
        "atlas": [{"id": t.id, "name": t.name, "url": t.url} for t in refs.atlas],
        "owasp_ml": [{"id": r.id, "name": r.name, "url": r.url} for r in refs.owasp_ml],
        "versions": {"atlas": ATLAS_VERSION, "owasp_ml": OWASP_ML_EDITION},
    }


def sarif_tags(refs: FrameworkRefs) -> list[str]:
    """SARIF rule tags for code-scanning filters. Catalogue ids follow the "external/<catalogue>/<id>" tags of
    GitHub's CodeQL queries (external/cwe/cwe-079), keeping each catalogue's own spelling of its ids."""
    return [
        *(f"external/atlas/{t.id}" for t in refs.atlas),
        *(f"external/owasp-ml/{r.id}" for r in refs.owasp_ml),
        f"ncsa/{refs.attack_class.value}",
        f"ncsa-principle/{refs.principle.slug}",
        *(f"bsi-stage/{stage}" for stage in refs.stages),
        f"aisec/{refs.role}",
    ]


@dataclass(frozen=True)
class MatrixEntry:
    """One finding in a cell: `index` is its position in `Assessment.findings`."""

    index: int
    finding: Finding
    headline: Metric | None


@dataclass(frozen=True)
class MatrixCell:
    attack_class: AttackClass
    stage: str
    attacks: tuple[MatrixEntry, ...]  # attacks the red team ran here
    controls: tuple[MatrixEntry, ...]  # defences and checks measured here

    @property
    def status(self) -> Literal["untested", "fails policy", "within policy", "no policy check"]:
        """What the cell says at a glance: nothing ran here, some finding breaks the policy, all checked
        findings hold, or findings without policy checks."""
        entries = self.attacks + self.controls
        if not entries:
            return "untested"
        if any(e.finding.breaks_policy for e in entries):
            return "fails policy"
        return "within policy" if any(e.finding.policy for e in entries) else "no policy check"


@dataclass(frozen=True)
class DefenceMatrix:
    """The five attack classes against the life-cycle stages; `unmapped` holds findings whose rule aisec does
    not know (made by hand), which no cell can take."""

    rows: tuple[tuple[AttackClass, tuple[MatrixCell, ...]], ...]  # cells in STAGES order
    unmapped: tuple[MatrixEntry, ...]

    def cell(self, attack_class: AttackClass, stage: str) -> MatrixCell:
        cells = dict(self.rows)[attack_class]
        return cells[STAGES.index(stage)]


def defence_matrix(assessment: Assessment) -> DefenceMatrix:
    """File each finding under its rule's attack class and every stage its attack or control acts in, in the
    order the assessment ran them."""
    placed: dict[tuple[AttackClass, str], dict[Role, list[MatrixEntry]]] = {
        (c, s): {"attack": [], "control": []} for c in AttackClass for s in STAGES
    }
    unmapped = []
    for index, finding in enumerate(assessment.findings):
        entry = MatrixEntry(index, finding, headline_metric(finding))
        refs = FRAMEWORKS.get(finding.rule_id)
        if refs is None:
            unmapped.append(entry)
            continue
        for stage in refs.stages:
            placed[refs.attack_class, stage][refs.role].append(entry)
    rows = tuple(
        (
            attack_class,
            tuple(
                MatrixCell(
                    attack_class,
                    stage,
                    tuple(placed[attack_class, stage]["attack"]),
                    tuple(placed[attack_class, stage]["control"]),
                )
                for stage in STAGES
            ),
        )
        for attack_class in AttackClass
    )
    return DefenceMatrix(rows, tuple(unmapped))
