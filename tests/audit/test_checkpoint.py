"""Signed checkpoints (C2SP signed-note + tlog-checkpoint, Ed25519) and the audit log's key files: the published
vectors of the spec and of the reference implementation verify, and every malformed or forged note is refused."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.checkpoint import (
    Checkpoint,
    CheckpointError,
    key_id,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    read_checkpoint,
    sign_checkpoint,
    sign_note,
    split_note,
    verifier_key,
)
from aisec.defend.auditability.audit_log.keys import (
    generate_ed25519_key_pair,
    load_signing_key,
    load_verifying_key,
    public_key_bytes,
)

# ------------------------------------------------------------------------------------------ published vectors
# golang.org/x/mod/sumdb/note, note_test.go (TestNewVerifier, TestSign, TestOpen): the reference implementation's
# key pair (its private key is the Ed25519 seed after the 0x01 type byte), text and signatures.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

# c2sp.org/signed-note, section "Verifier keys", Example (C2SP/C2SP signed-note.md).
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

# c2sp.org/tlog-checkpoint's example checkpoint (signed by a key the spec does not publish: parsed only).
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

# A checkpoint in the wild: a signed tree head served by sum.golang.org (Go's checksum database, a tlog-checkpoint
# whose origin is "go.sum database tree"), with the verifier key the go command pins
# (golang/go src/cmd/go/internal/modfetch/key.go).
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n65209736\n5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo=\n\n"
    "\u2014 sum.golang.org "
    "Az3grnbssgK7ubgFX36gVETtNv0U23qxyAhAMai2QUfeGa3nB/akvkMdlUErfcZz7l/R3cVtYspg3dxXABkGZZKdsQ8=\n"
)


def _peter_private_key() -> ed25519.Ed25519PrivateKey:
    material = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert material[0] == 0x01
    return ed25519.Ed25519PrivateKey.from_private_bytes(material[1:])


def test_the_reference_verifier_key_parses_and_reencodes() -> None:
    name, public_key = parse_verifier_key(PETER_VKEY)
    assert name == "PeterNeumann"
    assert key_id(name, public_key) == bytes.fromhex("c74f20a3")
    assert key_id(name, public_key) == hashlib.sha256(b"PeterNeumann\n\x01" + public_key).digest()[:4]
    assert verifier_key(name, public_key) == PETER_VKEY
    assert public_key_bytes(_peter_private_key()) == public_key


def test_signing_the_reference_text_reproduces_the_reference_note_byte_for_byte() -> None:
    # Ed25519 is deterministic (RFC 8032), so the same key and text give the same signature as Go's.
    assert sign_note(TEXT, "PeterNeumann", _peter_private_key()) == TEXT + "\n" + PETER_SIG


def test_the_reference_notes_open() -> None:
    peter = parse_verifier_key(PETER_VKEY)
    enoch = parse_verifier_key(ENOCH_VKEY)
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(note, *peter) == TEXT  # Enoch's signature is another key's: ignored
    assert open_note(note, *enoch) == TEXT
    assert open_note(C2SP_NOTE, *parse_verifier_key(C2SP_VKEY)) == "This is an example message.\n"
    _, signatures = split_note(note)
    assert [(s.name, s.key_id.hex()) for s in signatures] == [
        ("PeterNeumann", "c74f20a3"),
        ("EnochRoot", "af0cfe78"),
    ]


def test_a_checkpoint_in_the_wild_opens_and_any_change_is_refused() -> None:
    name, public_key = parse_verifier_key(SUMDB_VKEY)
    checkpoint = open_checkpoint(SUMDB_NOTE, name, public_key)
    assert checkpoint.origin == "go.sum database tree"
    assert checkpoint.size == 65209736
    assert base64.b64encode(checkpoint.root).decode() == "5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo="
    assert checkpoint.body() + "\n" + SUMDB_NOTE.split("\n\n")[1] == SUMDB_NOTE
    changed = [
        SUMDB_NOTE.replace("65209736", "65209737"),
        SUMDB_NOTE.replace("5+uG", "6+uG"),
        SUMDB_NOTE.replace("Az3g", "Bz3g"),
        SUMDB_NOTE.replace("sum.golang.org Az3g", "other.invalid Az3g"),
        SUMDB_NOTE.replace("\u2014 sum.golang.org", "\u2014 sum.golang.org\t"),
        SUMDB_NOTE[:-1],
        SUMDB_NOTE.replace("tree\n", "tree \n"),
    ]
    refused = []
    for note in changed:
        with pytest.raises(CheckpointError):
            open_checkpoint(note, name, public_key)
        refused.append(note)
    assert len(refused) == len(changed)


def test_the_spec_example_checkpoint_parses() -> None:
    checkpoint = read_checkpoint(C2SP_CHECKPOINT)
    assert (checkpoint.origin, checkpoint.size, checkpoint.extensions) == (
        "example.com/behind-the-sofa",
        20852163,
        (),
    )
    assert checkpoint.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")


def test_every_mangled_verifier_key_is_refused() -> None:
    """As golang.org/x/mod/sumdb/note's TestNewVerifier: every proper substring and every one-character
    increment of the key, and two keys whose id was recomputed for a wrong length or an unknown algorithm."""
    mangled = {PETER_VKEY[i:j] for i in range(len(PETER_VKEY) + 1) for j in range(i + 1, len(PETER_VKEY) + 1)}
    mangled.discard(PETER_VKEY)
    mangled |= {
        PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :] for i in range(len(PETER_VKEY))
    }
    mangled |= {
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        PETER_VKEY.replace("c74f20a3", "C74F20A3"),
    }
    accepted = []
    for key in mangled:
        try:
            parse_verifier_key(key)
        except CheckpointError:
            continue
        accepted.append(key)
    assert accepted == [] and len(mangled) > 2000


BAD_NOTES = {
    # golang.org/x/mod/sumdb/note TestOpen's "invalid encoded message syntax" cases:
    "text only": TEXT,
    "no signatures": TEXT + "\n",
    "last line without newline": TEXT + "\n" + PETER_SIG[:-1],
    "control character": "\x01" + TEXT + "\n" + PETER_SIG,
    "not UTF-8": "\udcff" + TEXT + "\n" + PETER_SIG,  # an undecodable byte, as surrogateescape reads it
    "space in key name": TEXT + "\n\u2014 Bad Name " + PETER_SIG.split(" ")[2],
    "line after the signatures": TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    # and more:
    "hyphen for the em dash": TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),
    "no space after the em dash": TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014"),
    "tab in text": TEXT.replace(" ", "\t", 1) + "\n" + PETER_SIG,
    "carriage return": TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG,
    "signature not base64": TEXT + "\n\u2014 PeterNeumann x08go/ZJ*\n",
    "signature too short for a key id": TEXT + "\n\u2014 PeterNeumann AAAA\n",
    "plus in key name": TEXT + "\n\u2014 Peter+Neumann " + PETER_SIG.split(" ")[2],
    "three fields": TEXT + "\n\u2014 PeterNeumann x08go/ZJ AAAA\n",
    "too many signatures": TEXT + "\n" + ENOCH_SIG * 101,
}


@pytest.mark.parametrize("note", BAD_NOTES.values(), ids=BAD_NOTES.keys())
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(CheckpointError):
        split_note(note)
    with pytest.raises(CheckpointError):
        open_note(note, *parse_verifier_key(PETER_VKEY))


def test_signatures_by_the_key_asked_for_are_required_checked_and_unique() -> None:
    peter = parse_verifier_key(PETER_VKEY)
    enoch = parse_verifier_key(ENOCH_VKEY)
    with pytest.raises(CheckpointError, match=r"not signed by key EnochRoot\+af0cfe78"):
        open_note(TEXT + "\n" + PETER_SIG, *enoch)
    inserted = (
        PETER_SIG[:58] + "ABCD" + PETER_SIG[58:]
    )  # TestOpen's invalid signature (byte 60 = character 58)
    with pytest.raises(
        CheckpointError, match=r"key PeterNeumann\+c74f20a3 is 67 bytes, not an Ed25519 signature"
    ):
        open_note(TEXT + "\n" + inserted + ENOCH_SIG, *peter)
    replaced = PETER_SIG[:58] + "ABCD" + PETER_SIG[62:]
    with pytest.raises(CheckpointError, match=r"signature by key PeterNeumann\+c74f20a3 does not verify"):
        open_note(TEXT + "\n" + replaced + ENOCH_SIG, *peter)
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(TEXT.replace("cryptography", "cryptographY") + "\n" + PETER_SIG, *peter)
    with pytest.raises(CheckpointError, match="2 signatures by key PeterNeumann"):
        open_note(TEXT + "\n" + PETER_SIG + PETER_SIG, *peter)
    # Same name, another key (so another id): an unknown key, ignored; the note still needs Peter's signature.
    other = ed25519.Ed25519PrivateKey.generate()
    impostor = sign_note(TEXT, "PeterNeumann", other).split("\n\n")[1]
    assert open_note(TEXT + "\n" + impostor + PETER_SIG, *peter) == TEXT
    with pytest.raises(CheckpointError, match="not signed by key PeterNeumann"):
        open_note(TEXT + "\n" + impostor, *peter)
    # Peter's key id under another name: unknown too.
    renamed = PETER_SIG.replace("PeterNeumann", "PeterNeumann2")
    with pytest.raises(CheckpointError, match="not signed by key PeterNeumann"):
        open_note(TEXT + "\n" + renamed, *peter)
    # A signature line by Peter's key that is too short to be Ed25519.
    short = "\u2014 PeterNeumann " + base64.b64encode(bytes.fromhex("c74f20a3") + b"x" * 63).decode() + "\n"
    with pytest.raises(CheckpointError, match="63 bytes, not an Ed25519 signature"):
        open_note(TEXT + "\n" + short, *peter)


def _key() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    private_key = ed25519.Ed25519PrivateKey.generate()
    return private_key, public_key_bytes(private_key)


ROOT = hashlib.sha256(b"a root").digest()


def test_a_signed_checkpoint_has_the_exact_c2sp_layout_and_opens() -> None:
    private_key, public_key = _key()
    checkpoint = Checkpoint("aisec.audit/0123456789abcdef", 42, ROOT)
    assert checkpoint.body() == f"aisec.audit/0123456789abcdef\n42\n{base64.b64encode(ROOT).decode()}\n"
    note = sign_checkpoint(checkpoint, "aisec.audit/0123456789abcdef", private_key)
    body, signature_line = note.split("\n\n")
    assert body + "\n" == checkpoint.body()
    assert signature_line.startswith("\u2014 aisec.audit/0123456789abcdef ") and signature_line.endswith("\n")
    blob = base64.b64decode(signature_line.split(" ")[2])
    assert blob[:4] == key_id("aisec.audit/0123456789abcdef", public_key) and len(blob) == 4 + 64
    public_key_object = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    public_key_object.verify(blob[4:], checkpoint.body().encode())  # the signature covers exactly the body
    assert open_checkpoint(note, "aisec.audit/0123456789abcdef", public_key) == checkpoint
    assert read_checkpoint(note) == checkpoint


def test_checkpoints_with_extensions_cosignatures_and_the_empty_tree() -> None:
    private_key, public_key = _key()
    witness, witness_public = _key()
    checkpoint = Checkpoint("example.org/log", 0, hashlib.sha256(b"").digest(), ("ext one", "ext: two"))
    note = sign_checkpoint(checkpoint, "example.org/log", private_key)
    cosignature = sign_note(checkpoint.body(), "witness.example/w1", witness).split("\n\n")[1]
    cosigned = note + cosignature
    assert open_checkpoint(cosigned, "example.org/log", public_key) == checkpoint
    assert open_checkpoint(cosigned, "witness.example/w1", witness_public) == checkpoint
    with pytest.raises(CheckpointError, match="not signed by key"):
        open_checkpoint(note, "witness.example/w1", witness_public)
    with pytest.raises(CheckpointError, match="not signed by key"):
        open_checkpoint(note, "example.org/log", witness_public)


def test_a_changed_checkpoint_fails_its_signature() -> None:
    private_key, public_key = _key()
    note = sign_checkpoint(Checkpoint("example.org/log", 7, ROOT), "example.org/log", private_key)
    forged = note.replace("\n7\n", "\n8\n")
    assert read_checkpoint(forged).size == 8
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(forged, "example.org/log", public_key)


def _body(size: str = "5", root: str | None = None, origin: str = "example.org/log", extra: str = "") -> str:
    root = base64.b64encode(ROOT).decode() if root is None else root
    return f"{origin}\n{size}\n{root}\n{extra}\n\u2014 k AAAAAAA=\n"


BAD_BODIES = {
    "leading zero": (_body(size="05"), "line 2"),
    "plus sign": (_body(size="+5"), "line 2"),
    "space": (_body(size=" 5"), "line 2"),
    "underscore": (_body(size="5_000"), "line 2"),
    "arabic digits": (_body(size="\u0665"), "line 2"),
    "negative": (_body(size="-1"), "line 2"),
    "over 2^64-1": (_body(size=str(2**64)), "line 2"),
    "root not base64": (_body(root="not base64!"), "line 3"),
    "root of 31 bytes": (_body(root=base64.b64encode(ROOT[:31]).decode()), "line 3"),
    "root not canonical base64": (_body(root=base64.b64encode(ROOT).decode()[:-2] + "Z="), "line 3"),
    "empty origin": (_body(origin=""), "empty"),
    "two lines": ("example.org/log\n5\n\n\u2014 k AAAAAAA=\n", "at least 3 lines"),
    "empty extension line": (_body(extra="ext\n\n"), "empty extension line"),
}


@pytest.mark.parametrize(("note", "message"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_malformed_checkpoint_bodies_are_refused(note: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(note)


def test_the_largest_size_parses() -> None:
    assert read_checkpoint(_body(size=str(2**64 - 1))).size == 2**64 - 1


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("two\nlines", 1, ROOT, ()),
        ("", 1, ROOT, ()),
        ("tab\there", 1, ROOT, ()),
        ("example.org/log", -1, ROOT, ()),
        ("example.org/log", 2**64, ROOT, ()),
        ("example.org/log", 1, ROOT[:31], ()),
        ("example.org/log", 1, ROOT, ("",)),
        ("example.org/log", 1, ROOT, ("a\nb",)),
    ],
)
def test_a_checkpoint_that_cannot_be_written_is_refused(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin, size, root, extensions)


@pytest.mark.parametrize(
    "name", ["", "with space", "with+plus", "nbsp\u00a0name", "ideographic\u3000space", "tab\t"]
)
def test_bad_key_names_are_refused(name: str) -> None:
    private_key, public_key = _key()
    with pytest.raises(CheckpointError, match="key name"):
        key_id(name, public_key)
    with pytest.raises(CheckpointError, match="key name"):
        sign_note("text\n", name, private_key)


def test_note_text_must_end_in_a_newline() -> None:
    private_key, _ = _key()
    with pytest.raises(CheckpointError, match="newline"):
        sign_note("no newline", "k", private_key)


def test_importing_the_modules_does_not_import_cryptography() -> None:
    code = (
        "import sys\n"
        "import aisec.defend.auditability.audit_log.merkle, aisec.defend.auditability.audit_log.checkpoint\n"
        "import aisec.defend.auditability.audit_log.keys\n"
        "print('cryptography' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------------- keys


def test_a_generated_key_pair_round_trips(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "audit.key", tmp_path / "audit.pub"
    vkey = generate_ed25519_key_pair(private_path, public_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private_key = load_signing_key(private_path)
    public_key = load_verifying_key(public_path)
    assert public_key == public_key_bytes(private_key)
    assert parse_verifier_key(vkey) == ("aisec.audit", public_key)
    (tmp_path / "audit.vkey").write_text(vkey + "\n")
    assert load_verifying_key(tmp_path / "audit.vkey") == public_key
    note = sign_checkpoint(Checkpoint("o", 1, ROOT), "o", private_key)
    assert open_checkpoint(note, "o", load_verifying_key(public_path)).size == 1


def test_key_generation_never_overwrites(tmp_path: Path) -> None:
    existing = tmp_path / "exists.pub"
    existing.write_text("keep me")
    with pytest.raises(BadInputError, match="already exists"):
        generate_ed25519_key_pair(tmp_path / "new.key", existing)
    assert existing.read_text() == "keep me" and not (tmp_path / "new.key").exists()
    (tmp_path / "link.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInputError, match="already exists"):
        generate_ed25519_key_pair(tmp_path / "link.key", tmp_path / "fresh.pub")
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "fresh.pub").exists()
    with pytest.raises(BadInputError, match="different files"):
        generate_ed25519_key_pair(tmp_path / "same", tmp_path / "same")
    with pytest.raises(BadInputError, match="no such folder"):
        generate_ed25519_key_pair(tmp_path / "missing" / "a.key", tmp_path / "a.pub")


def test_the_private_key_is_never_readable_by_others_even_with_a_loose_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        generate_ed25519_key_pair(tmp_path / "k", tmp_path / "k.pub")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def _write_pem(path: Path, key: Any, *, public: bool = False, password: bytes | None = None) -> Path:
    if public:
        data = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        encryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path.write_bytes(data)
    return path


def test_wrong_signing_keys_are_named(tmp_path: Path) -> None:
    p256 = _write_pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BadInputError) as caught:
        load_signing_key(p256)
    assert str(caught.value) == (
        f"{p256}: not an Ed25519 private key (it is an ECDSA P-256 key: make one with `aisec keygen --type ed25519`)"
    )
    rsa_key = _write_pem(tmp_path / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(BadInputError, match="it is an RSA 1024-bit key"):
        load_signing_key(rsa_key)
    encrypted = _write_pem(tmp_path / "enc.pem", ed25519.Ed25519PrivateKey.generate(), password=b"secret")
    with pytest.raises(BadInputError, match="encrypted"):
        load_signing_key(encrypted)
    public = _write_pem(tmp_path / "ed.pub", ed25519.Ed25519PrivateKey.generate(), public=True)
    with pytest.raises(BadInputError, match="a public key, not an Ed25519 private key"):
        load_signing_key(public)
    (tmp_path / "text").write_text("not a key")
    with pytest.raises(BadInputError, match="not a PEM private key"):
        load_signing_key(tmp_path / "text")
    with pytest.raises(BadInputError, match="cannot read the private key"):
        load_signing_key(tmp_path / "missing")


def test_wrong_verifying_keys_are_named(tmp_path: Path) -> None:
    p256 = _write_pem(tmp_path / "p256.pub", ec.generate_private_key(ec.SECP256R1()), public=True)
    with pytest.raises(BadInputError, match=r"not an Ed25519 public key \(it is an ECDSA P-256 key"):
        load_verifying_key(p256)
    private = _write_pem(tmp_path / "ed.key", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(BadInputError, match="a private key; give the public key"):
        load_verifying_key(private)
    (tmp_path / "bad.vkey").write_text(PETER_VKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(BadInputError, match="neither a PEM public key nor a note verifier key"):
        load_verifying_key(tmp_path / "bad.vkey")
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BadInputError, match="not a PEM public key"):
        load_verifying_key(tmp_path / "bad.pem")
    (tmp_path / "peter.vkey").write_text(PETER_VKEY)
    assert load_verifying_key(tmp_path / "peter.vkey") == parse_verifier_key(PETER_VKEY)[1]
