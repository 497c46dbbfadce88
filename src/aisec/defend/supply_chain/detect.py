"""Recognise a model format by its bytes, never by its name; and what a file's extension claims it is."""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import PurePath

from aisec.defend.supply_chain.context import LimitExceeded, Unparseable
from aisec.defend.supply_chain.formats import archives, gguf, keras, onnx, safetensors
from aisec.defend.supply_chain.formats.archives import MemoryFile
from aisec.defend.supply_chain.formats.numpy_files import MAGIC as NPY_MAGIC
from aisec.defend.supply_chain.formats.pickle_vm import Call, Global, simulate
from aisec.defend.supply_chain.formats.text import is_utf8_text
from aisec.defend.supply_chain.limits import ScanLimits

# Bytes that may start a pickle without a PROTO opcode: every opcode.
_PICKLE_START = frozenset(op.code.encode("latin-1")[0] for op in pickletools.opcodes)
_IMAGES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_SEVEN_ZIP = b"7z\xbc\xaf\x27\x1c"
_SNIFF_LIMITS = ScanLimits(max_pickle_opcodes=1_000_000)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Formats that can run code when loaded, and extensions that promise a format that cannot.
CODE_FORMATS = frozenset({"pickle", "pytorch-zip", "pytorch-legacy", "torchscript", "joblib"})
_DATA_EXTENSIONS = {
    ".safetensors": {"safetensors"},
    ".npy": {"numpy"},
    ".npz": {"npz", "zip"},
    ".onnx": {"onnx"},
    ".gguf": {"gguf"},
    ".json": {"json"},
    ".h5": {"hdf5"},
    ".hdf5": {"hdf5"},
    ".keras": {"keras"},
    ".txt": {"text", "json"},
    ".md": {"text"},
}


def sniff(data: memoryview) -> str:
    """The format `data` is, from its leading bytes (and a trial parse for protocol 0/1 pickles)."""
    head = bytes(data[:16])
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "numpy"
    if head.startswith(_SEVEN_ZIP):
        return "7z"
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return "pickle"
    # Before the formats found at an offset or with loose magic (an HDF5 user block, a GGUF or safetensors
    # header): a protocol 0/1 pickle that imports something is what pickle.load would run, polyglot or not.
    if head[0] in _PICKLE_START and _parses_as_pickle(data):
        return "pickle"
    if gguf.looks_like_gguf(data):
        return "gguf"
    if keras.looks_like_hdf5(data):
        return "hdf5"
    if safetensors.looks_like_safetensors(data):
        return "safetensors"
    if archives.sniff_compression(data):
        return "compressed"
    if _looks_like_tar(data):
        return "tar"
    if _zip_at_end(data):
        return "zip"  # a zip with data in front (zipfile and PyTorch find it from its end)
    if head.startswith(_IMAGES):
        return "image"
    if keras.looks_like_json(data):
        return "json"
    if onnx.looks_like_onnx(data):
        return "onnx"
    if is_utf8_text(bytes(data[: 1 << 16])):
        return "text"
    return "unknown"


class _ImportRecorder:
    """Observer for the sniffing parse: notes whether the stream reaches an import or a call."""

    def __init__(self) -> None:
        self.active = False

    def on_global(self, value: Global) -> None:
        # Only an importable name counts: text such as TorchScript's "class Linear(Module):" starts with
        # GLOBAL's 'c' but names nothing the unpickler could import (it fails there, having run nothing).
        self.active = self.active or bool(_IDENTIFIER.match(value.module) and _IDENTIFIER.match(value.name))

    def on_dynamic_global(self, module: object, name: object, offset: int) -> Global | None:
        self.active = True
        return None

    def on_extension(self, code: int, offset: int) -> None:
        self.active = True

    def on_call(self, call: Call) -> None:
        self.active = True

    def on_build(self, target: object, state: object, offset: int, pos: int) -> int | None:
        return None


def _parses_as_pickle(data: memoryview) -> bool:
    """A protocol 0/1 pickle has no magic: the bytes are one if they parse to STOP, if they import or call
    something before they break (the real unpickler would have run that part), or if they are too long or
    deep to decide. The parse is at least as lenient as CPython's C unpickler (base-0 integers, frames not
    enforced), so bytes it rejects before an import are bytes `pickle.load` rejects before an import too.
    (CPython's own unpickler cannot be the judge: a LONG_BINPUT index makes it allocate its memo as an
    array of that size, gigabytes from a 20-byte input.)"""
    recorder = _ImportRecorder()
    try:
        simulate(data, 0, recorder, _SNIFF_LIMITS, enforce_frames=False)
    except LimitExceeded:
        return True
    except Unparseable:
        return recorder.active
    return True


def _looks_like_tar(data: memoryview) -> bool:
    """A tar header at offset 0 whose checksum holds, as `tarfile` checks it (old V7 headers have no "ustar"
    magic, and `torch.load` tries `tarfile.open` on legacy checkpoints)."""
    if len(data) < 512:
        return False
    header = bytes(data[:512])
    field = header[148:156].split(b"\0", 1)[0].strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + b" " * 8 + header[156:])
    return int(field, 8) in (unsigned, signed)


def _zip_at_end(data: memoryview) -> bool:
    """A zip whatever precedes it: an end-of-central-directory record in the last 64 KiB whose central
    directory parses (so four bytes that happen to match inside tensor data do not count)."""
    if bytes(data[-(65536 + 22) :]).rfind(b"PK\x05\x06") < 0:
        return False
    try:
        with zipfile.ZipFile(MemoryFile(data)) as archive:
            return bool(archive.infolist())
    except Exception:  # noqa: BLE001 - any failure: not a readable zip
        return False


def extension_mismatch(name: str, fmt: str) -> str | None:
    """The rule broken when a file's extension promises another format: AISEC-SC-005 when a code-free
    extension hides a code-capable format, AISEC-SC-004 for any other lie; None when consistent."""
    suffix = PurePath(name).suffix.lower()
    expected = _DATA_EXTENSIONS.get(suffix)
    if expected is None or fmt in expected or fmt == "empty":
        return None
    carries_code = any(part in CODE_FORMATS for part in re.split(r"[()]", fmt))
    return "AISEC-SC-005" if carries_code else "AISEC-SC-004"
