"""An ML bill of materials for a model file or folder, as CycloneDX 1.6 JSON (ECMA-424).

The BOM describes the model as `metadata.component`, a `machine-learning-model` component whose SHA-256 is the
whole-model digest of OpenSSF model signing (the subject digest of `aisec sign`'s signature, see `signing`),
with a `modelCard` (data sets, framework, formats). `components` lists every file of the model (`file`, with
its SHA-256) and every declared data set (`data`); `dependencies` links the model to both. A scan's verdicts
and finding counts are recorded as properties in the `aisec:` namespace:

    aisec:scan:status         scanned | not-scanned | changed-since-scan (per file; `not-scanned` for the
                              model when no scan was given)
    aisec:scan:verdict        safe | suspicious | error | unsafe (per file; for the model the worst of its
                              files, a file that was not scanned counting as `error`)
    aisec:scan:format         the format the scanner recognised (per file)
    aisec:scan:findings       number of findings, and aisec:scan:findings:<severity> for each severity seen
    aisec:scan:rule           a rule that fired (one property per rule)

Given an assessment (the parsed `report.json` of `aisec assess` or `aisec inspect`, schema `aisec.assessment/2`,
docs/report-schema.md), the model card also carries its figures, read from the JSON so that this module needs
neither the report nor the assessment layer: `quantitativeAnalysis.performanceMetrics` holds every figure of every
finding (`type` the metric id, `slice` the rule id, an estimate's interval as `confidenceInterval`), and
`considerations` its findings: `technicalLimitations` the figures flagged unreliable and the policy checks that
failed, `performanceTradeoffs` what the controls measured cost (`aisec.core.control_costs`),
`ethicalConsiderations` each finding of severity medium or above as a risk with its recommendation. The model's
properties then add

    aisec:assessment:name         the assessment's name
    aisec:assessment:verdict      passed | failed (the plan's policy)
    aisec:assessment:sha256       SHA-256 of the report file, when the caller gives it
    aisec:assessment:plan-sha256  SHA-256 of the plan, when the assessment ran from one
    aisec:assessment:model-sha256 the SHA-256 of the model the assessment records, and
    aisec:assessment:model-match  yes when it is the BOM's model digest or one of its files' SHA-256, else no
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aisec.core.atomic import write_atomic
from aisec.core.control_costs import is_cost_metric, table_costs
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.defend.supply_chain.result import FileScan, ScanReport, Verdict
from aisec.defend.supply_chain.signing import Manifest, PathLike, manifest_of

SPEC_VERSION = "1.6"
MODEL_REF = "aisec:model"
DIGEST_METHOD = "model-signing: SHA-256 over the per-file SHA-256 digests, concatenated in path order"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
ASSESSMENT_SCHEMA = "aisec.assessment/2"
_RISK_FROM = Severity.MEDIUM  # findings at or above it become ethicalConsiderations (risks)


@dataclass(frozen=True)
class DatasetRef:
    """A data set the model was trained or evaluated on, declared by the user: its name, and if known the
    SHA-256 of its content, where it can be fetched, and what it is."""

    name: str
    sha256: str | None = None
    url: str | None = None
    description: str | None = None
    licence: str | None = None


def build_bom(
    model_path: PathLike,
    *,
    scan: Sequence[FileScan] | ScanReport | None = None,
    datasets: Iterable[DatasetRef] = (),
    framework: str | None = None,
    name: str | None = None,
    version: str | None = None,
    manifest: Manifest | None = None,
    assessment: Mapping[str, Any] | None = None,
    assessment_sha256: str | None = None,
) -> dict[str, Any]:
    """A CycloneDX 1.6 BOM (a JSON-ready dict) for the model file or folder at `model_path`.

    `scan` is the scanner's result for the model's files (matched by path, or else by SHA-256; a file whose
    content changed since it was scanned is marked `changed-since-scan`). `manifest` saves hashing the model
    again when the caller already has `manifest_of(model_path)`. `name` defaults to the model's file or folder
    name. `assessment` is a parsed assessment report (`read_assessment_report`) whose figures go into the model
    card, and `assessment_sha256` the SHA-256 of its file. BadInputError, naming the field, for a report of
    another schema or with a field of the wrong type.
    """
    model = Path(model_path)
    if assessment is not None:
        _check_assessment(assessment, "the assessment report")
    if assessment_sha256 is not None and (assessment is None or not _SHA256.match(assessment_sha256)):
        raise BadInputError(
            "assessment_sha256 must be 64 hexadecimal digits, given with an assessment report"
        )
    if manifest is None:
        manifest = manifest_of(model)
    data_sets = _checked_datasets(datasets)
    scans = list(scan.files if isinstance(scan, ScanReport) else scan) if scan is not None else None

    file_components = []
    file_scans: list[tuple[str, FileScan | None]] = []
    for entry in manifest.files:
        status, matched = _match_scan(model, entry.path, entry.sha256, scans)
        file_scans.append((status, matched))
        properties = []
        size = _size_of(model, entry.path)
        if size is not None:
            properties.append(_prop("aisec:file:size", size))
        if scans is not None:
            properties += _scan_properties(status, matched)
        component: dict[str, Any] = {
            "type": "file",
            "bom-ref": f"aisec:file:{entry.path}",
            "name": entry.path,
            "hashes": [{"alg": "SHA-256", "content": entry.sha256.lower()}],
        }
        if properties:
            component["properties"] = properties
        file_components.append(component)

    data_components = [_data_component(d) for d in data_sets]
    model_component = _model_component(
        model, manifest, name, version, framework, data_components, scans, file_scans
    )
    if assessment is not None:
        model_component["modelCard"] |= _assessment_card(assessment)
        digests = {manifest.digest.lower(), *(entry.sha256.lower() for entry in manifest.files)}
        model_component["properties"] += _assessment_properties(assessment, assessment_sha256, digests)
    refs = [c["bom-ref"] for c in file_components + data_components]
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": _tools()},
            "component": model_component,
        },
        "components": file_components + data_components,
        "dependencies": [{"ref": MODEL_REF, "dependsOn": refs}] + [{"ref": ref} for ref in refs],
    }


def read_assessment_report(path: PathLike) -> dict[str, Any]:
    """The `report.json` of `aisec assess` or `aisec inspect` at `path`, parsed and checked (schema
    `aisec.assessment/2`, the fields the BOM reads); BadInputError in one line for a missing or unreadable file,
    bad JSON or another schema."""
    try:
        text = Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such assessment report") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"{path}: cannot read the assessment report: {error}") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise BadInputError(
            f"{path}: not JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    _check_assessment(document, str(path))
    return document


def write_bom(bom: dict[str, Any], path: PathLike) -> None:
    """Write a BOM as indented UTF-8 JSON, atomically (a temporary file, then `os.replace`)."""
    text = json.dumps(bom, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, text)


# ------------------------------------------------------------------------------------------------ helpers


def _model_component(
    model: Path,
    manifest: Manifest,
    name: str | None,
    version: str | None,
    framework: str | None,
    data_components: list[dict[str, Any]],
    scans: list[FileScan] | None,
    file_scans: list[tuple[str, FileScan | None]],
) -> dict[str, Any]:
    card_properties = [_prop("aisec:model:files", len(manifest.files))]
    sizes = [_size_of(model, f.path) for f in manifest.files]
    if all(s is not None for s in sizes):
        card_properties.append(_prop("aisec:model:size", sum(s for s in sizes if s is not None)))
    if framework:
        card_properties.append(_prop("aisec:model:framework", framework))
    formats = sorted({scan.format for status, scan in file_scans if scan is not None and status == "scanned"})
    if formats:
        card_properties.append(_prop("aisec:model:formats", ", ".join(formats)))
    model_card: dict[str, Any] = {}
    if data_components:
        model_card["modelParameters"] = {"datasets": [{"ref": c["bom-ref"]} for c in data_components]}
    model_card["properties"] = card_properties

    properties = [_prop("aisec:model:digest-method", DIGEST_METHOD)]
    if scans is None:
        properties.append(_prop("aisec:scan:status", "not-scanned"))
    else:
        scanned = [scan for status, scan in file_scans if scan is not None and status == "scanned"]
        unscanned = len(file_scans) - len(scanned)
        verdicts = [scan.verdict for scan in scanned] + [Verdict.ERROR] * unscanned
        verdict = max(verdicts, key=lambda v: v.rank, default=Verdict.SAFE)
        properties.append(_prop("aisec:scan:verdict", verdict.value))
        properties.append(_prop("aisec:scan:files", len(scanned)))
        if unscanned:
            properties.append(_prop("aisec:scan:files-not-scanned", unscanned))
        properties += _finding_counts([finding for scan in scanned for finding in scan.findings])

    component: dict[str, Any] = {
        "type": "machine-learning-model",
        "bom-ref": MODEL_REF,
        "name": name or manifest.name or Path(str(model)).name,
    }
    if version:
        component["version"] = version
    component["hashes"] = [{"alg": "SHA-256", "content": manifest.digest.lower()}]
    component["modelCard"] = model_card
    component["properties"] = properties
    return component


def _assessment_card(report: Mapping[str, Any]) -> dict[str, Any]:
    """The modelCard's quantitativeAnalysis and considerations drawn from an assessment report's findings."""
    metrics, limitations, tradeoffs, risks = [], [], [], []
    for finding in report["findings"]:
        rule, title = finding["rule_id"], finding["title"]
        for metric in finding["metrics"]:
            entry = _performance_metric(metric, rule)
            if entry is not None:
                metrics.append(entry)
            if is_cost_metric(metric["id"], metric["unit"]):
                tradeoffs.append(
                    f"{rule} {title}: {metric['name']} {_figure(metric['value'], metric['unit'])}"
                )
        for table in finding["tables"]:
            tradeoffs += [
                f"{rule} {title}: {label}: {heading} {_figure(cell, '')}"
                for label, heading, cell in table_costs(table["columns"], table["rows"])
            ]
        if not finding["reliable"]:
            limitations.append(f"{rule} {title}: its figures were flagged unreliable (e.g. gradient masking)")
        limitations += [
            f"{rule} {title}: policy {check['rule']} failed (observed {_figure(check['observed'], '')}, "
            f"threshold {_figure(check['threshold'], '')})"
            for check in finding["policy"]
            if not check["passed"]
        ]
        if Severity(finding["severity"]).rank >= _RISK_FROM.rank:
            risks.append({"name": title, "mitigationStrategy": finding["recommendation"]})
    card: dict[str, Any] = {}
    if metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    considerations = {
        "technicalLimitations": limitations,
        "performanceTradeoffs": tradeoffs,
        "ethicalConsiderations": risks,
    }
    considerations = {key: items for key, items in considerations.items() if items}
    if considerations:
        card["considerations"] = considerations
    return card


def _performance_metric(metric: Mapping[str, Any], rule: str) -> dict[str, Any] | None:
    """A CycloneDX performanceMetric (strings) for one figure; None for a figure that was not measured."""
    value = metric["value"]
    interval = None
    if isinstance(value, Mapping):
        if value["lower"] is not None and value["upper"] is not None:
            interval = {"lowerBound": json.dumps(value["lower"]), "upperBound": json.dumps(value["upper"])}
        value = value["value"]
    if value is None:
        return None
    entry: dict[str, Any] = {"type": metric["id"], "value": json.dumps(value), "slice": rule}
    if interval is not None:
        entry["confidenceInterval"] = interval
    return entry


def _assessment_properties(
    report: Mapping[str, Any], report_sha256: str | None, digests: set[str]
) -> list[dict[str, str]]:
    properties = [
        _prop("aisec:assessment:name", report["name"]),
        _prop("aisec:assessment:verdict", "passed" if report["passed"] else "failed"),
    ]
    if report_sha256 is not None:
        properties.append(_prop("aisec:assessment:sha256", report_sha256.lower()))
    if report["plan_sha256"] is not None:
        properties.append(_prop("aisec:assessment:plan-sha256", report["plan_sha256"]))
    model_sha256 = report["subject"]["model_sha256"]
    if model_sha256 is not None:
        properties.append(_prop("aisec:assessment:model-sha256", model_sha256))
        properties.append(
            _prop("aisec:assessment:model-match", "yes" if model_sha256.lower() in digests else "no")
        )
    return properties


def _figure(value: Any, unit: str) -> str:
    """A figure from the report as text: an estimate with its interval and sample count, a number with its unit."""
    if isinstance(value, Mapping):
        return (
            f"{_figure(value['value'], unit)} ({value['method']}: {_figure(value['lower'], '')}–"
            f"{_figure(value['upper'], '')}, n={value['n']})"
        )
    if value is None:
        return "not measured"
    text = (
        f"{value:.4g}"
        if isinstance(value, float)
        else json.dumps(value)
        if isinstance(value, bool)
        else str(value)
    )
    return f"{text} {unit}" if unit else text


def _reject_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _check_assessment(report: Any, where: str) -> None:
    """BadInputError naming `where` and the field unless `report` is an aisec.assessment/2 report whose fields
    the BOM reads have the types docs/report-schema.md gives."""
    if not isinstance(report, Mapping):
        raise BadInputError(f"{where}: not an assessment report (a JSON object is expected)")
    if report.get("schema") != ASSESSMENT_SCHEMA:
        raise BadInputError(
            f"{where}: field 'schema' is {report.get('schema')!r}, not {ASSESSMENT_SCHEMA!r}: give the report.json "
            "of `aisec assess` or `aisec inspect`"
        )
    _field(report, "name", str, where)
    _field(report, "passed", bool, where)
    _field(report, "plan_sha256", (str, type(None)), where)
    subject = _field(report, "subject", Mapping, where)
    _field(subject, "model_sha256", (str, type(None)), f"{where}: subject")
    findings = _field(report, "findings", list, where)
    severities = {s.value for s in Severity}
    for i, finding in enumerate(findings):
        at = f"{where}: findings[{i}]"
        if not isinstance(finding, Mapping):
            raise BadInputError(f"{at} must be an object")
        for key in ("rule_id", "title", "recommendation"):
            _field(finding, key, str, at)
        _field(finding, "reliable", bool, at)
        if _field(finding, "severity", str, at) not in severities:
            raise BadInputError(
                f"{at}: field 'severity' is {finding['severity']!r}, not one of {sorted(severities)}"
            )
        for j, metric in enumerate(_field(finding, "metrics", list, at)):
            _check_metric(metric, f"{at}.metrics[{j}]")
        for j, table in enumerate(_field(finding, "tables", list, at)):
            table_at = f"{at}.tables[{j}]"
            if not isinstance(table, Mapping):
                raise BadInputError(f"{table_at} must be an object")
            columns = _field(table, "columns", list, table_at)
            rows = _field(table, "rows", list, table_at)
            if not all(isinstance(c, str) for c in columns) or any(
                not isinstance(row, list) or len(row) != len(columns) for row in rows
            ):
                raise BadInputError(f"{table_at}: columns must be strings and every row one cell per column")
        for j, check in enumerate(_field(finding, "policy", list, at)):
            check_at = f"{at}.policy[{j}]"
            if not isinstance(check, Mapping):
                raise BadInputError(f"{check_at} must be an object")
            _field(check, "rule", str, check_at)
            _field(check, "passed", bool, check_at)
            for key in ("observed", "threshold"):
                _number_field(check, key, check_at)


def _check_metric(metric: Any, at: str) -> None:
    if not isinstance(metric, Mapping):
        raise BadInputError(f"{at} must be an object")
    for key in ("id", "name", "unit"):
        _field(metric, key, str, at)
    value = metric.get("value")
    if isinstance(value, Mapping):
        for key in ("value", "lower", "upper"):
            _number_field(value, key, f"{at}.value")
        _field(value, "n", int, f"{at}.value")
        _field(value, "method", str, f"{at}.value")
    elif "value" not in metric or not (value is None or isinstance(value, (bool, int, float))):
        raise BadInputError(f"{at}: field 'value' must be a number, a boolean, null or an estimate")


def _field(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], at: str) -> Any:
    if key not in mapping or not isinstance(mapping[key], kind):
        raise BadInputError(f"{at}: field {key!r} is missing or not {_kind_name(kind)}")
    return mapping[key]


def _number_field(mapping: Mapping[str, Any], key: str, at: str) -> None:
    value = mapping.get(key)
    if (
        key not in mapping
        or isinstance(value, bool)
        or not (value is None or isinstance(value, (int, float)))
    ):
        raise BadInputError(f"{at}: field {key!r} is missing or not a number or null")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", bool: "a boolean", list: "a list", int: "an integer", type(None): "null"}
    return " or ".join(names.get(k, "an object") for k in kinds)


def _data_component(dataset: DatasetRef) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": "data",
        "bom-ref": f"aisec:data:{dataset.name}",
        "name": dataset.name,
    }
    if dataset.description:
        component["description"] = dataset.description
    if dataset.sha256:
        component["hashes"] = [{"alg": "SHA-256", "content": dataset.sha256.lower()}]
    if dataset.url:
        component["externalReferences"] = [{"type": "distribution", "url": dataset.url}]
    if dataset.licence:
        component["licenses"] = [{"license": {"name": dataset.licence}}]
    data: dict[str, Any] = {"type": "dataset", "name": dataset.name}
    if dataset.url:
        data["contents"] = {"url": dataset.url}
    component["data"] = [data]
    return component


def _checked_datasets(datasets: Iterable[DatasetRef]) -> list[DatasetRef]:
    checked, seen = [], set()
    for dataset in datasets:
        if not dataset.name or not dataset.name.strip():
            raise BadInputError("a data set needs a name")
        if dataset.name in seen:
            raise BadInputError(f"data set {dataset.name!r} is declared twice")
        if dataset.sha256 is not None and not _SHA256.match(dataset.sha256):
            raise BadInputError(f"data set {dataset.name!r}: sha256 must be 64 hexadecimal digits")
        seen.add(dataset.name)
        checked.append(dataset)
    return checked


def _match_scan(
    model: Path, path: str, sha256: str, scans: list[FileScan] | None
) -> tuple[str, FileScan | None]:
    """The scan of a model file: by its path (then it must have the same content), else by its content. A scan
    of the file made without its hash (`hash_content=False`) cannot vouch for its content: BadInputError."""
    if scans is None:
        return "not-scanned", None
    target = _file_path(model, path).resolve()
    for scan in scans:
        if _resolved(scan.path) == target:
            if scan.sha256 is None:
                raise BadInputError(
                    f"the scan of {scan.path} has no sha256 (scanned without hashing), so the BOM cannot tell "
                    "whether it scanned the file's present content; scan it again with hashing"
                )
            if scan.sha256.lower() == sha256.lower():
                return "scanned", scan
            return "changed-since-scan", None
    for scan in scans:
        if scan.sha256 is not None and scan.sha256.lower() == sha256.lower():
            return "scanned", scan
    return "not-scanned", None


def _scan_properties(status: str, scan: FileScan | None) -> list[dict[str, str]]:
    properties = [_prop("aisec:scan:status", status)]
    if scan is None:
        return properties
    properties.append(_prop("aisec:scan:verdict", scan.verdict.value))
    properties.append(_prop("aisec:scan:format", scan.format))
    properties += _finding_counts(scan.findings)
    properties += [_prop("aisec:scan:rule", rule) for rule in sorted({f.rule_id for f in scan.findings})]
    return properties


def _finding_counts(findings: Iterable[Any]) -> list[dict[str, str]]:
    findings = list(findings)
    counts = Counter(f.severity for f in findings)
    properties = [_prop("aisec:scan:findings", len(findings))]
    for severity in sorted(counts, key=lambda s: Severity(s).rank, reverse=True):
        properties.append(_prop(f"aisec:scan:findings:{Severity(severity).value}", counts[severity]))
    return properties


def _file_path(model: Path, path: str) -> Path:
    return model / path if model.is_dir() else model


def _resolved(path: str) -> Path | None:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return None


def _size_of(model: Path, path: str) -> int | None:
    try:
        return _file_path(model, path).stat().st_size
    except OSError:
        return None


def _tools() -> list[dict[str, Any]]:
    from importlib.metadata import PackageNotFoundError, version

    from aisec.core.version import __version__

    tools: list[dict[str, Any]] = [{"type": "application", "name": "aisec", "version": __version__}]
    try:
        tools.append({"type": "library", "name": "model-signing", "version": version("model-signing")})
    except PackageNotFoundError:
        pass
    return tools


def _prop(name: str, value: object) -> dict[str, str]:
    return {"name": name, "value": str(value)}
