"""The audit log's Ed25519 keys as files: a PKCS#8 PEM private key (mode 0600) and a PEM SubjectPublicKeyInfo
public key, read back with errors that name the file and what it holds instead (`cryptography`, the `audit`
extra, imported on first use)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisec.core.atomic import write_key_pair
from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.checkpoint import (
    CheckpointError,
    ed25519_module,
    parse_verifier_key,
    verifier_key,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PathLike = str | os.PathLike[str]

DEFAULT_KEY_NAME = "aisec.audit"
_MAKE_ONE = "make one with `aisec keygen --type ed25519`"
_PRIVATE_PEM = b"PRIVATE KEY-----"
_ECDSA_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def generate_ed25519_key_pair(
    private_path: PathLike, public_path: PathLike, *, name: str = DEFAULT_KEY_NAME
) -> str:
    """Create an Ed25519 key pair: the private key as unencrypted PKCS#8 PEM, created with mode 0600, the public
    key as PEM SubjectPublicKeyInfo; neither file may exist already. Returns the public key's signed-note
    verifier key under `name` (a log signs its checkpoints under its own origin; verifying needs only the key)."""
    ed25519 = ed25519_module()
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_key_pair(Path(private_path), Path(public_path), private_pem, public_pem)
    return verifier_key(name, public_key_bytes(key))


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte Ed25519 public key (RFC 8032 encoding) of a private key."""
    return _raw(private_key.public_key())


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read the {what} {path}: {error.strerror or error}") from None


def _describe(key: Any) -> str:
    """What kind of key `key` is, in words: "an ECDSA P-256 key", "an RSA 2048-bit key", ..."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519

    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"an ECDSA {_ECDSA_CURVES.get(key.curve.name, key.curve.name)} key"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"an RSA {key.key_size}-bit key"
    if isinstance(key, (dsa.DSAPrivateKey, dsa.DSAPublicKey)):
        return f"a DSA {key.key_size}-bit key"
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return "an Ed448 key"
    if isinstance(
        key, (x25519.X25519PrivateKey, x25519.X25519PublicKey, x448.X448PrivateKey, x448.X448PublicKey)
    ):
        return "a Diffie-Hellman (X25519/X448) key, which cannot sign"
    return f"a {type(key).__name__.lstrip('_')}"


def load_signing_key(path: PathLike) -> Ed25519PrivateKey:
    """The Ed25519 private key in an unencrypted PEM file; BadInputError naming the file and what it holds
    instead when it is anything else."""
    ed25519 = ed25519_module()
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    data = _read(path, "private key")
    if b"-----BEGIN" in data and b"PUBLIC KEY-----" in data and _PRIVATE_PEM not in data:
        raise BadInputError(
            f"{path}: a public key, not an Ed25519 private key (the signing key is the private one)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BadInputError(
            f"{path}: an encrypted private key; the audit log needs an unencrypted one"
        ) from None
    except Exception:  # ValueError, UnsupportedAlgorithm: not PEM, or not a key cryptography reads
        raise BadInputError(f"{path}: not a PEM private key ({_MAKE_ONE})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BadInputError(f"{path}: not an Ed25519 private key (it is {_describe(key)}: {_MAKE_ONE})")
    return key


def load_verifying_key(path: PathLike) -> bytes:
    """The raw 32-byte Ed25519 public key in a file holding a PEM public key (SubjectPublicKeyInfo) or a
    signed-note verifier key ("<name>+<key id>+<base64 key>"). A private key is refused: the verifying side
    never needs it. BadInputError naming the file and what it holds instead."""
    ed25519 = ed25519_module()
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    data = _read(path, "public key")
    if b"-----BEGIN" in data:
        if _PRIVATE_PEM in data:
            raise BadInputError(
                f"{path}: a private key; give the public key (PEM) or its verifier key, never the private one"
            )
        try:
            key = serialization.load_pem_public_key(data)
        except Exception:  # ValueError, UnsupportedAlgorithm
            raise BadInputError(f"{path}: not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise BadInputError(f"{path}: not an Ed25519 public key (it is {_describe(key)}: {_MAKE_ONE})")
        return _raw(key)
    try:
        text = data.decode("utf-8").strip()
        _, public_key = parse_verifier_key(text)
    except (UnicodeDecodeError, CheckpointError) as error:
        raise BadInputError(f"{path}: neither a PEM public key nor a note verifier key ({error})") from None
    return public_key


def _raw(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
