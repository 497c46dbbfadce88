"""The provenance manifest of a data set: what the user states about its origin (source, licence, date
retrieved, labeller) beside what aisec measures (file sizes and SHA-256, schema, counts per class, a SHA-256 per
record and a digest over all records)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aisec.core.atomic import write_atomic
from aisec.core.errors import BadInputError
from aisec.core.hashing import file_sha256
from aisec.core.version import __version__
from aisec.defend.data_validation.records import read_records

MANIFEST_SCHEMA = "aisec.data-manifest/1"


@dataclass(frozen=True)
class Provenance:
    """What the user states about where the data came from; `retrieved` is an ISO date (YYYY-MM-DD)."""

    source: str
    licence: str
    retrieved: str
    labeller: str | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        for field in ("source", "licence"):
            if not getattr(self, field).strip():
                raise BadInputError(f"provenance: {field} must not be empty")
        try:
            datetime.date.fromisoformat(self.retrieved)
        except ValueError:
            raise BadInputError(
                f"provenance: retrieved {self.retrieved!r} is not an ISO date (YYYY-MM-DD)"
            ) from None


def build_manifest(
    paths: Sequence[str | os.PathLike[str]],
    provenance: Provenance,
    *,
    label: str | None = "label",
    key: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The manifest of the data set files `paths`, JSON-ready. Per file: path, size, SHA-256 of the bytes,
    record count, schema, counts per class, the SHA-256 of each record's features and label keyed by the key
    column's value (or by 0-based row number when there is none; `record_hashes_keyed_by` says which), and
    `content_digest`, the SHA-256 over those record hashes in row order, which identifies the content whatever
    file format carries it."""
    if not paths:
        raise BadInputError("a manifest needs at least one data file")
    files = [_file_entry(Path(p), label=label, key=key, source=source) for p in paths]
    return {
        "schema": MANIFEST_SCHEMA,
        "tool": {"name": "aisec", "version": __version__},
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "provenance": asdict(provenance),
        "record_hash": "SHA-256 of the record's canonical feature bytes followed by its label",
        "files": files,
    }


def _file_entry(path: Path, *, label: str | None, key: str | None, source: str | None) -> dict[str, Any]:
    records = read_records(path, label=label, key=key, source=source)
    hashes = records.record_hashes(with_label=True)
    names = records.keys.tolist() if records.keys is not None else [str(i) for i in range(len(hashes))]
    digest = hashlib.sha256()
    for record_hash in hashes:
        digest.update(bytes.fromhex(record_hash))
    counts = Counter(records.labels.tolist()) if records.labels is not None else None
    return {
        "path": str(path),
        "size": path.stat().st_size,
        "sha256": file_sha256(path),
        "records": len(records),
        "schema": records.schema(),
        "class_counts": None if counts is None else {str(c): n for c, n in sorted(counts.items(), key=str)},
        "record_hashes_keyed_by": f"key column '{records.key_column}'" if records.keys is not None else "row",
        "record_hashes": dict(zip(names, hashes, strict=True)),
        "content_digest": digest.hexdigest(),
    }


def write_manifest(manifest: dict[str, Any], out_path: str | os.PathLike[str]) -> None:
    """Write the manifest as JSON, whole or not at all."""
    write_atomic(out_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a manifest written by `write_manifest`; BadInputError when it is not JSON or not this schema."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise BadInputError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path}: not a JSON manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise BadInputError(f"{path}: schema is {found!r}, expected {MANIFEST_SCHEMA!r}")
    return manifest
