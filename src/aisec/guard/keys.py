"""API keys for `aisec guard serve`, stored hashed in a JSON file (mode 0600, written atomically).

A token is `aisec_<key id: 12 hex digits>_<secret: 32 random bytes, URL-safe base64 without padding>`, drawn
from `secrets`; the file keeps only the SHA-256 of the whole token, so a leaked file lets nobody in. A fast
hash is the right one here: the secret has 256 random bits, so no guessing or dictionary attack can find a
token from its hash, however fast the hash. Slow hashes (bcrypt, scrypt, Argon2) exist to protect low-entropy,
human-chosen passwords and would only add a few milliseconds to every request. GitHub's and Stripe's API
tokens are checked the same way.

Authentication looks the key id up and compares the token's hash in constant time (`hmac.compare_digest`);
an unknown id is compared against a dummy hash too, so response times do not tell known ids from unknown ones.
A `KeyRing` re-reads the file when it has changed (`refresh`, which the service calls per request), so a
revocation takes effect on a running service at its next request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aisec.core.atomic import write_atomic
from aisec.core.errors import BadInputError

FORMAT = "aisec-guard-keys/1"
_FIELDS = ("name", "key_id", "sha256", "tier", "created", "revoked")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"aisec_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_MAX_HEADER = 256  # "Bearer " and a 62-character token, with room for stray spaces

logger = logging.getLogger("aisec.guard")

PathLike = str | os.PathLike[str]
# What identifies one version of the keys file: (st_mtime_ns, st_size, st_ino, st_ctime_ns).
_Signature = tuple[int, int, int, int]
_UNREADABLE: _Signature = (-1, -1, -1, -1)


@dataclass(frozen=True)
class ApiKey:
    """One API key as the service sees it: who holds it (`name`), its limits tier, and when it was created
    and revoked (ISO 8601 UTC; `revoked` is None while the key is active)."""

    name: str
    key_id: str
    tier: str
    created: str
    revoked: str | None


@dataclass(frozen=True)
class _Stored:
    key: ApiKey
    sha256: str


def add_key(path: PathLike, name: str, *, tier: str = "default") -> str:
    """Add a key named `name` in `tier` to the keys file at `path` (created with mode 0600 if absent) and
    return its token, which is shown once and stored nowhere. Refuses a name that an active key holds."""
    path = Path(path)
    _check_name("name", name)
    _check_name("tier", tier)
    with _editing(path):
        return _add(path, name, tier)


def _add(path: Path, name: str, tier: str) -> str:
    stored = _read(path, missing_ok=True)[0]
    if any(entry.key.name == name and entry.key.revoked is None for entry in stored):
        raise BadInputError(f"{path} already holds an active API key named {name!r}; revoke it first")
    ids = {entry.key.key_id for entry in stored}
    key_id = secrets.token_hex(6)
    while key_id in ids:
        key_id = secrets.token_hex(6)
    token = f"aisec_{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(name=name, key_id=key_id, tier=tier, created=_now(), revoked=None)
    _write(path, [*stored, _Stored(key, _hash(token))])
    return token


def revoke_key(path: PathLike, name: str) -> ApiKey:
    """Revoke the active key named `name` in the keys file at `path`; returns the key as revoked."""
    path = Path(path)
    with _editing(path):
        return _revoke(path, name)


def _revoke(path: Path, name: str) -> ApiKey:
    stored = _read(path, missing_ok=False)[0]
    named = [i for i, entry in enumerate(stored) if entry.key.name == name]
    active = [i for i in named if stored[i].key.revoked is None]
    if not named:
        raise BadInputError(f"{path} holds no API key named {name!r}")
    if not active:
        raise BadInputError(f"the API key named {name!r} in {path} is already revoked")
    index = active[0]
    revoked = replace(stored[index].key, revoked=_now())
    stored[index] = replace(stored[index], key=revoked)
    _write(path, stored)
    return revoked


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<keys file>.lock` while the file is read, changed and written, so that two
    `aisec guard key` commands at once cannot lose one's change (each write is atomic either way)."""
    if not path.parent.is_dir():
        raise BadInputError(f"no such folder: {path.parent}")
    lock = path.with_name(path.name + ".lock")
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise BadInputError(f"cannot lock {path}: {error.strerror or error}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def list_keys(path: PathLike) -> list[ApiKey]:
    """Every key in the keys file at `path`, revoked ones included, in the order they were added."""
    return [entry.key for entry in _read(Path(path), missing_ok=False)[0]]


class KeyRing:
    """The keys of one keys file, for authenticating requests: `refresh` re-reads the file when it has changed,
    `authenticate` never raises on what a client sends."""

    def __init__(self, path: Path, stored: list[_Stored], signature: _Signature) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._by_id = {entry.key.key_id: entry for entry in stored}
        self._signature = signature
        self._failed: _Signature | None = None  # the version of the file that last failed to load
        self._dummy = hashlib.sha256(secrets.token_bytes(32)).hexdigest()

    @classmethod
    def load(cls, path: PathLike) -> KeyRing:
        """Read the keys file at `path`; BadInputError naming the file if it is missing or malformed."""
        path = Path(path)
        stored, signature = _read(path, missing_ok=False)
        return cls(path, stored, signature)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def keys(self) -> list[ApiKey]:
        """The keys loaded now, revoked ones included."""
        return [entry.key for entry in self._by_id.values()]

    def refresh(self) -> bool:
        """Re-read the file if its (mtime_ns, size, inode, ctime_ns) changed; True when new keys were loaded.
        A file that cannot be read or parsed keeps the keys loaded before and logs one error (per version)."""
        try:
            signature = _signature(os.stat(self._path))
        except OSError as error:
            return self._keep(
                _UNREADABLE, f"cannot read the API keys file {self._path}: {error.strerror or error}"
            )
        if signature == self._signature:
            self._failed = None  # the loaded version is back: a later failure is news again
            return False
        if signature == self._failed:
            return False
        with self._lock:
            if signature == self._signature:  # another thread loaded it meanwhile
                return False
            try:
                stored, signature = _read(self._path, missing_ok=False)
            except BadInputError as error:
                return self._keep(signature, str(error))
            self._by_id = {entry.key.key_id: entry for entry in stored}
            self._signature = signature
            self._failed = None
        logger.info("guard: loaded %d API keys from %s", len(stored), self._path)
        return True

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The active key whose token the `Authorization: Bearer <token>` header carries, else None (no header,
        another scheme, a malformed token, an unknown or revoked key, a wrong secret). It reads no file: the
        service calls `refresh` before it, per request."""
        if not isinstance(authorization, str) or len(authorization) > _MAX_HEADER:
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        token = credentials.strip()
        match = _TOKEN.fullmatch(token)
        if scheme.lower() != "bearer" or match is None:
            return None
        entry = self._by_id.get(match.group(1))
        expected = self._dummy if entry is None else entry.sha256
        if not hmac.compare_digest(_hash(token), expected) or entry is None or entry.key.revoked is not None:
            return None
        return entry.key

    def _keep(self, signature: _Signature, reason: str) -> bool:
        if signature != self._failed:
            self._failed = signature
            logger.error("guard: %s; keeping the %d API keys loaded before", reason, len(self._by_id))
        return False


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise BadInputError(f"API key {field} {value!r}: use 1 to 64 of the characters A-Z a-z 0-9 _ . -")


def _signature(status: os.stat_result) -> _Signature:
    return (status.st_mtime_ns, status.st_size, status.st_ino, status.st_ctime_ns)


def _read(path: Path, *, missing_ok: bool) -> tuple[list[_Stored], _Signature]:
    """The keys in the file at `path` and the signature of the version read (from the open file, so that the
    two agree); an absent file is no keys when `missing_ok`."""
    try:
        with open(path, "rb") as handle:
            signature = _signature(os.fstat(handle.fileno()))
            raw = handle.read()
    except FileNotFoundError:
        if missing_ok:
            return [], _UNREADABLE
        raise BadInputError(f"no API keys file {path}; `aisec guard key add` creates one") from None
    except OSError as error:
        raise BadInputError(f"cannot read the API keys file {path}: {error.strerror or error}") from None
    return _parse(path, raw), signature


def _parse(path: Path, raw: bytes) -> list[_Stored]:
    try:
        document = json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise BadInputError(f"the API keys file {path} is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadInputError(f"{path} is not an API keys file (its 'format' is not {FORMAT!r})")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise BadInputError(f"{path}: 'keys' must be a list")
    stored = [_entry(path, number, entry) for number, entry in enumerate(entries)]
    ids: set[str] = set()
    active: set[str] = set()
    for entry in stored:
        if entry.key.key_id in ids:
            raise BadInputError(f"{path}: key id {entry.key.key_id} appears twice")
        ids.add(entry.key.key_id)
        if entry.key.revoked is None:
            if entry.key.name in active:
                raise BadInputError(f"{path}: two active keys are named {entry.key.name!r}")
            active.add(entry.key.name)
    return stored


def _entry(path: Path, number: int, entry: Any) -> _Stored:
    where = f"{path}: keys[{number}]"
    if not isinstance(entry, dict) or set(entry) != set(_FIELDS):
        raise BadInputError(f"{where} must be an object with exactly the fields {', '.join(_FIELDS)}")
    patterns = {"name": _NAME, "key_id": _KEY_ID, "sha256": _SHA256, "tier": _NAME}
    for field, pattern in patterns.items():
        if not isinstance(entry[field], str) or pattern.fullmatch(entry[field]) is None:
            raise BadInputError(f"{where}.{field} is malformed: {entry[field]!r}")
    if not isinstance(entry["created"], str):
        raise BadInputError(f"{where}.created must be a string")
    if entry["revoked"] is not None and not isinstance(entry["revoked"], str):
        raise BadInputError(f"{where}.revoked must be a string or null")
    key = ApiKey(entry["name"], entry["key_id"], entry["tier"], entry["created"], entry["revoked"])
    return _Stored(key, entry["sha256"])


def _write(path: Path, stored: list[_Stored]) -> None:
    """Write the keys file atomically with mode 0600 (its content never exists under a wider mode: the
    temporary file is private until it replaces the file)."""
    document = {
        "format": FORMAT,
        "keys": [
            {
                "name": entry.key.name,
                "key_id": entry.key.key_id,
                "sha256": entry.sha256,
                "tier": entry.key.tier,
                "created": entry.key.created,
                "revoked": entry.key.revoked,
            }
            for entry in stored
        ],
    }
    write_atomic(path, json.dumps(document, indent=2) + "\n", mode=0o600)
