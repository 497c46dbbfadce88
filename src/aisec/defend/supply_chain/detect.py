"""Recognise a model format by its bytes, never by its name; and what a file's extension claims it is."""

from __future__ import annotations

import re
from pathlib import PurePath

from aisec.defend.supply_chain.context import LimitExceeded, Unparseable
from aisec.defend.supply_chain.formats import archives, gguf, keras, onnx, safetensors
from aisec.defend.supply_chain.formats.numpy_files import MAGIC as NPY_MAGIC
from aisec.defend.supply_chain.formats.pickle_vm import Call, Global, simulate
from aisec.defend.supply_chain.formats.text import is_utf8_text
from aisec.defend.supply_chain.limits import ScanLimits

# Bytes that may start a protocol 0/1 pickle (a PROTO opcode starts every protocol 2+ pickle).
_PICKLE_START = frozenset(b"(.012FIJKLMNPQRSTUVX]abcdeghijlopqrstu})GBC")
_IMAGES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_SEVEN_ZIP = b"7z\xbc\xaf\x27\x1c"
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
    if len(data) > 262 and bytes(data[257:262]) == b"ustar":
        return "tar"
    if head.startswith(_IMAGES):
        return "image"
    if keras.looks_like_json(data):
        return "json"
    if onnx.looks_like_onnx(data):
        return "onnx"
    if is_utf8_text(bytes(data[: 1 << 16])):
        return "text"
    return "unknown"


class _Recorder:
    """Observer for a trial parse: notes whether the stream imports or calls anything."""

    def __init__(self) -> None:
        self.active = False

    def on_global(self, value: Global) -> None:
        # Only an importable name makes a difference: text such as TorchScript's "class Linear(Module):"
        # starts with the GLOBAL opcode 'c' but names no module the unpickler could import.
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
    """A protocol 0/1 pickle has no magic: it is one if it parses to STOP, or if it imports or calls
    something before it breaks (the real unpickler would have run that part)."""
    recorder = _Recorder()
    try:
        simulate(data, 0, recorder, ScanLimits(max_pickle_opcodes=1_000_000))
    except (Unparseable, LimitExceeded):
        return recorder.active
    return True


def extension_mismatch(name: str, fmt: str) -> str | None:
    """The rule broken when a file's extension promises another format: AISEC-SC-005 when a code-free
    extension hides a code-capable format, AISEC-SC-004 for any other lie; None when consistent."""
    suffix = PurePath(name).suffix.lower()
    expected = _DATA_EXTENSIONS.get(suffix)
    if expected is None or fmt in expected or fmt == "empty":
        return None
    carries_code = any(part in CODE_FORMATS for part in re.split(r"[()]", fmt))
    return "AISEC-SC-005" if carries_code else "AISEC-SC-004"
