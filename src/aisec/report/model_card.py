"""The model card: an assessment as a Hugging Face model card, with a security section.

The card follows the Hugging Face model card format (https://github.com/huggingface/hub-docs/blob/main/modelcard.md):
YAML front matter whose `model-index` holds the evaluation results, which `huggingface_hub.ModelCard.load` reads,
then Markdown. The front matter uses only fields `huggingface_hub.ModelCardData` reads and writes back
unchanged: the results of one task on one data set form one result (the hub keys results by task and data set and
merges those that share both), each figure a metric whose `type` is its aisec metric id, `config` the rule id of
its finding, and `verified` false. An estimate's value goes into the front matter; its interval is in the text.

The security section gives the threat model, each finding's headline figure (`rules.headline_metric`), the
controls measured with what they cost (`aisec.core.control_costs`), the model file's scan verdict, the hashes of
model, data and plan, how to reproduce the figures and the findings flagged unreliable. `render_model_card_json`
writes the same as JSON: the front matter as `metadata`, the security section as `security`.

Every string taken from the assessment (titles, messages, names from a plan or a model file) is escaped before it
enters the Markdown, so that a `|` cannot break a table nor `<script>` become HTML, and is written to the YAML on
one line with no control characters.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import yaml

from aisec.assessment.finding import Assessment, Estimate, Finding, Metric
from aisec.assessment.rules import MODEL_FILE_SCAN, MODEL_SIGNATURE, headline_metric
from aisec.core.control_costs import is_cost_metric, table_costs
from aisec.report.frameworks import FRAMEWORKS
from aisec.report.json_report import jsonable

CARD_SCHEMA = "aisec.model-card/1"
TAGS = ("aisec", "security-assessment")
# The adapter aisec queried the model through -> the Hugging Face `library_name` of such a model.
_LIBRARIES = {
    "TorchTarget": "pytorch",
    "SklearnTorchTarget": "sklearn",
    "SklearnTarget": "sklearn",
    "OnnxTarget": "onnx",
}
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$#])")
_THREAT_MODEL_LABELS = {
    "knowledge": "attacker's knowledge",
    "norm": "perturbation norm",
    "budgets": "perturbation budgets",
    "query_budget": "queries per sample",
    "stage": "life-cycle stage",
}


def model_card_metadata(assessment: Assessment) -> dict[str, Any]:
    """The card's YAML front matter as data: library, tags, pipeline tag and the `model-index` of every numeric
    figure (estimates as their value), under the model's name (its file name, else the assessment's)."""
    subject = assessment.subject
    task = "image-classification" if len(subject.input_shape) == 3 else "tabular-classification"
    metrics = [
        {
            "type": _line(m.id),
            "value": value,
            "name": _line(m.name),
            "config": _line(f.rule_id),
            "verified": False,
        }
        for f in assessment.findings
        for m in _figures(f)
        if (value := _number(m.value)) is not None
    ]
    metadata: dict[str, Any] = {}
    if subject.target_kind in _LIBRARIES:
        metadata["library_name"] = _LIBRARIES[subject.target_kind]
    attack_classes = dict.fromkeys(f.attack_class.value for f in assessment.findings)
    metadata["tags"] = [*TAGS, *attack_classes]
    metadata["pipeline_tag"] = task
    if metrics:
        dataset = {
            "name": _line(subject.data_name),
            "type": _line(subject.data_name),
            "revision": _line(subject.data_sha256),
        }
        result = {
            "task": {"type": task, "name": "Security assessment"},
            "dataset": dataset,
            "metrics": metrics,
        }
        metadata["model-index"] = [{"name": model_name(assessment), "results": [result]}]
    return metadata


def model_name(assessment: Assessment) -> str:
    """The model's file name (the last part of its path or URI), else the assessment's name."""
    source = (assessment.subject.model_source or "").rstrip("/\\")
    name = PurePath(source.replace("\\", "/")).name if source else ""
    return _line(name or assessment.name)


def security_section(assessment: Assessment) -> dict[str, Any]:
    """The card's security section as JSON-ready data (non-finite floats as None, metrics as in report.json)."""
    subject = assessment.subject
    findings = assessment.findings
    return jsonable(
        {
            "assessment": {
                "name": assessment.name,
                "tool_version": assessment.tool_version,
                "started_at": assessment.started_at,
                "duration_s": assessment.duration_s,
            },
            "model": {
                "name": model_name(assessment),
                "source": subject.model_source,
                "sha256": subject.model_sha256,
                "target_kind": subject.target_kind,
                "access": subject.access,
                "input_shape": subject.input_shape,
                "num_classes": subject.num_classes,
                "input_spec_source": subject.input_spec_source,
            },
            "data": {
                "name": subject.data_name,
                "samples": subject.data_samples,
                "sha256": subject.data_sha256,
            },
            "threat_model": assessment.threat_model,
            "passed": assessment.passed,
            "findings": [
                {
                    "rule_id": f.rule_id,
                    "title": f.title,
                    "severity": f.severity,
                    "attack_class": f.attack_class,
                    "breaks_policy": f.breaks_policy,
                    "has_policy": bool(f.policy),
                    "reliable": f.reliable,
                    "headline": headline_metric(f),
                    "metrics": f.metrics,
                }
                for f in findings
            ],
            "controls": [_control(f) for f in findings if _is_control(f) or _costs(f)],
            "scan": _scan(assessment),
            "hashes": {
                "model_sha256": _scanned_sha256(assessment),
                "data_sha256": subject.data_sha256,
                "plan_sha256": assessment.plan_sha256,
            },
            "reproduce": {
                "tool_version": assessment.tool_version,
                "seeds": sorted({f.provenance.seed for f in findings}),
                "plan_path": assessment.plan_path,
                "plan_sha256": assessment.plan_sha256,
            },
            "limitations": [
                {
                    "rule_id": f.rule_id,
                    "title": f.title,
                    "reason": "its figures were flagged unreliable (e.g. gradient masking): treat them as bounds",
                }
                for f in findings
                if not f.reliable
            ],
        }
    )


def render_model_card(assessment: Assessment) -> str:
    """The model card as text: `---`, the YAML front matter, `---`, then the Markdown."""
    front = yaml.safe_dump(model_card_metadata(assessment), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + _markdown(security_section(assessment))


def render_model_card_json(assessment: Assessment) -> str:
    """The card's data as JSON (strict: no NaN literals): {"schema", "metadata": the front matter,
    "security": the security section}."""
    document = {
        "schema": CARD_SCHEMA,
        "metadata": model_card_metadata(assessment),
        "security": security_section(assessment),
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------------ the data


def _figures(finding: Finding) -> list[Metric]:
    """The finding's headline metric first, then its other metrics in their order."""
    headline = headline_metric(finding)
    return ([headline] if headline is not None else []) + [m for m in finding.metrics if m is not headline]


def _number(value: bool | float | Estimate | None) -> float | int | None:
    """A metric's value as a finite number (an estimate's point value); None for verdicts, missing and NaN."""
    if isinstance(value, Estimate):
        value = value.value
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return None
    return value


def _costs(finding: Finding) -> list[dict[str, Any]]:
    """What the control of a finding cost: its cost metrics, then its tables' cost cells per row."""
    costs: list[dict[str, Any]] = [
        {"of": None, "figure": m.id, "name": m.name, "value": m.value, "unit": m.unit}
        for m in finding.metrics
        if is_cost_metric(m.id, m.unit)
    ]
    for table in finding.tables:
        costs += [
            {"of": label, "figure": heading, "name": heading, "value": cell, "unit": ""}
            for label, heading, cell in table_costs(table.columns, table.rows)
        ]
    return costs


def _is_control(finding: Finding) -> bool:
    """A finding that measures a control (a defence or a check) rather than an attack: its rule's role in the
    framework mapping, the one classification the matrix uses too. The file scan and signature have their own
    section of the card."""
    refs = FRAMEWORKS.get(finding.rule_id)
    own_section = finding.rule_id in (MODEL_FILE_SCAN.id, MODEL_SIGNATURE.id)
    return refs is not None and refs.role == "control" and not own_section


def _control(finding: Finding) -> dict[str, Any]:
    return {
        "rule_id": finding.rule_id,
        "title": finding.title,
        "benefit": headline_metric(finding),
        "costs": _costs(finding),
    }


def _scan(assessment: Assessment) -> dict[str, Any]:
    """The static scan of the model file (AISEC-INS-001) and its signature check (AISEC-INS-002), if run."""
    scan = _first(assessment, MODEL_FILE_SCAN.id)
    signature = _first(assessment, MODEL_SIGNATURE.id)
    if signature is None:
        signed = "not checked"
    else:
        verified = next((m.value for m in signature.metrics if m.id == "signature_verified"), None)
        signed = "verified" if verified is True else "not verified"
    if scan is None:
        return {"status": "not scanned", "verdict": None, "format": None, "signature": signed}
    settings = scan.provenance.settings
    return {
        "status": "scanned",
        "verdict": settings.get("verdict"),
        "format": settings.get("format"),
        "signature": signed,
    }


def _scanned_sha256(assessment: Assessment) -> str | None:
    """The model file's SHA-256 as the scan measured it, else as the subject records it."""
    scan = _first(assessment, MODEL_FILE_SCAN.id)
    if scan is not None and scan.provenance.model_sha256 is not None:
        return scan.provenance.model_sha256
    return assessment.subject.model_sha256


def _first(assessment: Assessment, rule_id: str) -> Finding | None:
    return next((f for f in assessment.findings if f.rule_id == rule_id), None)


# ------------------------------------------------------------------------------------------------ Markdown


def _markdown(card: Mapping[str, Any]) -> str:
    model, data, run = card["model"], card["data"], card["assessment"]
    lines = [
        f"# Model card: {_md(model['name'])}",
        "",
        f"Security assessment {_md(run['name'])} by aisec {_md(run['tool_version'])}, started "
        f"{_md(run['started_at'])}, {_duration(run['duration_s'])}.",
        "",
        "## Model",
        "",
        *_table(
            ("", ""),
            [
                ("source", _md(model["source"] or "not recorded")),
                ("model SHA-256", _hash(model["sha256"])),
                ("queried through", f"{_md(model['target_kind'])} (access: {_md(model['access'])})"),
                (
                    "input",
                    f"shape {_md('×'.join(str(n) for n in model['input_shape']))}, {_md(model['num_classes'])} classes "
                    f"(input spec: {_md(model['input_spec_source'])})",
                ),
                ("data assessed", f"{_md(data['name'])}, {_md(data['samples'])} samples"),
                ("data SHA-256", _hash(data["sha256"])),
            ],
        ),
        "",
        "## Intended use",
        "",
        "This card was written by aisec from a security assessment: it records how the model held up against the "
        "attacks in the threat model below and what the controls measured cost. It does not say what the model is "
        "for, who should use it, what it was trained on or under which licence; its owner adds those before "
        "publishing it.",
        "",
        "## Security",
        "",
        _verdict(card),
        "",
        "### Threat model",
        "",
        *_threat_model(card["threat_model"]),
        "",
        "### Findings",
        "",
        *_findings(card["findings"]),
        "",
        "### Figures",
        "",
        *_all_figures(card["findings"]),
        "",
        "### Controls measured and their cost",
        "",
        *_controls(card["controls"]),
        "",
        "### Model file scan and hashes",
        "",
        *_scan_lines(card["scan"], card["hashes"]),
        "",
        "### How to reproduce",
        "",
        *_reproduce(card["reproduce"]),
        "",
        "### Limitations",
        "",
        *_limitations(card["limitations"]),
    ]
    return "\n".join(lines) + "\n"


def _verdict(card: Mapping[str, Any]) -> str:
    broken = sum(f["breaks_policy"] for f in card["findings"])
    if card["passed"]:
        return f"**Policy held**: no finding breaks the plan's policy ({len(card['findings'])} finding(s))."
    return f"**Policy broken**: {broken} of {len(card['findings'])} finding(s) break the plan's policy."


def _threat_model(threat_model: Mapping[str, Any]) -> list[str]:
    if not threat_model:
        return ["Not stated."]
    rows = [
        (_md(_THREAT_MODEL_LABELS.get(key, key)), _md(_value(value))) for key, value in threat_model.items()
    ]
    return _table(("aspect", "value"), rows)


def _findings(findings: list[Mapping[str, Any]]) -> list[str]:
    if not findings:
        return ["No findings."]
    rows = []
    for f in findings:
        policy = "broken" if f["breaks_policy"] else "held" if f["has_policy"] else "no threshold"
        title = _md(f["title"]) + ("" if f["reliable"] else " (unreliable)")
        rows.append((_md(f["rule_id"]), title, _md(f["severity"]), _headline(f["headline"]), policy))
    return _table(("rule", "finding", "severity", "headline figure", "policy"), rows)


def _all_figures(findings: list[Mapping[str, Any]]) -> list[str]:
    rows = [
        (_md(f["rule_id"]), _md(m["name"]), _md(m["id"]), _md(_figure(m["value"], m["unit"])))
        for f in findings
        for m in f["metrics"]
    ]
    if not rows:
        return ["No finding carries a figure."]
    return _table(("rule", "figure", "id", "value"), rows)


def _controls(controls: list[Mapping[str, Any]]) -> list[str]:
    if not controls:
        return ["No control was measured in this assessment."]
    rows = []
    for control in controls:
        costs = "; ".join(
            _md(("" if c["of"] is None else f"{c['of']}: ") + f"{c['name']} {_figure(c['value'], c['unit'])}")
            for c in control["costs"]
        )
        rows.append(
            (
                f"{_md(control['rule_id'])} {_md(control['title'])}",
                _headline(control["benefit"]),
                costs or "not measured",
            )
        )
    return _table(("control", "benefit (headline figure)", "cost"), rows)


def _scan_lines(scan: Mapping[str, Any], hashes: Mapping[str, Any]) -> list[str]:
    if scan["status"] == "scanned":
        found = f"static scan verdict **{_md(scan['verdict'])}** (format {_md(scan['format'])})"
    else:
        found = "**not scanned**: this assessment did not run aisec's static scan of the model file (`aisec inspect` does)"
    return [
        f"Model file: {found}; signature {_md(scan['signature'])}.",
        "",
        *_table(
            ("artefact", "SHA-256"),
            [
                ("model file", _hash(hashes["model_sha256"])),
                ("data", _hash(hashes["data_sha256"])),
                ("plan", _hash(hashes["plan_sha256"])),
            ],
        ),
    ]


def _reproduce(reproduce: Mapping[str, Any]) -> list[str]:
    seeds = ", ".join(_md(s) for s in reproduce["seeds"]) or "none recorded"
    plan = (
        f"the plan {_md(reproduce['plan_path'])} (SHA-256 {_hash(reproduce['plan_sha256'])})"
        if reproduce["plan_path"] is not None
        else "the same model, data and settings (no plan file)"
    )
    return [
        f"Run aisec {_md(reproduce['tool_version'])} with {plan}, seed {seeds}, on the model and data whose hashes "
        "are above: the figures are reproduced up to float rounding, which differs between CPUs."
    ]


def _limitations(limitations: list[Mapping[str, Any]]) -> list[str]:
    lines = [f"- {_md(item['rule_id'])} {_md(item['title'])}: {_md(item['reason'])}." for item in limitations]
    if not lines:
        lines = ["- No finding was flagged unreliable."]
    lines.append(
        "- Each figure holds for the threat model above and the attacks that were run: a stronger or adaptive "
        "attacker may do better, and an estimate's interval says how far its sample leaves it uncertain."
    )
    return lines


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """A Markdown table whose cells are already escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _headline(metric: Mapping[str, Any] | None) -> str:
    if metric is None:
        return "—"
    return _md(f"{metric['name']}: {_figure(metric['value'], metric['unit'])}")


def _figure(value: Any, unit: str) -> str:
    """A figure as text: an estimate with its interval and sample count, a verdict as yes/no, a number with its
    unit. Not escaped."""
    suffix = f" {unit}" if unit else ""
    if isinstance(value, Mapping):  # an estimate
        # three decimals for a proportion and its interval, so they line up (and 1e-19 reads as 0.000)
        point, lower, upper = (_proportion(value[k]) for k in ("value", "lower", "upper"))
        return f"{point}{suffix} ({value['method']}: {lower}–{upper}, n={value['n']})"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "not measured"
    return f"{_value(value)}{suffix}"


def _proportion(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else _value(value)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_value(v)}" for key, v in value.items())
    return "—" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    return "duration not recorded" if seconds is None else f"{seconds:.0f} s"


def _hash(value: str | None) -> str:
    if value is None:
        return "not recorded"
    return f"`{value.lower()}`" if _HEX64.match(value) else _md(value)


def _line(text: str) -> str:
    """`text` on one line: control characters and line or paragraph separators become spaces."""
    return "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in str(text)
    ).strip()


def _md(value: Any) -> str:
    """`value` as Markdown text that is only text: on one line, Markdown punctuation backslash-escaped and `&`,
    `<`, `>` as HTML entities, so that no table breaks and no HTML or link is injected."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", _line(value if isinstance(value, str) else _value(value)))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
