"""The supply-chain commands: `aisec scan`, `keygen`, `sign`, `verify` and `bom` (docs/supply-chain.md).
`aisec scan` itself is in `scan.py`, which `aisec.cli.main` also runs without typer.

Exit codes: 0 clean / verified / written; 1 findings at or above --fail-on, or a failed verification;
2 usage or I/O error (nothing written); 3 internal error; 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aisec.cli.audit import AuditKeyOption, AuditLogOption
from aisec.cli.audit_trail import AuditTrail
from aisec.cli.scale import RayAddressOption, WorkersOption
from aisec.cli.scan import FORMATS, SEVERITIES, ScanOptions, run_scan
from aisec.cli.support import console, guarded, plain
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED, BadInputError

if TYPE_CHECKING:
    from aisec.defend.supply_chain.bom import DatasetRef

ScanExecutorOption = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where the files are scanned: in_process (here, the default), pool (processes on this machine) or "
        "ray. A scan too small to repay starting workers (under 2,000 files and 1 GiB) runs here whatever "
        "the choice.",
    ),
]


def scan(
    paths: Annotated[list[Path], typer.Argument(help="Model files or folders (scanned recursively).")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="What to print: text, json or sarif.")
    ] = "text",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the JSON report here.")] = None,
    sarif_out: Annotated[
        Path | None, typer.Option("--sarif", help="Also write a SARIF 2.1.0 log here.")
    ] = None,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Exit 1 for findings at or above: info, low, medium, high, critical "
            "(default: any file that is not safe).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line per file.")] = False,
    no_hash: Annotated[
        bool,
        typer.Option("--no-hash", help="Skip each file's sha256 (faster bulk triage; reported as null)."),
    ] = False,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
    executor: ScanExecutorOption = None,
    workers: WorkersOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Is this file safe to load? Static analysis of model files, executing nothing from them."""
    if format not in FORMATS:
        raise typer.BadParameter("choose text, json or sarif", param_hint="--format")
    if fail_on is not None and fail_on not in SEVERITIES:
        raise typer.BadParameter(f"choose one of {', '.join(SEVERITIES)}", param_hint="--fail-on")
    options = ScanOptions(
        tuple(paths),
        format,
        json_out,
        sarif_out,
        fail_on,
        quiet,
        no_hash,
        audit_log,
        audit_key,
        executor=executor,
        workers=workers,
        ray_address=ray_address,
    )
    guarded(lambda: run_scan(options))


KEY_TYPES = ("ecdsa-p256", "ed25519")


def keygen(
    private_key: Annotated[Path, typer.Argument(help="Where to write the private key (PEM, mode 0600).")],
    public_key: Annotated[Path, typer.Argument(help="Where to write the public key (PEM).")],
    key_type: Annotated[
        str,
        typer.Option(
            "--type",
            help="ecdsa-p256: for `aisec sign` / `aisec verify` (OpenSSF model signing); ed25519: for the audit "
            "log's signed checkpoints (`--audit-key`).",
        ),
    ] = "ecdsa-p256",
) -> None:
    """Make a key pair: ECDSA P-256 for model signatures, or Ed25519 for the audit log's checkpoints."""

    def run() -> int:
        if key_type not in KEY_TYPES:
            raise BadInputError(f"--type {key_type!r}: choose {' or '.join(KEY_TYPES)}")
        if key_type == "ed25519":
            from aisec.defend.auditability.audit_log.keys import generate_ed25519_key_pair

            generate_ed25519_key_pair(private_key, public_key)
            console.print(
                f"private key: {plain(private_key)} (keep it secret; give it as --audit-key)\n"
                f"public key:  {plain(public_key)} (give it to `aisec audit verify --key`)",
                highlight=False,
            )
            return EXIT_OK
        from aisec.defend.supply_chain.signing import generate_key_pair

        generate_key_pair(private_key, public_key)
        console.print(f"private key: {plain(private_key)} (keep it secret)\npublic key:  {plain(public_key)}")
        return EXIT_OK

    guarded(run)


def sign(
    model: Annotated[Path, typer.Argument(help="The model file or folder to sign.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Private key (PEM).")],
    signature: Annotated[Path | None, typer.Option("--signature", "-s", help="Default: <model>.sig.")] = None,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
) -> None:
    """Hash a model file or folder and sign the manifest (OpenSSF model-signing format, offline)."""

    def run() -> int:
        from aisec.core.hashing import file_sha256
        from aisec.defend.supply_chain.signing import sign_model

        trail = AuditTrail.open(audit_log, audit_key)
        info = sign_model(model, key, signature)
        trail.record(
            "sign",
            {"model": model, "key": key, "signature": signature},
            {
                "model": {"source": str(model), "digest": info.manifest.digest},
                "signature": {"path": str(info.signature_path), "sha256": file_sha256(info.signature_path)},
                "key_fingerprint": info.key_fingerprint,
                "verdict": "signed",
            },
        )
        console.print(
            f"signed {model} ({len(info.manifest.files)} file(s), digest {info.manifest.digest})\n"
            f"signature: {info.signature_path}\nkey fingerprint: {info.key_fingerprint}",
            highlight=False,
        )
        return EXIT_OK

    guarded(run)


def verify(
    model: Annotated[Path, typer.Argument(help="The model file or folder to verify.")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Public key (PEM).")],
    signature: Annotated[Path | None, typer.Option("--signature", "-s", help="Default: <model>.sig.")] = None,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
) -> None:
    """Check a model against its signature; names every file added, removed or changed. Exit 1 if it fails."""

    def run() -> int:
        from aisec.defend.supply_chain.signing import public_key_fingerprint, verify_model

        trail = AuditTrail.open(audit_log, audit_key)
        result = verify_model(model, key, signature)
        trail.record(
            "verify",
            {"model": model, "key": key, "signature": signature},
            {
                "model": {"source": str(model), "digest": result.model_digest},
                "key_fingerprint": public_key_fingerprint(key),
                "verdict": "verified" if result.ok else "failed",
                "problem": None if result.ok else result.message,
                "changes": {"added": len(result.added), "removed": len(result.removed),
                            "changed": len(result.changed)},
            },
        )  # fmt: skip
        if result.ok:
            console.print(f"[green]verified[/green] {plain(model)} (digest {result.model_digest})")
            return EXIT_OK
        console.print(
            f"[red]verification failed[/red] for {plain(model)}: {plain(result.message)}", highlight=False
        )
        for label, names in (
            ("added", result.added),
            ("removed", result.removed),
            ("changed", result.changed),
        ):
            for name in names:
                console.print(f"  {label:8} {plain(name)}", highlight=False)
        return EXIT_POLICY_FAILED

    guarded(run)


def bom(
    model: Annotated[Path, typer.Argument(help="The model file or folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the CycloneDX JSON.")] = Path(
        "bom.cdx.json"
    ),
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", "-d", help="A training data set: NAME or NAME=SHA256 (repeatable)."),
    ] = None,
    data_manifest: Annotated[
        list[Path] | None,
        typer.Option(
            "--data-manifest", help="A data set's provenance manifest (`aisec data manifest`; repeatable)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: the file name).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Model version.")] = None,
    framework: Annotated[str | None, typer.Option("--framework", help="e.g. pytorch, scikit-learn.")] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="An assessment or inspection report.json: its figures go into the BOM's modelCard.",
        ),
    ] = None,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
) -> None:
    """Write a CycloneDX 1.6 ML bill of materials: files and hashes, format, data sets, the scan result and,
    given --report, the assessment's figures."""

    def run() -> int:
        from aisec.core.hashing import file_sha256
        from aisec.defend.supply_chain.bom import DatasetRef, build_bom, read_assessment_report, write_bom
        from aisec.defend.supply_chain.scanner import scan_paths

        refs = [DatasetRef(*_dataset_name_and_digest(text)) for text in dataset or []]
        refs += [ref for path in data_manifest or [] for ref in _manifest_datasets(path)]
        if not model.exists():
            raise BadInputError(f"no such file or folder: {model}")
        assessment = read_assessment_report(report) if report is not None else None
        trail = AuditTrail.open(audit_log, audit_key)
        scan_report = scan_paths([model])
        document = build_bom(model, scan=list(scan_report.files), datasets=refs, framework=framework,
                             name=name, version=version, assessment=assessment,
                             assessment_sha256=file_sha256(report) if report is not None else None)  # fmt: skip
        write_bom(document, output)
        trail.record(
            "bom",
            {"model": model, "output": output, "dataset": dataset, "data_manifest": data_manifest, "name": name,
             "version": version,
             "framework": framework, "report": report},
            {
                "model": {"source": str(model)},
                "files": [{"path": f.path, "sha256": f.sha256} for f in scan_report.files][:100],
                "verdict": scan_report.verdict.value,
                "assessment_report": {"path": str(report), "sha256": file_sha256(report)} if report else None,
                "reports": {str(output): file_sha256(output)},
            },
        )  # fmt: skip
        console.print(
            f"wrote {plain(output)} ({len(scan_report.files)} file(s); scan verdict {scan_report.verdict.value})"
        )
        return EXIT_OK

    guarded(run)


def _manifest_datasets(path: Path) -> list[DatasetRef]:
    """One data component per file of a provenance manifest: its name and SHA-256, the stated licence, and a
    description citing the source, the date retrieved, the labeller, the records and the manifest itself."""
    from aisec.core.hashing import file_sha256
    from aisec.defend.data_validation.manifest import read_manifest
    from aisec.defend.supply_chain.bom import DatasetRef

    manifest = read_manifest(path)
    stated = manifest["provenance"]
    source = str(stated["source"])
    refs = []
    for entry in manifest["files"]:
        labeller = f", labelled by {stated['labeller']}" if stated.get("labeller") else ""
        description = (
            f"{entry['records']} records from {source}, retrieved {stated['retrieved']}{labeller}; content "
            f"digest {entry['content_digest']}; provenance manifest {path.name} (SHA-256 {file_sha256(path)})"
        )
        refs.append(
            DatasetRef(
                name=Path(entry["path"]).name,
                sha256=entry["sha256"],
                url=source if source.startswith(("https://", "http://")) else None,
                description=description,
                licence=str(stated["licence"]),
            )
        )
    return refs


def _dataset_name_and_digest(text: str) -> tuple[str, str | None]:
    """`--dataset NAME` or `NAME=SHA256`, checked."""
    dataset_name, _, digest = text.partition("=")
    if not dataset_name:
        raise BadInputError(f"--dataset {text!r}: expected NAME or NAME=SHA256")
    if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower())):
        raise BadInputError(f"--dataset {text!r}: {digest!r} is not a SHA-256 hex digest")
    return dataset_name, digest.lower() or None


def register(app: typer.Typer) -> None:
    for command in (scan, keygen, sign, verify, bom):
        app.command()(command)
