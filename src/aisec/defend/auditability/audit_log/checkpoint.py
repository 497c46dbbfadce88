"""Signed checkpoints: the C2SP tlog-checkpoint format carried in a C2SP signed note, signed with Ed25519.

A signed note (c2sp.org/signed-note) is UTF-8 text without control characters other than newline: the note text
(ending in a newline), a blank line, then one or more signature lines "— <key name> <base64(key ID || sig)>",
where the key ID is the first four bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key) and
the signature is Ed25519 (RFC 8032) over the note text. A verifier key is "<name>+<hex key ID>+<base64(0x01 ||
public key)>". A checkpoint (c2sp.org/tlog-checkpoint) is a note whose text is the log's origin, its tree size in
decimal and its RFC 6962 root hash in base64, one per line, then optional non-empty extension lines.

Opening a note needs one signature by the key asked for, and checks it; signatures by other keys (a witness's
cosignature, a rotated key) are ignored, as the spec requires. `cryptography` (the `audit` extra) is imported
only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from aisec.core.errors import BadInputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ED25519_SIGNATURE_TYPE = 0x01
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
MAX_SIGNATURES = 100  # the spec asks verifiers for a limit that admits at least 16
MAX_TREE_SIZE = 2**64 - 1  # the reference implementations read the size as an unsigned 64-bit integer
ROOT_SIZE = 32

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}", re.ASCII)
_EXTRA_MESSAGE = "the audit log's signatures need the 'audit' extra: pip install 'aisec[audit]'"


class CheckpointError(ValueError):
    """A note, checkpoint or verifier key that is malformed, not signed by the key asked for, or whose signature
    does not verify; the message says which."""


def ed25519_module() -> ModuleType:
    """cryptography's Ed25519 module, imported on first use (BadInputError naming the extra when missing)."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BadInputError(_EXTRA_MESSAGE) from None
    return ed25519


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unbase64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise CheckpointError(f"{what} is not base64: {text[:80]!r}") from None


def check_key_name(name: str) -> None:
    """CheckpointError unless `name` is a valid signed-note key name: non-empty, no Unicode space, no '+'."""
    if not isinstance(name, str) or not name:
        raise CheckpointError("a key name must be a non-empty string")
    if "+" in name or any(character.isspace() for character in name) or _CONTROL.search(name):
        raise CheckpointError(f"key name {name!r} contains a space, a '+' or a control character")


def _check_public_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_KEY_SIZE:
        raise CheckpointError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")


def key_id(name: str, public_key: bytes) -> bytes:
    """The note key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4] (c2sp.org/signed-note)."""
    check_key_name(name)
    _check_public_key(public_key)
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + public_key)
    return digest.digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key "<name>+<hex key ID>+<base64(0x01 || public key)>" (c2sp.org/signed-note)."""
    return f"{name}+{key_id(name, public_key).hex()}+{_base64(bytes([ED25519_SIGNATURE_TYPE]) + public_key)}"


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """(key name, raw Ed25519 public key) of a verifier key; CheckpointError if it is malformed, not Ed25519, or
    its key ID does not match its name and key."""
    parts = text.split("+", 2) if isinstance(text, str) else []
    if len(parts) != 3:
        raise CheckpointError("a verifier key is <name>+<hex key id>+<base64 key>")
    name, id_hex, material_base64 = parts
    check_key_name(name)
    if not _KEY_ID_HEX.fullmatch(id_hex):
        raise CheckpointError(f"verifier key id {id_hex[:20]!r} is not 8 lowercase hex digits")
    material = _unbase64(material_base64, "verifier key material")
    if not material or material[0] != ED25519_SIGNATURE_TYPE:
        kind = f"0x{material[0]:02x}" if material else "none"
        raise CheckpointError(f"verifier key signature type is {kind}, not Ed25519 (0x01)")
    public_key = material[1:]
    if len(public_key) != ED25519_KEY_SIZE:
        raise CheckpointError(
            f"verifier key holds {len(public_key)} bytes, not a {ED25519_KEY_SIZE}-byte key"
        )
    if key_id(name, public_key).hex() != id_hex:
        raise CheckpointError(f"verifier key id {id_hex} does not match its name and key")
    return name, public_key


# ----------------------------------------------------------------------------------------------- signed notes


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key name, the key ID and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise CheckpointError(f"{what} is not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{what} is not valid UTF-8") from None
    control = _CONTROL.search(text)
    if control:
        raise CheckpointError(f"{what} contains the control character {control.group()!r}")


def _check_note_text(text: str) -> None:
    _check_text(text, "the note text")
    if not text.endswith("\n"):
        raise CheckpointError("the note text does not end with a newline")


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """(note text, signature lines) of a signed note, checked for form only (c2sp.org/signed-note): the text
    ends with a newline and is separated by the last blank line from 1..MAX_SIGNATURES lines
    "— <key name> <base64(4-byte key ID || signature)>", each ending in a newline."""
    _check_text(note, "the note")
    separator = note.rfind("\n\n")
    if separator < 0:
        raise CheckpointError("the note has no blank line before its signatures")
    text, block = note[: separator + 1], note[separator + 2 :]
    if not block:
        raise CheckpointError("the note has no signature lines")
    if not block.endswith("\n"):
        raise CheckpointError("the note's last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(
            f"the note has {len(lines)} signature lines, more than the {MAX_SIGNATURES} allowed"
        )
    signatures = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIGNATURE_PREFIX):
            raise CheckpointError(
                f"signature line {number} does not start with an em dash and a space: {line[:80]!r}"
            )
        fields = line[len(_SIGNATURE_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise CheckpointError(f"signature line {number} is not '— <key name> <base64 signature>'")
        name, signature_base64 = fields
        try:
            check_key_name(name)
        except CheckpointError as error:
            raise CheckpointError(f"signature line {number}: {error}") from None
        blob = _unbase64(signature_base64, f"signature line {number}")
        if len(blob) < 5:
            raise CheckpointError(f"signature line {number} is too short to hold a key id and a signature")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    return text, signatures


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note of `text` (ending in a newline) with one Ed25519 signature by `private_key` under key
    `name` (c2sp.org/signed-note)."""
    _check_note_text(text)
    blob = key_id(name, _raw_public_key(private_key)) + private_key.sign(text.encode("utf-8"))
    return f"{text}\n{_SIGNATURE_PREFIX}{name} {_base64(blob)}\n"


def open_note(note: str, name: str, public_key: bytes) -> str:
    """The text of a signed note after checking its signature by the Ed25519 key (name, public_key); signatures
    by other keys are ignored. CheckpointError if the note is malformed, carries no signature or more than one
    by that key, or that signature does not verify."""
    text, signatures = split_note(note)
    wanted_id = key_id(name, public_key)
    label = f"{name}+{wanted_id.hex()}"
    mine = [signature for signature in signatures if signature.name == name and signature.key_id == wanted_id]
    if not mine:
        raise CheckpointError(f"the note is not signed by key {label}")
    if len(mine) > 1:
        raise CheckpointError(f"the note carries {len(mine)} signatures by key {label}")
    signature = mine[0].signature
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise CheckpointError(
            f"the signature by key {label} is {len(signature)} bytes, not an Ed25519 signature"
        )
    ed25519 = ed25519_module()
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, text.encode("utf-8"))
    except InvalidSignature:
        raise CheckpointError(f"the signature by key {label} does not verify") from None
    return text


def _raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ------------------------------------------------------------------------------------------------ checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head (c2sp.org/tlog-checkpoint): origin, tree size, RFC 6962 root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise CheckpointError("a checkpoint origin is one non-empty line")
        _check_text(self.origin, "the checkpoint origin")
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise CheckpointError(f"checkpoint tree size {self.size!r} is not an integer in 0..2^64-1")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise CheckpointError(f"a checkpoint root hash is {ROOT_SIZE} bytes")
        for extension in self.extensions:
            if not isinstance(extension, str) or not extension or "\n" in extension:
                raise CheckpointError("checkpoint extension lines are non-empty single lines")
            _check_text(extension, "a checkpoint extension line")

    def body(self) -> str:
        """The note text: origin, size and base64 root hash, then the extension lines, each ending in a newline."""
        lines = [self.origin, str(self.size), _base64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """The checkpoint a note text holds; CheckpointError naming the line that is malformed."""
    _check_note_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(
            f"a checkpoint has at least 3 lines (origin, size, root), this one {len(lines)}"
        )
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("the checkpoint origin (line 1) is empty")
    if not _TREE_SIZE.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise CheckpointError(f"the checkpoint tree size (line 2) is not a decimal size: {size_text[:40]!r}")
    root = _unbase64(root_text, "the checkpoint root hash (line 3)")
    if len(root) != ROOT_SIZE or _base64(root) != root_text:
        raise CheckpointError(f"the checkpoint root hash (line 3) is not a base64 {ROOT_SIZE}-byte hash")
    if any(not line for line in extensions):
        raise CheckpointError("the checkpoint has an empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note of a checkpoint: its body signed with Ed25519 under key `name`."""
    return sign_note(checkpoint.body(), name, private_key)


def open_checkpoint(note: str, name: str, public_key: bytes) -> Checkpoint:
    """The checkpoint in a signed note, after checking its signature by the Ed25519 key (name, public_key);
    signatures by other keys (witness cosignatures) are ignored. CheckpointError saying what is wrong."""
    return parse_checkpoint_body(open_note(note, name, public_key))


def read_checkpoint(note: str) -> Checkpoint:
    """The checkpoint in a signed note, parsed (form and signature lines) without checking any signature."""
    text, _ = split_note(note)
    return parse_checkpoint_body(text)
