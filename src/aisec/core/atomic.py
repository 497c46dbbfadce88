"""Writing a file so that readers see the old content or the new, never a part of it; and writing a key pair
that never overwrites a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from aisec.core.errors import BadInputError


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`: readers see the
    old file or the new one, never a part. The file gets `mode`; without it a new file gets 0644 and a replaced
    one keeps its mode. The temporary file is private (0600) until it replaces the file."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not path.parent.is_dir():
        raise BadInputError(f"no such folder: {path.parent}")
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise BadInputError(f"cannot write {path}: {(error.strerror or str(error))}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise BadInputError(f"cannot write {path}: {(error.strerror or str(error))}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_key_pair(private_path: Path, public_path: Path, private_pem: bytes, public_pem: bytes) -> None:
    """Write a new key pair: the private key with mode 0600, the public key 0644. Neither file may exist (a key
    is never overwritten, a link never followed); both appear whole, or neither does."""
    if os.path.abspath(private_path) == os.path.abspath(public_path):
        raise BadInputError(f"the private and the public key must be different files: {private_path}")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise BadInputError(f"{path} already exists; refusing to overwrite a key file")
        if not path.parent.is_dir():
            raise BadInputError(f"no such folder: {path.parent}")
    _create_exclusive(private_path, private_pem, 0o600)
    try:
        _create_exclusive(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data` and exactly `mode`, failing if it exists; the content appears whole (written
    to a temporary file first, then hard-linked into place, which fails rather than overwrite)."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise BadInputError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            raise BadInputError(f"{path} already exists; refusing to overwrite a key file") from None
        except OSError:  # a file system without hard links: create exclusively in place
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                raise BadInputError(f"{path} already exists; refusing to overwrite a key file") from None
            with os.fdopen(out, "wb") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:
        raise BadInputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
