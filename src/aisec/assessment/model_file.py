"""The model-file gate of an inspection (`probes.inspection`, `aisec inspect`): before a model you did not build
is loaded, its file is scanned statically (`aisec.defend.supply_chain.scanner`: nothing in it is executed) and,
when a signature or a public key is given, checked against its OpenSSF model signature (`signing.verify_model`).

A file the scanner does not call safe (a scan that cannot parse the file never does), or one that is not what
was signed, is never loaded: its finding carries a failed `model_loaded` policy check, so the run fails whatever
`policy.fail_on` says, and the report says why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from aisec.assessment.finding import Finding, Metric, PolicyCheck, Provenance, Table
from aisec.assessment.rules import MODEL_FILE_SCAN, MODEL_SIGNATURE
from aisec.core.errors import BadInputError, ModelLoadError
from aisec.core.severity import Severity
from aisec.defend.supply_chain.result import FileScan, Verdict
from aisec.defend.supply_chain.rules import RULES as SCAN_RULES

SHOWN = 5  # scan findings named in a message; the table holds them all


@dataclass(frozen=True)
class FileChecks:
    """What the file checks found: their findings (scan first, then signature), whether the model may be
    loaded, the format the scanner recognised in the file's bytes, and the file's sha256."""

    findings: tuple[Finding, ...]
    loadable: bool
    format: str
    sha256: str | None


def check_model_file(
    path: str | Path,
    *,
    signature: str | Path | None,
    public_key: str | Path | None,
    provenance: Provenance,
) -> FileChecks:
    """Scan the model file at `path` and, when `public_key` is given, verify it against `signature` (default
    `<model>.sig`). `provenance` is the run's (seed, data); each finding's records the file's sha256 and what
    was checked. BadInputError when the file, the key or the signature cannot be read, or a signature comes
    without a key."""
    from aisec.defend.supply_chain.scanner import scan_file

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    if signature is not None and public_key is None:
        raise BadInputError(
            f"signature {signature}: a signature is verified with the publisher's public key; give the key (PEM)"
        )
    scan = scan_file(path)
    base = dataclasses.replace(provenance, samples=0, model_sha256=scan.sha256)
    findings = [_scan_finding(path, scan, base)]
    if public_key is not None:
        findings.append(_signature_finding(path, Path(public_key), signature, base))
    loadable = not any(check.rule == "model_loaded" for f in findings for check in f.policy)
    return FileChecks(tuple(findings), loadable, scan.format, scan.sha256)


def _scan_finding(path: Path, scan: FileScan, provenance: Provenance) -> Finding:
    """SAFE: an info finding naming the format and sha256. Otherwise a finding as severe as the scan's worst
    finding, naming them, with their rules' advice, and the model not loaded."""
    ranked = sorted(scan.findings, key=lambda f: -f.severity.rank)
    table = Table(
        "What the static scan found",
        ("rule", "severity", "location", "finding"),
        tuple((f.rule_id, f.severity.value, f.location, f.message) for f in ranked),
    )
    settings = {"check": "static scan (aisec scan)", "format": scan.format, "verdict": scan.verdict.value}
    metrics = (
        _metric("safe", "Scanner vouches for the file", scan.verdict is Verdict.SAFE),
        _metric("scan_findings", "Scan findings", float(len(scan.findings))),
    )
    described = f"{path.name} ({scan.format}, {scan.size} bytes, sha256 {scan.sha256})"
    if scan.verdict is Verdict.SAFE:
        return Finding(
            rule_id=MODEL_FILE_SCAN.id,
            title=f"Model file scanned: {scan.format}, nothing in it runs when it is loaded",
            attack_class=MODEL_FILE_SCAN.attack_class,
            severity=Severity.INFO,
            message=f"The static scan of {described} found nothing that executes code or reaches outside the "
            "file when it is loaded.",
            recommendation="Verify the file against its publisher's signature (--signature, --key) to know it is "
            "the file that was published; a clean scan says nothing about what the model does.",
            provenance=dataclasses.replace(provenance, settings=settings),
            metrics=metrics,
            tables=(table,) if ranked else (),
        )
    worst = ranked[0].severity
    named = "; ".join(f"{f.rule_id} {f.message} (at {f.location})" for f in ranked[:SHOWN])
    more = f"; and {len(ranked) - SHOWN} more" if len(ranked) > SHOWN else ""
    advice = " ".join(dict.fromkeys(SCAN_RULES[f.rule_id].advice for f in ranked[:SHOWN]))
    reason = f"the static scan's verdict is {scan.verdict.value}"
    return Finding(
        rule_id=MODEL_FILE_SCAN.id,
        title=f"Model file not loaded: {reason}",
        attack_class=MODEL_FILE_SCAN.attack_class,
        severity=worst,
        message=f"{described} was not loaded: {reason}: {named}{more}.",
        recommendation=advice,
        provenance=dataclasses.replace(provenance, settings=settings),
        metrics=metrics,
        tables=(table,),
        policy=(_not_loaded(reason),),
    )


def _signature_finding(
    path: Path, public_key: Path, signature: str | Path | None, provenance: Provenance
) -> Finding:
    """Verified: an info finding with the signer's key fingerprint and the signed digest. Not verified: a
    critical finding naming what differs, and the model not loaded."""
    from aisec.defend.supply_chain.signing import public_key_fingerprint, verify_model

    result = verify_model(path, public_key, signature)
    fingerprint = public_key_fingerprint(public_key)
    sig = Path(signature) if signature is not None else path.with_name(path.name + ".sig")
    settings = {
        "check": "OpenSSF model signature (aisec verify)",
        "signature": str(sig),
        "public_key": str(public_key),
        "key_fingerprint": fingerprint,
        "model_digest": result.model_digest,
    }
    metrics = (
        _metric("signature_verified", "File matches its signature", result.ok),
        _metric("signature_valid", "Signature made by the key", result.signature_valid),
    )
    if result.ok:
        return Finding(
            rule_id=MODEL_SIGNATURE.id,
            title="Model file matches its signature",
            attack_class=MODEL_SIGNATURE.attack_class,
            severity=Severity.INFO,
            message=f"{path.name} is the file signed in {sig.name} by the key with SHA-256 fingerprint "
            f"{fingerprint} (model digest {result.model_digest}).",
            recommendation="Make sure the key is the publisher's, obtained through a channel you trust: the "
            "signature proves who signed the file, not that the model is benign.",
            provenance=dataclasses.replace(provenance, settings=settings),
            metrics=metrics,
        )
    changes = tuple(
        (what, name)
        for what, names in (("added", result.added), ("removed", result.removed), ("changed", result.changed))
        for name in names
    )
    reason = "the file is not what was signed" if result.signature_valid else "the signature was rejected"
    return Finding(
        rule_id=MODEL_SIGNATURE.id,
        title=f"Model file not loaded: {reason}",
        attack_class=MODEL_SIGNATURE.attack_class,
        severity=Severity.CRITICAL,
        message=f"{path.name} was not loaded: {reason} (key fingerprint {fingerprint}): {result.message}",
        recommendation="Do not load this file. Obtain the model again from its publisher and verify it; if the "
        "publisher has a new key, get it from them through a channel you trust.",
        provenance=dataclasses.replace(provenance, settings=settings),
        metrics=metrics,
        tables=(Table("Files that differ from the signed manifest", ("difference", "file"), changes),)
        if changes
        else (),
        policy=(_not_loaded(reason),),
    )


def _metric(metric_id: str, name: str, value: bool | float) -> Metric:
    return Metric(id=metric_id, name=name, value=value)


def _not_loaded(reason: str) -> PolicyCheck:
    """The failed check that fails the run: a model that may not be loaded is never inspected."""
    return PolicyCheck(
        rule="model_loaded",
        threshold=1.0,
        observed=0.0,
        passed=False,
        description=f"the model was not loaded: {reason}",
    )
