"""Sign and verify model files and folders with OpenSSF model signing (`model-signing` 1.x), offline, with a
local ECDSA key pair.

The signature file is a Sigstore bundle (media type `application/vnd.dev.sigstore.bundle.v0.3+json`) whose
DSSE envelope carries an in-toto Statement v1 (predicate type `https://model_signing/signature/v1.0`): its
subject digest is SHA-256 over the per-file SHA-256 digests in path order (the whole-model digest), and its
predicate lists every file with its digest. Any tool that verifies OpenSSF model signatures with a public key
can check it, e.g. `model_signing verify key --public_key key.pub --signature model.sig model/`.

`model_signing` and `cryptography` are the `sign` extra; they are imported on first use.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from aisec.core.atomic import write_atomic, write_key_pair
from aisec.core.errors import BadInputError

PathLike = str | os.PathLike[str]

_EXTRA_MESSAGE = "signing needs the 'sign' extra: pip install 'aisec[sign]'"
_SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


@dataclass(frozen=True)
class FileDigest:
    """One file of a model: its path relative to the model folder (POSIX separators; the file's own name for a
    single-file model) and the SHA-256 of its content."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A model's files with their SHA-256, and the whole-model digest as OpenSSF model signing computes it
    (SHA-256 over the per-file digests, concatenated in path order)."""

    name: str
    digest: str
    files: tuple[FileDigest, ...]

    def sha256_of(self, path: str) -> str | None:
        """The SHA-256 of `path` (as in `files`), or None when the manifest does not list it."""
        return next((f.sha256 for f in self.files if f.path == path), None)


@dataclass(frozen=True)
class SignatureInfo:
    """What `sign_model` signed and where the signature went."""

    model_path: Path
    signature_path: Path
    key_fingerprint: str
    manifest: Manifest


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify_model`.

    `ok` only when the signature verifies with the given public key and every file matches the signed
    manifest. `signature_valid` tells the two failures apart: False means the signature itself was rejected
    (another key, an altered or unreadable bundle), True with `ok` False means the signature is genuine but
    the files differ from what was signed: `added` (not signed), `removed` (signed, now missing) and `changed`
    (different content) name them relative to the model folder. `model_digest` is the whole-model digest the
    signature vouches for (None when the signature was rejected).
    """

    ok: bool
    signature_valid: bool
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    model_digest: str | None = None
    message: str = ""


# --------------------------------------------------------------------------------------------------- keys


def generate_key_pair(private_path: PathLike, public_path: PathLike, password: bytes | None = None) -> str:
    """Create an ECDSA P-256 key pair as PEM files (private: PKCS#8, encrypted when `password` is given, mode
    0600; public: SubjectPublicKeyInfo). Existing files are never overwritten. Returns the public key's
    fingerprint (see `public_key_fingerprint`)."""
    serialization, ec = _crypto()
    if password is not None and not password:
        raise BadInputError("the key password must not be empty (give none for an unencrypted key)")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_key_pair(Path(private_path), Path(public_path), private_pem, public_pem)
    return hashlib.sha256(public_pem).hexdigest()


def public_key_fingerprint(public_key: PathLike) -> str:
    """SHA-256 (hex) of the PEM SubjectPublicKeyInfo of an elliptic-curve public key: the key hint that
    OpenSSF model signing records in the bundle's `verificationMaterial.publicKey.hint`."""
    serialization, _ = _crypto()
    key = _load_public_key(Path(public_key))
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


# ------------------------------------------------------------------------------------------------ signing


def sign_model(
    model_path: PathLike,
    private_key: PathLike,
    signature_path: PathLike | None = None,
    password: bytes | None = None,
) -> SignatureInfo:
    """Sign a model file or folder with an elliptic-curve private key (PEM) and write the signature, an
    OpenSSF model-signing Sigstore bundle, to `signature_path` (default: `<model>.sig` beside the model),
    atomically.

    Every file under a folder is signed except git metadata (`.git/`, `.gitattributes`, `.github/`,
    `.gitignore`) and the signature file itself when it lies inside the folder.
    """
    ms = _model_signing()
    serialization, _ = _crypto()
    model, signature = _model_and_signature(model_path, signature_path)
    key_path = Path(private_key)
    key = _load_private_key(key_path, password)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not signature.parent.is_dir():
        raise BadInputError(f"no such folder for the signature: {signature.parent}")
    hashing_config = ms.hashing.Config()
    inside = _relative_inside(signature, model)
    if inside is not None:
        hashing_config.set_ignored_paths(paths=[inside], ignore_git_paths=True)
    config = ms.signing.Config().use_elliptic_key_signer(private_key=key_path, password=password)
    config.set_hashing_config(hashing_config)
    # model_signing writes the bundle itself; it goes to a private folder first, then into place atomically.
    with tempfile.TemporaryDirectory(prefix="aisec-sign-") as staging:
        staged = Path(staging) / "model.sig"
        try:
            config.sign(model, staged)
        except OSError as error:
            raise BadInputError(f"cannot sign {model}: {_os_error(error)}") from None
        except ValueError as error:  # e.g. a symbolic link in the model folder
            raise BadInputError(f"cannot sign {model}: {error}") from None
        bundle = staged.read_bytes()
    write_atomic(signature, bundle)
    statement = _statement_of(bundle)
    return SignatureInfo(
        model_path=model,
        signature_path=signature,
        key_fingerprint=hashlib.sha256(public_pem).hexdigest(),
        manifest=_manifest_from_statement(statement, model),
    )


# ------------------------------------------------------------------------------------------- verification


def verify_model(
    model_path: PathLike, public_key: PathLike, signature_path: PathLike | None = None
) -> Verification:
    """Verify a model file or folder against its OpenSSF model-signing signature (default `<model>.sig` beside
    the model) with an elliptic-curve public key (PEM).

    model_signing checks the signature first; only once it has accepted it is the signed manifest decoded and
    compared file by file with model_signing's hashing of the files now on disk. A rejected signature (another
    key, an altered bundle, a file that is no bundle) gives `signature_valid` False; BadInputError is raised
    only when the model, the key or the signature cannot be read, or the key is not an elliptic-curve
    public key.
    """
    ms = _model_signing()
    model, signature = _model_and_signature(model_path, signature_path)
    key_path = Path(public_key)
    fingerprint = public_key_fingerprint(key_path)
    try:
        bundle = signature.read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read the signature {signature}: {_os_error(error)}") from None
    recorder = _recording_hashing_config(ms, bundle, model, _relative_inside(signature, model))
    config = ms.verifying.Config().use_elliptic_key_verifier(public_key=key_path)
    config.set_hashing_config(recorder)
    printed = io.StringIO()
    # Verify a private copy of the bytes read above, so the payload decoded below is the one that was checked.
    with tempfile.TemporaryDirectory(prefix="aisec-verify-") as staging:
        staged = Path(staging) / "model.sig"
        staged.write_bytes(bundle)
        try:
            with contextlib.redirect_stdout(printed):  # model_signing prints warnings on stdout
                config.verify(model, staged)
            rejection: Exception | None = None
        except BadInputError:
            raise
        except Exception as caught:  # every rejection by model_signing is reported, not raised
            rejection = caught
    note = " ".join(printed.getvalue().split())
    state = recorder.state
    if state.expected is None:
        if rejection is None:  # accepted without hashing through the recorder (not model_signing 1.1's order)
            digest = _statement_of(bundle)["subject"][0]["digest"]["sha256"]
            return Verification(
                ok=True,
                signature_valid=True,
                model_digest=digest,
                message=_join(f"{model} matches its signature", note),
            )
        # model_signing rejected the signature before it looked at the files.
        reason = _rejection(rejection, bundle, fingerprint, signature)
        return Verification(ok=False, signature_valid=False, message=_join(reason, note))
    digest = state.expected_digest
    if state.hash_error is not None:
        return Verification(
            ok=False,
            signature_valid=True,
            model_digest=digest,
            message=_join(f"the signature is valid but {model} cannot be hashed: {state.hash_error}", note),
        )
    if rejection is None:
        return Verification(
            ok=True,
            signature_valid=True,
            model_digest=digest,
            message=_join(f"{model} matches its signature ({_count(len(state.expected), 'file')})", note),
        )
    added, removed, changed = _diff(state.expected, state.actual or {})
    if not (added or removed or changed):  # model_signing failed for a reason of its own
        return Verification(
            ok=False,
            signature_valid=True,
            model_digest=digest,
            message=_join(f"verification failed: {rejection}", note),
        )
    parts = [
        f"{len(files)} {what}: {_some(files)}"
        for what, files in (("added", added), ("removed", removed), ("changed", changed))
        if files
    ]
    return Verification(
        ok=False,
        signature_valid=True,
        added=added,
        removed=removed,
        changed=changed,
        model_digest=digest,
        message=_join(
            f"the signature is valid but {model} differs from what was signed: " + "; ".join(parts), note
        ),
    )


# --------------------------------------------------------------------------------------------- manifests


def manifest_of(model_path: PathLike, *, ignore: Iterable[str] = ()) -> Manifest:
    """Hash a model file or folder the way `sign_model` does (model_signing's file serialization with
    SHA-256, git metadata ignored, plus the relative paths in `ignore`): the same per-file digests and
    whole-model digest that a signature of these files carries."""
    ms = _model_signing()
    model = Path(model_path)
    if not (model.is_file() or model.is_dir()):
        raise BadInputError(f"no such model file or folder: {model}")
    config = ms.hashing.Config()
    ignored = list(ignore)
    if ignored:
        config.set_ignored_paths(paths=ignored, ignore_git_paths=True)
    try:
        hashed = config.hash(model)
    except OSError as error:
        raise BadInputError(f"cannot hash {model}: {_os_error(error)}") from None
    except ValueError as error:
        raise BadInputError(f"cannot hash {model}: {error}") from None
    files = []
    for resource in hashed.resource_descriptors():
        files.append(FileDigest(_display_name(resource.identifier, model), resource.digest.digest_hex))
    return Manifest(
        name=hashed.model_name,
        digest=_root_digest(bytes.fromhex(f.sha256) for f in files),
        files=tuple(files),
    )


# ------------------------------------------------------------------------------------------------ helpers


def _model_signing() -> ModuleType:
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError:
        raise BadInputError(_EXTRA_MESSAGE) from None
    return model_signing


def _crypto() -> tuple[Any, Any]:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise BadInputError(_EXTRA_MESSAGE) from None
    return serialization, ec


def _load_private_key(path: Path, password: bytes | None) -> Any:
    serialization, ec = _crypto()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read the private key {path}: {_os_error(error)}") from None
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as error:  # encrypted without a password, or a password for an unencrypted key
        raise BadInputError(f"cannot load the private key {path}: {error}") from None
    except ValueError as error:
        raise BadInputError(
            f"cannot load the private key {path} (wrong password or not a PEM key): {error}"
        ) from None
    except Exception as error:  # e.g. cryptography's UnsupportedAlgorithm
        raise BadInputError(f"cannot load the private key {path}: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _SUPPORTED_CURVES:
        raise BadInputError(f"{path} is not an elliptic-curve P-256, P-384 or P-521 private key")
    return key


def _load_public_key(path: Path) -> Any:
    serialization, ec = _crypto()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read the public key {path}: {_os_error(error)}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as error:  # ValueError, UnsupportedAlgorithm
        raise BadInputError(f"{path} is not a PEM public key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SUPPORTED_CURVES:
        raise BadInputError(f"{path} is not an elliptic-curve P-256, P-384 or P-521 public key")
    return key


def _model_and_signature(model_path: PathLike, signature_path: PathLike | None) -> tuple[Path, Path]:
    model = Path(model_path)
    if not (model.is_file() or model.is_dir()):
        raise BadInputError(f"no such model file or folder: {model}")
    if signature_path is None:
        absolute = Path(os.path.abspath(model))
        signature = absolute.with_name(absolute.name + ".sig")
    else:
        signature = Path(signature_path)
    if os.path.abspath(signature) == os.path.abspath(model) or signature.is_dir():
        raise BadInputError(f"the signature path {signature} must be a file other than the model")
    return model, signature


def _relative_inside(path: Path, folder: Path) -> str | None:
    """`path` relative to `folder` (POSIX), when `folder` is a folder that contains it."""
    if not folder.is_dir():
        return None
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return PurePosixPath(*Path(relative).parts).as_posix()


def _display_name(identifier: str, model: Path) -> str:
    """A manifest resource name as a file path: model_signing names a single-file model's only file `.`."""
    if identifier == ".":
        return Path(os.path.abspath(model)).name
    return identifier


def _root_digest(digests: Iterable[bytes]) -> str:
    hasher = hashlib.sha256()
    for digest in digests:
        hasher.update(digest)
    return hasher.hexdigest()


def _statement_of(bundle: bytes) -> dict[str, Any]:
    """The in-toto statement in a bundle's DSSE envelope. Call only on a bundle model_signing has accepted."""
    envelope = json.loads(bundle)["dsseEnvelope"]
    return json.loads(base64.b64decode(envelope["payload"]))


def _manifest_from_statement(statement: dict[str, Any], model: Path) -> Manifest:
    resources = statement["predicate"]["resources"]
    files = tuple(FileDigest(_display_name(r["name"], model), r["digest"]) for r in resources)
    subject = statement["subject"][0]
    return Manifest(name=subject["name"], digest=subject["digest"]["sha256"], files=files)


@dataclass
class _HashState:
    expected: dict[str, dict[str, str]] | None = None  # file -> {resource name: digest}, from the signature
    expected_digest: str | None = None
    actual: dict[str, dict[str, str]] | None = None  # the same, from hashing the files now on disk
    hash_error: str | None = None


def _by_file(names_and_digests: Iterable[tuple[str, str]], model: Path) -> dict[str, dict[str, str]]:
    """Group manifest resources by file; a shard is named `path:start:end` by model_signing."""
    grouped: dict[str, dict[str, str]] = {}
    for name, digest in names_and_digests:
        path = name
        parts = name.rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            path = parts[0]
        grouped.setdefault(_display_name(path, model), {})[name] = digest
    return grouped


def _recording_hashing_config(
    ms: ModuleType, bundle: bytes, model: Path, signature_inside: str | None
) -> Any:
    """A `model_signing.hashing.Config` for `verifying.Config.set_hashing_config`. model_signing calls its
    `hash` only after it has verified the signature, so that is where the signed payload is decoded: the
    hashing is set up from the signed serialization parameters (as model_signing itself would guess them),
    and both manifests are recorded for the file-by-file comparison."""

    # the base is model_signing's, imported at run time (the sign extra): no static type to name
    class _Recorder(ms.hashing.Config):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.state = _HashState()

        def hash(self, model_path: Any, *, files_to_hash: Any = None) -> Any:
            statement = _statement_of(bundle)
            predicate = statement["predicate"]
            self.state.expected_digest = statement["subject"][0]["digest"]["sha256"]
            self.state.expected = _by_file(((r["name"], r["digest"]) for r in predicate["resources"]), model)
            args = predicate["serialization"]
            common = {
                "hashing_algorithm": args["hash_type"],
                "allow_symlinks": bool(args["allow_symlinks"]),
                "ignore_paths": args.get("ignore_paths", frozenset()),
            }
            if args["method"] == "shards":
                self.use_shard_serialization(shard_size=args["shard_size"], **common)
            else:
                self.use_file_serialization(**common)
            self.set_allow_symlinks(bool(args["allow_symlinks"]))
            if signature_inside is not None:
                self.add_ignored_paths(model_path=model_path, paths=[signature_inside])
            try:
                actual = super().hash(model_path, files_to_hash=files_to_hash)
            except OSError as error:
                raise BadInputError(f"cannot read {model}: {_os_error(error)}") from None
            except ValueError as error:  # a symbolic link or a special file in the model
                self.state.hash_error = str(error)
                raise
            self.state.actual = _by_file(
                ((rd.identifier, rd.digest.digest_hex) for rd in actual.resource_descriptors()), model
            )
            return actual

    return _Recorder()


def _diff(
    expected: dict[str, dict[str, str]], actual: dict[str, dict[str, str]]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    added = tuple(sorted(set(actual) - set(expected)))
    removed = tuple(sorted(set(expected) - set(actual)))
    changed = tuple(sorted(f for f in set(expected) & set(actual) if expected[f] != actual[f]))
    return added, removed, changed


def _rejection(error: Exception, bundle: bytes, fingerprint: str, signature: Path) -> str:
    """Why model_signing rejected a signature, in words; nothing here is trusted, it only picks the words."""
    hint = None
    with contextlib.suppress(Exception):
        hint = json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"]
    if type(error) is ValueError and isinstance(hint, str) and hint and hint != fingerprint:
        return (
            f"the signature {signature} was made with another key (key {hint[:16]}…, "
            f"not the given public key {fingerprint[:16]}…)"
        )
    if type(error).__name__ == "InvalidSignature":
        return (
            f"the signature {signature} does not verify with the given public key: the bundle was altered "
            "or made with another key"
        )
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"{signature} is not a valid model signature (Sigstore bundle): {type(error).__name__}: {first_line}"
    )


def _some(names: tuple[str, ...], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _join(message: str, note: str) -> str:
    return f"{message} (model_signing: {note})" if note else message


def _os_error(error: OSError) -> str:
    return error.strerror or str(error)
