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
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aisec.core.atomic import write_atomic
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.defend.supply_chain.result import FileScan, ScanReport, Verdict
from aisec.defend.supply_chain.signing import Manifest, PathLike, manifest_of

SPEC_VERSION = "1.6"
MODEL_REF = "aisec:model"
DIGEST_METHOD = "model-signing: SHA-256 over the per-file SHA-256 digests, concatenated in path order"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class DatasetRef:
    """A data set the model was trained or evaluated on, declared by the user: its name, and if known the
    SHA-256 of its content, where it can be fetched, and what it is."""

    name: str
    sha256: str | None = None
    url: str | None = None
    description: str | None = None


def build_bom(
    model_path: PathLike,
    *,
    scan: Sequence[FileScan] | ScanReport | None = None,
    datasets: Iterable[DatasetRef] = (),
    framework: str | None = None,
    name: str | None = None,
    version: str | None = None,
    manifest: Manifest | None = None,
) -> dict[str, Any]:
    """A CycloneDX 1.6 BOM (a JSON-ready dict) for the model file or folder at `model_path`.

    `scan` is the scanner's result for the model's files (matched by path, or else by SHA-256; a file whose
    content changed since it was scanned is marked `changed-since-scan`). `manifest` saves hashing the model
    again when the caller already has `manifest_of(model_path)`. `name` defaults to the model's file or folder
    name.
    """
    model = Path(model_path)
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
