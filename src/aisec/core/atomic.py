"""Writing a file so that readers see the old content or the new, never a part of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from aisec.core.errors import BadInputError


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`: readers see the
    old file or the new one, never a part. A new file gets mode 0644, a replaced one keeps its mode."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not path.parent.is_dir():
        raise BadInputError(f"no such folder: {path.parent}")
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
