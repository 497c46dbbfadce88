"""Framework mapping (NCSA, BSI stages, MITRE ATLAS, OWASP ML) of every rule, in every report format, the
headline figures, and the defence-in-depth matrix, on findings made by hand (nothing is trained)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from aisec.assessment.finding import (
    Assessment,
    Estimate,
    Finding,
    Metric,
    PolicyCheck,
    Provenance,
    SubjectInfo,
)
from aisec.assessment.rules import RULES as ASSESSMENT_RULES
from aisec.assessment.rules import headline_metric
from aisec.assessment.threat_model import Stage
from aisec.core.attack_class import AttackClass
from aisec.core.severity import Severity
from aisec.defend.supply_chain.result import FileScan, ScanFinding, ScanReport
from aisec.defend.supply_chain.rules import RULES as SCAN_RULES
from aisec.report import frameworks, load_schema, to_json_dict
from aisec.report.frameworks import (
    FRAMEWORKS,
    OWASP_ML,
    PRINCIPLES,
    STAGES,
    as_dict,
    defence_matrix,
    frameworks_of,
    sarif_tags,
)
from aisec.report.html import render_html
from aisec.report.junit import render_junit
from aisec.report.sarif import to_sarif_dict
from aisec.report.scan import scan_to_dict, scan_to_sarif

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "report-schema.md"
SCAN_SCHEMA = ROOT / "src" / "aisec" / "report" / "schema" / "scan.schema.json"
ATLAS_ID = re.compile(r"^AML\.T\d{4}(\.\d{3})?$")
OWASP_ID = re.compile(r"^(ML0[1-9]|ML10)$")
PROVENANCE = Provenance("0.1.0", 7, 200, "a" * 64, "b" * 64)


def _finding(rule_id: str, metrics: tuple[Metric, ...] = (), policy: tuple[PolicyCheck, ...] = ()) -> Finding:
    rule = ASSESSMENT_RULES.get(rule_id)
    return Finding(
        rule_id=rule_id,
        title=rule.title if rule else f"hand-made <b>{rule_id}</b>",
        attack_class=rule.attack_class if rule else AttackClass.INFERENCE,
        severity=Severity.MEDIUM,
        message="made by hand",
        recommendation="none",
        provenance=PROVENANCE,
        metrics=metrics,
        policy=policy,
    )


def _assessment() -> Assessment:
    """An evasion attack that breaks the policy, hardened models (a control in training), membership defences
    (training and operation), label flips (data and training), an inspected backdoor scan (deployment) and a
    finding whose rule aisec does not know."""
    evasion = _finding(
        "AISEC-EVA-001",
        (
            Metric("clean accuracy", Estimate(0.98, 0.96, 0.99, 200), id="clean_accuracy"),
            Metric("robust accuracy at 0.3", Estimate(0.12, 0.08, 0.17, 200), id="robust_accuracy@0.3"),
            Metric("robust accuracy at 0.05", Estimate(0.71, 0.64, 0.77, 200), id="robust_accuracy@0.05"),
            Metric("robust accuracy at 0.1", Estimate(0.43, 0.36, 0.50, 200), id="robust_accuracy@0.1"),
        ),
        (PolicyCheck("min_robust_accuracy@0.1", 0.6, 0.43, False),),
    )
    hardened = _finding(
        "AISEC-ROB-001",
        (
            Metric("best robust accuracy", 0.81, id="best_robust_accuracy@0.1"),
            Metric("cost", 0.02, id="clean_accuracy_cost"),
        ),
        (PolicyCheck("min_robust_accuracy@0.1", 0.6, 0.81, True),),
    )
    membership = _finding("AISEC-MIA-002", (Metric("DP-SGD epsilon spent", 3.2, id="dp_epsilon"),))
    flips = _finding("AISEC-POI-001", (Metric("accuracy lost", 0.09, id="accuracy_lost_at_lowest_rate"),))
    inspected = _finding("AISEC-BKD-004", (Metric("backdoor found", False, id="flagged"),))
    return Assessment(
        name="frameworks",
        tool_version="0.1.0",
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=3.0,
        subject=SubjectInfo(
            "TorchTarget", "white_box", (1, 8, 8), 10, "m.pt", "a" * 64, "digits", 200, "b" * 64
        ),
        threat_model={"knowledge": "white_box"},
        findings=(evasion, hardened, membership, flips, inspected, _finding("AISEC-XYZ-001")),
    )


# Where each finding of _assessment() belongs: (attack class, stage) -> (attack indices, control indices).
PLACED = {
    (AttackClass.EVASION, "operation"): ((0,), ()),
    (AttackClass.EVASION, "training"): ((), (1,)),
    (AttackClass.INFERENCE, "training"): ((), (2,)),
    (AttackClass.INFERENCE, "operation"): ((), (2,)),
    (AttackClass.POISONING, "data"): ((3,), ()),
    (AttackClass.POISONING, "training"): ((3,), ()),
    (AttackClass.BACKDOOR, "deployment"): ((), (4,)),
}


def _scan_report() -> ScanReport:
    findings = (
        ScanFinding("AISEC-SC-201", "imports os.system", "data.pkl@12", Severity.CRITICAL),
        ScanFinding("AISEC-SC-004", "named .npy, holds a pickle", "data.pkl", Severity.MEDIUM),
    )
    scan = FileScan("evil.pt", "pytorch-zip", 120, "c" * 64, findings, 0.01)
    return ScanReport((scan,), "0.1.0", "2025-01-01T00:00:00+00:00", 0.02)


def test_every_rule_of_both_tables_is_mapped_and_nothing_else() -> None:
    assert list(FRAMEWORKS) == [*ASSESSMENT_RULES, *SCAN_RULES]
    assert frameworks._ASSESSMENT.keys() == ASSESSMENT_RULES.keys()  # no mapping left for a removed rule
    assert frameworks._SCAN.keys() == SCAN_RULES.keys()
    with pytest.raises(KeyError, match="AISEC-XYZ-001"):
        frameworks_of("AISEC-XYZ-001")


@pytest.mark.parametrize("rule_id", list(FRAMEWORKS))
def test_each_mapping_is_well_formed(rule_id: str) -> None:
    refs = frameworks_of(rule_id)
    assert refs.role in ("attack", "control")
    assert refs.principle in PRINCIPLES
    assert refs.stages and set(refs.stages) <= set(STAGES)
    assert list(refs.stages) == sorted(refs.stages, key=STAGES.index)  # life-cycle order, no repeats
    assert refs.atlas and all(ATLAS_ID.match(t.id) for t in refs.atlas)
    assert all(t.url == f"https://atlas.mitre.org/techniques/{t.id}" for t in refs.atlas)
    assert refs.owasp_ml and all(OWASP_ID.match(r.id) for r in refs.owasp_ml)
    assert all(r in OWASP_ML for r in refs.owasp_ml)
    if rule_id in ASSESSMENT_RULES:
        assert refs.attack_class is ASSESSMENT_RULES[rule_id].attack_class
    else:
        assert (refs.role, refs.principle, refs.attack_class) == (
            "control",
            frameworks.SUPPLY_CHAIN,
            AttackClass.BACKDOOR,
        )


def test_catalogues_and_stages() -> None:
    assert [r.id for r in OWASP_ML] == [f"ML{n:02d}" for n in range(1, 11)]
    assert OWASP_ML[0].name == "Input Manipulation Attack" and OWASP_ML[9].name == "Model Poisoning"
    assert OWASP_ML[5].url == (
        "https://owasp.org/www-project-machine-learning-security-top-10/docs/ML06_2023-AI_Supply_Chain_Attacks.html"
    )
    assert [p.number for p in PRINCIPLES] == [1, 2, 3, 4, 5]
    assert STAGES == tuple(stage.value for stage in Stage)
    assert set(frameworks.NCSA_ATTACKS) == set(AttackClass)
    techniques = {t.id: t.name for refs in FRAMEWORKS.values() for t in refs.atlas}
    assert techniques["AML.T0015"] == "Evade AI Model"
    assert techniques["AML.T0024.002"] == "Exfiltration via AI Inference API: Extract AI Model"
    assert techniques["AML.T0011.000"] == "User Execution: Unsafe AI Artifacts"


def test_the_mapping_sends_each_attack_to_its_technique() -> None:
    def ids(rule_id: str) -> tuple[set[str], set[str]]:
        refs = frameworks_of(rule_id)
        return {t.id for t in refs.atlas}, {r.id for r in refs.owasp_ml}

    assert ids("AISEC-EVA-001") == ({"AML.T0015", "AML.T0043"}, {"ML01"})
    assert ids("AISEC-POI-001") == ({"AML.T0020"}, {"ML02"})
    assert ids("AISEC-MIA-001") == ({"AML.T0024.000"}, {"ML04"})
    assert ids("AISEC-INV-001") == ({"AML.T0024.001"}, {"ML03"})
    assert ids("AISEC-EXT-001")[1] == {"ML05"} and "AML.T0024.002" in ids("AISEC-EXT-001")[0]
    assert "AML.T0018.000" in ids("AISEC-BKD-001")[0]
    assert {"AML.T0010.003", "AML.T0011.000"} <= ids("AISEC-SC-201")[0] and ids("AISEC-SC-201")[1] == {"ML06"}


def test_headline_picks_the_first_present_id_and_the_largest_parameter() -> None:
    evasion = _assessment().findings[0]
    assert headline_metric(evasion) == evasion.metric("robust_accuracy@0.3")
    auc = Metric("AUC", 0.7, id="highest_auc")
    low_fpr = (Metric("TPR", 0.01, id="tpr_at_fpr@0.001"), Metric("TPR", 0.05, id="tpr_at_fpr@0.01"))
    assert headline_metric(_finding("AISEC-MIA-001", (*low_fpr, auc))) == auc
    assert headline_metric(_finding("AISEC-MIA-001", low_fpr)) == low_fpr[1]  # the fallback, at 0.01
    assert headline_metric(_finding("AISEC-MIA-002")) is None  # no DP-SGD run: no figure
    assert headline_metric(_finding("AISEC-EVA-002")) is None  # masking findings carry no metric
    assert headline_metric(_finding("AISEC-XYZ-001", (auc,))) is None  # not aisec's rule


def test_every_headline_names_a_documented_metric_of_its_rule() -> None:
    """The headline ids are the metric ids docs/report-schema.md lists per rule (`robust_accuracy@<budget>`)."""
    text = DOC.read_text("utf-8")
    section = text[text.index("### metric ids") : text.index("### estimate")]
    documented = dict(re.findall(r"^\| `(AISEC-[A-Z]+-\d{3})` \| (.*) \|$", section, re.M))
    without = {"AISEC-EVA-002", "AISEC-EVA-003", "AISEC-ROB-004", "AISEC-GRD-002"}  # findings without metrics
    for rule in ASSESSMENT_RULES.values():
        assert bool(rule.headline) is (rule.id not in without), rule.id
        for wanted in rule.headline:
            assert f"`{wanted}" in documented[rule.id], (rule.id, wanted)


def test_json_carries_the_frameworks_and_validates() -> None:
    assessment = _assessment()
    document = json.loads(json.dumps(to_json_dict(assessment)))
    validator = jsonschema.Draft202012Validator(load_schema())
    validator.validate(document)
    first, *_, unknown = document["findings"]
    assert first["frameworks"] == as_dict(frameworks_of("AISEC-EVA-001"))
    assert first["frameworks"]["atlas"][0] == {
        "id": "AML.T0015",
        "name": "Evade AI Model",
        "url": "https://atlas.mitre.org/techniques/AML.T0015",
    }
    assert first["frameworks"]["ncsa"]["principle"] == 4 and first["frameworks"]["bsi_stages"] == [
        "operation"
    ]
    assert first["frameworks"]["versions"] == {"atlas": frameworks.ATLAS_VERSION, "owasp_ml": "2023"}
    assert unknown["frameworks"] is None
    first["frameworks"]["atlas"][0]["id"] = "AML.X15"
    assert not validator.is_valid(document)


def test_scan_json_and_sarif_carry_the_frameworks() -> None:
    report = _scan_report()
    document = json.loads(json.dumps(scan_to_dict(report)))
    schema = json.loads(SCAN_SCHEMA.read_text("utf-8"))
    jsonschema.Draft202012Validator(schema).validate(document)
    assert schema["$defs"]["frameworks"] == load_schema()["$defs"]["frameworks"]  # one shape in both
    pickle, mismatch = document["files"][0]["findings"]
    assert pickle["frameworks"] == as_dict(frameworks_of("AISEC-SC-201"))
    assert mismatch["frameworks"]["atlas"][-1]["id"] == "AML.T0074"  # masquerading as another format
    rules = {rule["id"]: rule for rule in scan_to_sarif(report)["runs"][0]["tool"]["driver"]["rules"]}
    tags = rules["AISEC-SC-201"]["properties"]["tags"]
    assert tags[:2] == ["security", "supply-chain"] and len(tags) == len(set(tags))
    assert {"external/atlas/AML.T0011.000", "external/owasp-ml/ML06", "bsi-stage/deployment"} <= set(tags)
    assert rules["AISEC-SC-201"]["properties"]["frameworks"] == pickle["frameworks"]
    assert rules["AISEC-SC-201"]["properties"]["security-severity"] == "9.5"


def test_sarif_rules_are_tagged_for_code_scanning_filters() -> None:
    log = to_sarif_dict(_assessment())
    rules = {rule["id"]: rule for rule in log["runs"][0]["tool"]["driver"]["rules"]}
    evasion = rules["AISEC-EVA-001"]["properties"]
    assert evasion["tags"] == [
        "security",
        "ai",
        "evasion",
        "external/atlas/AML.T0015",
        "external/atlas/AML.T0043",
        "external/owasp-ml/ML01",
        "ncsa/evasion",
        "ncsa-principle/robustness",
        "bsi-stage/operation",
        "aisec/attack",
    ]
    assert evasion["frameworks"] == as_dict(frameworks_of("AISEC-EVA-001"))
    assert "bsi-stage/training" in rules["AISEC-MIA-002"]["properties"]["tags"]
    assert sarif_tags(frameworks_of("AISEC-MIA-002"))[-1] == "aisec/control"
    unknown = rules["AISEC-XYZ-001"]["properties"]
    assert unknown["tags"] == ["security", "ai", "inference"] and "frameworks" not in unknown
    for rule in rules.values():
        assert len(rule["properties"]["tags"]) == len(set(rule["properties"]["tags"]))  # SARIF: unique tags


def test_junit_names_the_frameworks_beside_the_provenance() -> None:
    root = ET.fromstring(render_junit(_assessment()).split("\n", 1)[1])
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties["AISEC-EVA-001.atlas"] == "AML.T0015,AML.T0043"
    assert properties["AISEC-EVA-001.owasp_ml"] == "ML01"
    assert properties["AISEC-EVA-001.ncsa_principle"] == "4"
    assert properties["AISEC-EVA-001.bsi_stage"] == "operation"
    assert properties["AISEC-MIA-002.bsi_stage"] == "training,operation"
    assert properties["AISEC-POI-001.ncsa_principle"] == "1" and properties["AISEC-EVA-001.seed"] == "7"
    assert not any(name.startswith("AISEC-XYZ-001.atlas") for name in properties)


def test_the_matrix_files_each_finding_in_its_cells_and_leaves_the_rest_untested() -> None:
    assessment = _assessment()
    matrix = defence_matrix(assessment)
    assert [attack_class for attack_class, _ in matrix.rows] == list(AttackClass)
    for attack_class, cells in matrix.rows:
        assert [cell.stage for cell in cells] == list(STAGES)
        for cell in cells:
            attacks, controls = PLACED.get((attack_class, cell.stage), ((), ()))
            assert tuple(e.index for e in cell.attacks) == attacks, (attack_class, cell.stage)
            assert tuple(e.index for e in cell.controls) == controls, (attack_class, cell.stage)
            assert (cell.status == "untested") is (not attacks and not controls)
    operation = matrix.cell(AttackClass.EVASION, "operation")
    assert operation.status == "fails policy"
    assert operation.attacks[0].headline == assessment.findings[0].metric("robust_accuracy@0.3")
    assert matrix.cell(AttackClass.EVASION, "training").status == "within policy"
    assert matrix.cell(AttackClass.BACKDOOR, "deployment").status == "no policy check"
    assert [e.finding.rule_id for e in matrix.unmapped] == ["AISEC-XYZ-001"]


def test_html_opens_with_the_matrix_and_labels_each_finding() -> None:
    page = render_html(_assessment())
    matrix = page.index('id="defence-matrix"')
    assert (
        page.index("Policy failed") < matrix < page.index("<h2>Summary</h2>") < page.index('id="finding-1"')
    )
    table = page[matrix : page.index("</table>", matrix)]
    assert "BSI" in table and "life-cycle stage" in table
    assert len(re.findall(r'<td class="untested">\s*untested', table)) == 5 * 4 - len(PLACED)
    assert len(re.findall(r'<td class="fails-policy">', table)) == 1
    assert 'robust accuracy at 0.3: <span class="figure">0.120 (95% CI 0.080–0.170, n=200)</span>' in table
    anchors = set(re.findall(r'href="#(finding-\d+)"', page[matrix:]))
    assert anchors and anchors <= set(re.findall(r'id="(finding-\d+)"', page))
    assert '<a class="fw" href="https://atlas.mitre.org/techniques/AML.T0015"' in page
    assert (
        "owasp.org/www-project-machine-learning-security-top-10/docs/ML01_2023-Input_Manipulation_Attack.html"
        in page
    )
    assert "hand-made &lt;b&gt;AISEC-XYZ-001&lt;/b&gt;" in page  # escaped, and listed under the matrix
    assert not re.search(r'src="(?!data:)|<link\b', page)
    assert not re.search(r'href="(?!#|https://(?:atlas\.mitre\.org|owasp\.org)/)', page)


def test_an_assessment_without_findings_has_every_cell_untested() -> None:
    empty = dataclasses.replace(_assessment(), findings=())
    assert all(cell.status == "untested" for _, cells in defence_matrix(empty).rows for cell in cells)
    assert len(re.findall(r'<td class="untested">\s*untested\s*</td>', render_html(empty))) == 5 * 4


def _mapping_tables() -> str:
    """The tables of docs/report-schema.md, as frameworks.py gives them."""
    lines = [
        "| rule | finding | role | NCSA attack class | NCSA principle | BSI stages | MITRE ATLAS | OWASP ML |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule_id, refs in FRAMEWORKS.items():
        what = ASSESSMENT_RULES[rule_id].title if rule_id in ASSESSMENT_RULES else SCAN_RULES[rule_id].name
        lines.append(
            f"| `{rule_id}` | {what} | {refs.role} | {refs.attack_class.value} | {refs.principle.number} | "
            f"{', '.join(refs.stages)} | {', '.join(t.id for t in refs.atlas)} | "
            f"{', '.join(r.id for r in refs.owasp_ml)} |"
        )
    techniques = {t.id: t for refs in FRAMEWORKS.values() for t in refs.atlas}
    lines += ["", "| ATLAS technique | name |", "|---|---|"]
    lines += [f"| [{t.id}]({t.url}) | {t.name} |" for _, t in sorted(techniques.items())]
    lines += ["", "| OWASP ML (2023) | name |", "|---|---|"]
    lines += [f"| [{r.id}]({r.url}) | {r.name} |" for r in OWASP_ML]
    lines += ["", "| NCSA principle | name | `aisec/defend/` |", "|---|---|---|"]
    lines += [f"| {p.number} | {p.name} | `{p.slug.replace('-', '_')}/` |" for p in PRINCIPLES]
    return "\n".join(lines) + "\n"


def test_the_documented_mapping_is_the_one_in_the_code() -> None:
    text = DOC.read_text("utf-8")
    begin, end = "<!-- frameworks table: begin -->\n", "<!-- frameworks table: end -->"
    documented = text[text.index(begin) + len(begin) : text.index(end)]
    assert documented == _mapping_tables(), "docs/report-schema.md is stale; the tables should read:\n" + (
        _mapping_tables()
    )


def test_the_scan_path_stays_light() -> None:
    """`aisec scan --format json|sarif` imports the frameworks: they must not pull pydantic, jinja2 or torch."""
    code = (
        "import sys, aisec.report.scan\n"
        "print(sorted(m for m in ('pydantic', 'jinja2', 'numpy', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "no Chromium: the report's browser check needs it (Debian: apt-get install chromium; `make test` installs it)"
    )


def test_a_real_browser_renders_the_matrix_first_and_prints_the_report(tmp_path: Path) -> None:
    """Headless Chromium parses the page (the DOM it builds, not our text) with the matrix before any finding,
    every cell in place, and prints the whole report to PDF, as a reader would."""
    browser = _browser()
    page = tmp_path / "report.html"
    page.write_text(render_html(_assessment()), "utf-8")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    matrix = dom.index('id="defence-matrix"')
    assert matrix < dom.index('id="finding-1"')
    table = dom[matrix : dom.index("</table>", matrix)]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)[1:]  # the header row, then one per attack class
    assert len(rows) == 5 and all(len(re.findall(r"<td\b", row)) == 4 for row in rows)
    pdf = tmp_path / "report.pdf"
    subprocess.run(
        [*flags, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
