"""Signing and verifying models (OpenSSF model signing, offline key pair) and the CycloneDX 1.6 ML-BOM."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.defend.supply_chain.bom import MODEL_REF, DatasetRef, build_bom, write_bom
from aisec.defend.supply_chain.result import FileScan, ScanFinding
from aisec.defend.supply_chain.signing import (
    generate_key_pair,
    manifest_of,
    public_key_fingerprint,
    sign_model,
    verify_model,
)

pytest.importorskip("model_signing")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_key_pair(folder / "key.pem", folder / "key.pub")
    generate_key_pair(folder / "other.pem", folder / "other.pub")
    return {"private": folder / "key.pem", "public": folder / "key.pub", "other_public": folder / "other.pub"}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    (model / "weights").mkdir(parents=True)
    (model / "config.json").write_text('{"layers": 2}')
    (model / "weights" / "part1.bin").write_bytes(b"\x00\x01" * 100)
    (model / "weights" / "part2.bin").write_bytes(b"\x02\x03" * 100)
    (model / "tokenizer.txt").write_text("a b c")
    return model


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------- keys


def test_generate_key_pair_private_0600_and_never_overwrites(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    fingerprint = generate_key_pair(private, public)
    assert _mode(private) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert fingerprint == public_key_fingerprint(public)
    before = private.read_bytes()
    with pytest.raises(BadInputError, match="already exists"):
        generate_key_pair(private, tmp_path / "new.pub")
    assert private.read_bytes() == before
    assert not (tmp_path / "new.pub").exists()
    # An existing public key is refused before any private key is written.
    with pytest.raises(BadInputError, match="already exists"):
        generate_key_pair(tmp_path / "new.pem", public)
    assert not (tmp_path / "new.pem").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub"]  # no temporary files left


def test_encrypted_key_signs_only_with_its_password(tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub", password=b"s3cret")
    assert _mode(tmp_path / "k.pem") == 0o600
    assert b"ENCRYPTED" in (tmp_path / "k.pem").read_bytes()
    model = tmp_path / "m.bin"
    model.write_bytes(b"weights")
    with pytest.raises(BadInputError, match="private key"):
        sign_model(model, tmp_path / "k.pem")
    with pytest.raises(BadInputError, match="wrong password"):
        sign_model(model, tmp_path / "k.pem", password=b"nope")
    sign_model(model, tmp_path / "k.pem", password=b"s3cret")
    assert verify_model(model, tmp_path / "k.pub").ok


# ------------------------------------------------------------------------------------- sign and verify


def test_sign_and_verify_a_folder(model_dir: Path, keys: dict[str, Path]) -> None:
    import model_signing

    info = sign_model(model_dir, keys["private"])
    assert info.signature_path == model_dir.parent / "model.sig"  # beside the folder, not inside it
    assert sorted(f.path for f in info.manifest.files) == [
        "config.json", "tokenizer.txt", "weights/part1.bin", "weights/part2.bin",
    ]  # fmt: skip
    assert info.key_fingerprint == public_key_fingerprint(keys["public"])
    assert info.manifest.digest == manifest_of(model_dir).digest

    result = verify_model(model_dir, keys["public"])
    assert result.ok and result.signature_valid
    assert (result.added, result.removed, result.changed) == ((), (), ())
    assert result.model_digest == info.manifest.digest

    # The signature is a plain OpenSSF model-signing bundle: model_signing verifies it on its own.
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["public"]).verify(
        model_dir, info.signature_path
    )
    bundle = json.loads(info.signature_path.read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["subject"][0]["digest"]["sha256"] == info.manifest.digest
    import hashlib

    sha = hashlib.sha256((model_dir / "weights" / "part1.bin").read_bytes()).hexdigest()
    assert info.manifest.sha256_of("weights/part1.bin") == sha


def test_sign_and_verify_a_single_file(tmp_path: Path, keys: dict[str, Path]) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    info = sign_model(model, keys["private"])
    assert info.signature_path == tmp_path / "model.safetensors.sig"
    assert [f.path for f in info.manifest.files] == ["model.safetensors"]
    assert verify_model(model, keys["public"]).ok
    model.write_bytes(model.read_bytes() + b"x")
    result = verify_model(model, keys["public"])
    assert result.signature_valid and not result.ok
    assert result.changed == ("model.safetensors",) and result.added == result.removed == ()


def test_verification_names_each_added_removed_and_changed_file(
    model_dir: Path, keys: dict[str, Path]
) -> None:
    info = sign_model(model_dir, keys["private"])
    (model_dir / "weights" / "part2.bin").write_bytes(b"tampered")
    (model_dir / "tokenizer.txt").unlink()
    (model_dir / "weights" / "extra.pkl").write_bytes(b"\x80\x04.")
    result = verify_model(model_dir, keys["public"])
    assert result.signature_valid and not result.ok
    assert result.added == ("weights/extra.pkl",)
    assert result.removed == ("tokenizer.txt",)
    assert result.changed == ("weights/part2.bin",)
    assert result.model_digest == info.manifest.digest
    assert "weights/extra.pkl" in result.message and "tokenizer.txt" in result.message


def test_a_signature_inside_the_folder_is_not_signed(model_dir: Path, keys: dict[str, Path]) -> None:
    info = sign_model(model_dir, keys["private"], model_dir / "model.sig")
    assert "model.sig" not in {f.path for f in info.manifest.files}
    assert verify_model(model_dir, keys["public"], model_dir / "model.sig").ok
    # Signing again over the existing signature replaces it and still leaves it out.
    info = sign_model(model_dir, keys["private"], model_dir / "model.sig")
    assert "model.sig" not in {f.path for f in info.manifest.files}
    assert verify_model(model_dir, keys["public"], model_dir / "model.sig").ok


def _edit_bundle(path: Path, edit: Callable[[dict], object]) -> None:
    bundle = json.loads(path.read_text())
    edit(bundle)
    path.write_text(json.dumps(bundle))


def _tamper_payload(bundle: dict) -> None:
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _flip_signature_bit(bundle: dict) -> None:
    signature = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    signature[12] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: _edit_bundle(p, _tamper_payload), id="payload-edited"),
        pytest.param(lambda p: _edit_bundle(p, _flip_signature_bit), id="signature-bit-flipped"),
        pytest.param(
            lambda p: _edit_bundle(p, lambda b: b["dsseEnvelope"].update(signatures=[])), id="no-signature"
        ),
        pytest.param(lambda p: p.write_text("not a bundle"), id="not-json"),
        pytest.param(lambda p: p.write_text("{}"), id="empty-json"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe\x00"), id="binary"),
    ],
)
def test_a_tampered_or_foreign_signature_is_rejected(
    model_dir: Path, keys: dict[str, Path], tamper: Callable[[Path], object]
) -> None:
    info = sign_model(model_dir, keys["private"])
    tamper(info.signature_path)
    result = verify_model(model_dir, keys["public"])
    assert not result.ok and not result.signature_valid
    assert result.model_digest is None and (result.added, result.removed, result.changed) == ((), (), ())
    assert str(info.signature_path) in result.message


def test_the_wrong_public_key_is_rejected(model_dir: Path, keys: dict[str, Path]) -> None:
    info = sign_model(model_dir, keys["private"])
    result = verify_model(model_dir, keys["other_public"])
    assert not result.ok and not result.signature_valid
    assert "another key" in result.message
    # Without the key hint in the bundle, the ECDSA check itself rejects the other key.
    _edit_bundle(info.signature_path, lambda b: b["verificationMaterial"]["publicKey"].pop("hint"))
    result = verify_model(model_dir, keys["other_public"])
    assert not result.ok and not result.signature_valid
    assert "does not verify" in result.message


def test_unreadable_inputs_are_bad_input(model_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such model"):
        sign_model(tmp_path / "missing", keys["private"])
    with pytest.raises(BadInputError, match="cannot read the signature"):
        verify_model(model_dir, keys["public"])
    sign_model(model_dir, keys["private"])
    with pytest.raises(BadInputError, match="cannot read the public key"):
        verify_model(model_dir, tmp_path / "missing.pub")
    with pytest.raises(BadInputError, match="not a PEM public key"):
        verify_model(model_dir, keys["private"])
    with pytest.raises(BadInputError, match="no such folder"):
        sign_model(model_dir, keys["private"], tmp_path / "nowhere" / "model.sig")


def test_without_the_sign_extra_the_error_names_it(
    model_dir: Path, keys: dict[str, Path], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(BadInputError, match=r"aisec\[sign\]"):
        sign_model(model_dir, keys["private"])


# ------------------------------------------------------------------------------------------------- BOM


def _validate_cyclonedx_1_6(bom: dict) -> None:
    validation = pytest.importorskip("cyclonedx.validation.json")
    from cyclonedx.schema import SchemaVersion

    error = validation.JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom))
    if error is not None:
        data = error.data
        pytest.fail(
            f"not valid CycloneDX 1.6: {getattr(data, 'message', data)} at {list(getattr(data, 'path', []))}"
        )


def _props(component: dict) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for prop in component.get("properties", []):
        grouped.setdefault(prop["name"], []).append(prop["value"])
    return grouped


def _scan(path: Path, findings: tuple[ScanFinding, ...] = (), fmt: str = "pickle") -> FileScan:
    import hashlib

    data = path.read_bytes()
    return FileScan(str(path), fmt, len(data), hashlib.sha256(data).hexdigest(), findings, 0.01)


def test_bom_is_valid_cyclonedx_1_6_with_hashes_and_scan_verdicts(
    model_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    info = sign_model(model_dir, keys["private"])
    critical = ScanFinding("AISEC-SC-201", "os.system", "weights/part2.bin@2", Severity.CRITICAL)
    medium = ScanFinding("AISEC-SC-202", "unknown global", "weights/part2.bin@9", Severity.MEDIUM)
    scans = [
        _scan(model_dir / "config.json", fmt="json"),
        _scan(model_dir / "tokenizer.txt", fmt="text"),
        _scan(model_dir / "weights" / "part1.bin"),
        _scan(model_dir / "weights" / "part2.bin", (critical, medium)),
    ]
    datasets = [
        DatasetRef(
            "digits-train", sha256="ab" * 32, url="https://example.org/digits.npz", description="8x8 digits"
        ),
        DatasetRef("holdout"),
    ]
    bom = build_bom(
        model_dir, scan=scans, datasets=datasets, framework="pytorch", name="digits-cnn", version="1.2"
    )
    _validate_cyclonedx_1_6(bom)

    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    assert bom["serialNumber"].startswith("urn:uuid:")
    assert datetime.fromisoformat(bom["metadata"]["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    from aisec import __version__

    assert {"type": "application", "name": "aisec", "version": __version__} in bom["metadata"]["tools"][
        "components"
    ]
    model = bom["metadata"]["component"]
    assert (
        model["type"] == "machine-learning-model"
        and model["name"] == "digits-cnn"
        and model["version"] == "1.2"
    )
    assert model["hashes"] == [{"alg": "SHA-256", "content": info.manifest.digest}]  # the signed digest
    assert _props(model)["aisec:scan:verdict"] == ["unsafe"]
    assert _props(model)["aisec:scan:findings"] == ["2"]
    assert _props(model)["aisec:scan:findings:critical"] == ["1"]
    assert _props(model["modelCard"])["aisec:model:framework"] == ["pytorch"]
    assert model["modelCard"]["modelParameters"]["datasets"] == [
        {"ref": "aisec:data:digits-train"}, {"ref": "aisec:data:holdout"},
    ]  # fmt: skip

    files = {c["name"]: c for c in bom["components"] if c["type"] == "file"}
    assert set(files) == {f.path for f in info.manifest.files}
    for entry in info.manifest.files:
        assert files[entry.path]["hashes"] == [{"alg": "SHA-256", "content": entry.sha256}]
    assert _props(files["weights/part2.bin"])["aisec:scan:verdict"] == ["unsafe"]
    assert _props(files["weights/part2.bin"])["aisec:scan:rule"] == ["AISEC-SC-201", "AISEC-SC-202"]
    assert _props(files["weights/part1.bin"])["aisec:scan:verdict"] == ["safe"]
    assert _props(files["config.json"])["aisec:scan:format"] == ["json"]

    data = {c["name"]: c for c in bom["components"] if c["type"] == "data"}
    assert data["digits-train"]["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert data["digits-train"]["data"][0]["type"] == "dataset"
    model_deps = next(d for d in bom["dependencies"] if d["ref"] == MODEL_REF)["dependsOn"]
    assert set(model_deps) == {c["bom-ref"] for c in bom["components"]}

    out = tmp_path / "bom.cdx.json"
    write_bom(bom, out)
    assert json.loads(out.read_text()) == bom
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bom_flags_unscanned_and_changed_files(model_dir: Path) -> None:
    scans = [_scan(model_dir / "config.json", fmt="json"), _scan(model_dir / "weights" / "part1.bin")]
    (model_dir / "weights" / "part1.bin").write_bytes(b"changed after the scan")
    bom = build_bom(model_dir, scan=scans)
    _validate_cyclonedx_1_6(bom)
    files = {c["name"]: c for c in bom["components"]}
    assert _props(files["config.json"])["aisec:scan:status"] == ["scanned"]
    assert _props(files["weights/part1.bin"])["aisec:scan:status"] == ["changed-since-scan"]
    assert _props(files["tokenizer.txt"])["aisec:scan:status"] == ["not-scanned"]
    assert "aisec:scan:verdict" not in _props(files["tokenizer.txt"])
    model = bom["metadata"]["component"]
    assert model["name"] == "model"
    assert _props(model)["aisec:scan:verdict"] == ["error"]  # a file nobody scanned is not vouched for
    assert _props(model)["aisec:scan:files-not-scanned"] == ["3"]


def test_bom_with_a_scan_made_without_hashing(model_dir: Path, tmp_path: Path) -> None:
    # A scan without its sha256 (scan_paths(hash_content=False), `aisec scan --no-hash`) crashed build_bom
    # with an AttributeError on None.lower(); it cannot vouch for a file's content, so it is bad input when
    # it is the scan of a model file, and never matches by content otherwise.
    from aisec.defend.supply_chain.scanner import scan_paths

    unhashed = scan_paths([model_dir / "config.json"], hash_content=False).files
    assert unhashed[0].sha256 is None
    with pytest.raises(BadInputError, match="no sha256"):
        build_bom(model_dir, scan=unhashed)
    elsewhere = tmp_path / "copy.json"
    elsewhere.write_bytes((model_dir / "config.json").read_bytes())
    bom = build_bom(model_dir, scan=scan_paths([elsewhere], hash_content=False).files)
    files = {c["name"]: c for c in bom["components"]}
    assert _props(files["config.json"])["aisec:scan:status"] == ["not-scanned"]


def test_bom_of_a_single_file_without_scan(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    bom = build_bom(model)
    _validate_cyclonedx_1_6(bom)
    assert [c["name"] for c in bom["components"]] == ["m.onnx"]
    assert _props(bom["metadata"]["component"])["aisec:scan:status"] == ["not-scanned"]
    assert bom["metadata"]["component"]["hashes"][0]["content"] == manifest_of(model).digest


def test_bom_rejects_bad_dataset_declarations(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    with pytest.raises(BadInputError, match="sha256"):
        build_bom(model, datasets=[DatasetRef("d", sha256="xyz")])
    with pytest.raises(BadInputError, match="twice"):
        build_bom(model, datasets=[DatasetRef("d"), DatasetRef("d")])
    assert os.listdir(tmp_path) == ["m.bin"]


def test_bom_cites_a_data_sets_provenance_manifest(model_dir: Path, tmp_path: Path) -> None:
    """`aisec bom --data-manifest`: each file of the manifest becomes a data component with its SHA-256, the
    stated licence, and a description citing the source, the date, the labeller and the manifest."""
    from typer.testing import CliRunner

    from aisec.cli import app

    runner = CliRunner()
    data = tmp_path / "train.csv"
    data.write_text("id,age,label\nr1,30,cat\nr2,41,dog\n")
    manifest = tmp_path / "train.manifest.json"
    made = runner.invoke(app, ["data", "manifest", str(data), "--source", "Acme Data Ltd", "--licence", "CC-BY-4.0",
                               "--retrieved", "2026-11-30", "--labeller", "Acme annotators", "--key", "id",
                               "-o", str(manifest)])  # fmt: skip
    assert made.exit_code == 0, made.output
    out = tmp_path / "bom.json"
    result = runner.invoke(app, ["bom", str(model_dir), "--data-manifest", str(manifest), "-o", str(out)])
    assert result.exit_code == 0, result.output
    bom = json.loads(out.read_text())
    _validate_cyclonedx_1_6(bom)
    [component] = [c for c in bom["components"] if c["type"] == "data"]
    assert component["name"] == "train.csv" and component["licenses"] == [{"license": {"name": "CC-BY-4.0"}}]
    from aisec.core.hashing import file_sha256

    assert component["hashes"] == [{"alg": "SHA-256", "content": file_sha256(data)}]
    assert "Acme Data Ltd" in component["description"] and "2026-11-30" in component["description"]
    assert "Acme annotators" in component["description"] and "train.manifest.json" in component["description"]
    not_a_manifest = runner.invoke(app, ["bom", str(model_dir), "--data-manifest", str(data), "-o", str(out)])
    assert not_a_manifest.exit_code == 2 and "train.csv" in not_a_manifest.output
