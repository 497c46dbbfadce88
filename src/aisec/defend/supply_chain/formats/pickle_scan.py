"""Pickle-based files: raw pickles (protocols 0-5), joblib dumps and PyTorch's legacy stacked-pickle format.

Each stream is simulated by `pickle_vm.simulate`; `PolicyObserver` turns what it imports and calls into
findings (`pickle_policy`), scans payloads passed to nested loaders, and walks the raw bytes that joblib
and legacy PyTorch write between or after their pickles, exactly as their loaders read them, so that
nothing after the first STOP goes unread:

* joblib (>= 0.10): after the BUILD of each `NumpyArrayWrapper`, joblib reads the array inline: for an
  object dtype a nested pickle stream, otherwise an alignment byte, padding and `prod(shape) * itemsize`
  raw bytes (joblib/numpy_pickle.py, `NumpyArrayWrapper.read_array`);
* legacy PyTorch (torch.save with `_use_new_zipfile_serialization=False`): five pickles (magic number,
  protocol version, system info, the object, the storage keys), then per key an int64 element count and
  the storage's bytes (torch/serialization.py, `_legacy_load`).
"""

from __future__ import annotations

import codecs
import math
import re
import struct
from typing import Any

from aisec.defend.supply_chain.context import ScanContext, Unparseable
from aisec.defend.supply_chain.formats import pickle_policy
from aisec.defend.supply_chain.formats.pickle_policy import Risk
from aisec.defend.supply_chain.formats.pickle_vm import (
    PERSISTENT_LOAD,
    Blob,
    Call,
    Container,
    Global,
    blob_bytes,
    blobs_in,
    simulate,
)

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
_STORAGE_ELEMENT_SIZE = {
    "ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1, "QUInt8Storage": 1, "QInt8Storage": 1,
    "QUInt4x2Storage": 1, "QUInt2x4Storage": 1, "UntypedStorage": 1, "ShortStorage": 2, "HalfStorage": 2,
    "BFloat16Storage": 2, "IntStorage": 4, "FloatStorage": 4, "QInt32Storage": 4, "LongStorage": 8,
    "DoubleStorage": 8, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip
_DESCR = re.compile(r"[a-zA-Z?]\d*(\[\w+\])?")  # a built-in or flexible dtype's descr, e.g. "f8", "U40", "M8"
_TEXT_CODECS = frozenset(
    "rot13 rot_13 latin1 latin_1 latin-1 iso8859_1 utf8 utf_8 utf-8 ascii us_ascii unicode_escape "
    "raw_unicode_escape".split()
)


class PolicyObserver:
    """Applies the global policy to one pickle stream and collects what the format walkers need."""

    def __init__(self, data: memoryview, ctx: ScanContext) -> None:
        self.data = data
        self.ctx = ctx
        self.reported: set[tuple[str, str]] = set()
        self.storage_sizes: dict[str, int] = {}  # legacy torch: storage key -> element size
        self.globals_seen = 0
        self.joblib_arrays = 0

    def on_global(self, value: Global) -> None:
        self.globals_seen += 1
        risk = pickle_policy.classify(value, torchscript=self.ctx.pickle_dialect == "torchscript")
        if risk is Risk.ALLOWED or (value.module, value.name) in self.reported:
            return
        self.reported.add((value.module, value.name))
        if risk is Risk.DANGEROUS:
            self.ctx.add("AISEC-SC-201", f"imports {value.path}, which can run code on load", value.offset)
        else:
            self.ctx.add(
                "AISEC-SC-202", f"imports {value.path}, which is not on the allow list", value.offset
            )

    def on_dynamic_global(self, module: Any, name: Any, offset: int) -> Global | None:
        self.globals_seen += 1
        m, n = _constant_text(module, self.data), _constant_text(name, self.data)
        if m is None or n is None:
            self.ctx.add("AISEC-SC-203", "STACK_GLOBAL with a module or name computed at load time", offset)
            return None
        resolved = Global(m, n, offset)
        self.ctx.add(
            "AISEC-SC-203", f"STACK_GLOBAL with a name computed at load time: {resolved.path}", offset
        )
        self.on_global(resolved)
        return resolved

    def on_extension(self, code: int, offset: int) -> None:
        self.globals_seen += 1
        self.ctx.add("AISEC-SC-204", f"loads extension code {code} from the copyreg registry", offset)

    def on_call(self, call: Call) -> None:
        func = call.func
        if func is PERSISTENT_LOAD:
            self._record_storage(call.args)
            return
        if isinstance(func, Global) and f"{func.module}.{func.name}" in pickle_policy.NESTED_LOADERS:
            for blob in blobs_in(call.args):
                self.ctx.budget.charge_nested_payload()
                self.ctx.add(
                    "AISEC-SC-205",
                    f"passes {blob.length} bytes to {func.path}; scanned as a payload",
                    call.offset,
                )
                self.ctx.scan_nested(blob_bytes(self.data, blob), f"payload@{blob.offset}")

    def on_build(self, target: Any, state: Any, offset: int, pos: int) -> int | None:
        if isinstance(target, Global):
            self.ctx.add("AISEC-SC-206", f"BUILD sets attributes of {target.path}", offset)
            return None
        if (
            isinstance(target, Call)
            and isinstance(target.func, Global)
            and target.func.path == _JOBLIB_WRAPPER
        ):
            return self._skip_joblib_array(state, offset, pos)
        return None

    def _record_storage(self, pid: Any) -> None:
        """Legacy torch pid: ('storage', torch.<Type>Storage, key, location, numel[, view])."""
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[2], str):
            storage_type = pid[1]
            if isinstance(storage_type, Global) and storage_type.name in _STORAGE_ELEMENT_SIZE:
                self.storage_sizes[pid[2]] = _STORAGE_ELEMENT_SIZE[storage_type.name]

    def _skip_joblib_array(self, state: Any, offset: int, pos: int) -> int:
        """Where joblib's reader of this array stops: after its nested pickle, or its padding and data."""
        self.joblib_arrays += 1
        fields = state.as_dict() if isinstance(state, Container) and state.kind == "dict" else {}
        shape, dtype = fields.get("shape"), fields.get("dtype")
        layout = _dtype_layout(dtype)
        if (
            not isinstance(shape, tuple)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or layout is None
        ):
            raise Unparseable("joblib array wrapper with a shape or dtype this scanner cannot size", offset)
        itemsize, has_object = layout
        if has_object:
            end, _, _ = simulate(self.data, pos, self, self.ctx.limits)
            return end
        if fields.get("numpy_array_alignment_bytes") is not None:
            if pos >= len(self.data):
                raise Unparseable("joblib array truncated before its padding byte", pos)
            pos += 1 + self.data[pos]
        end = pos + math.prod(shape) * itemsize
        if end > len(self.data):
            raise Unparseable(f"joblib array data truncated ({math.prod(shape)} x {itemsize} bytes)", pos)
        return end


def scan_pickle(data: memoryview, ctx: ScanContext) -> str:
    """Scan every pickle stream in `data` and the raw bytes the loaders read between them; returns
    "pytorch-legacy", "joblib" or "pickle"."""
    observer = PolicyObserver(data, ctx)
    end, value, _ = simulate(data, 0, observer, ctx.limits)
    kind = "pickle"
    if value == LEGACY_TORCH_MAGIC and end < len(data):
        end = _scan_legacy_torch(data, end, observer, ctx)
        kind = "pytorch-legacy"
    _scan_trailing(data, end, observer, ctx)
    return "joblib" if observer.joblib_arrays and kind == "pickle" else kind


def _scan_legacy_torch(data: memoryview, pos: int, observer: PolicyObserver, ctx: ScanContext) -> int:
    """The four pickles after the magic number, then the storages they declare."""
    keys: Any = None
    for _ in range(4):
        pos, keys, _ = simulate(data, pos, observer, ctx.limits)
    if not isinstance(keys, Container) or keys.kind != "list" or keys.size != len(keys.items):
        raise Unparseable("legacy PyTorch file without a list of storage keys", pos)
    for key in keys.items:
        size = observer.storage_sizes.get(key) if isinstance(key, str) else None
        if size is None:
            raise Unparseable(f"legacy PyTorch storage {key!r} is not declared by the pickle", pos)
        if pos + 8 > len(data):
            raise Unparseable(f"legacy PyTorch storage {key!r} truncated", pos)
        (numel,) = struct.unpack_from("<q", data, pos)
        pos += 8 + numel * size
        if numel < 0 or pos > len(data):
            raise Unparseable(f"legacy PyTorch storage {key!r} truncated or of negative size", pos)
    return pos


def _scan_trailing(data: memoryview, pos: int, observer: PolicyObserver, ctx: ScanContext) -> None:
    """Bytes after the last stream: pickle.load ignores them, a second load reads them. Scan them as
    further pickles while they parse, and report what is left."""
    while pos < len(data):
        ctx.add("AISEC-SC-006", f"{len(data) - pos} bytes follow the end of the pickle", pos)
        before = observer.globals_seen
        try:
            pos, _, _ = simulate(data, pos, observer, ctx.limits)
        except Unparseable:
            if observer.globals_seen > before:
                raise  # the trailing bytes are a (broken) pickle that imports something
            return


def _constant_text(value: Any, data: memoryview) -> str | None:
    """A STACK_GLOBAL operand as text, evaluating the pure text codecs an attacker can reach through the
    allowed `_codecs.encode` (e.g. `_codecs.encode("bf", "rot13")` is "os"); None if not constant."""
    if isinstance(value, str):
        return value
    if isinstance(value, Blob) and value.length <= 4096:
        return str(blob_bytes(data, value), "latin-1")
    if isinstance(value, Call) and isinstance(value.func, Global) and isinstance(value.args, tuple):
        if value.func.path in ("_codecs.encode", "codecs.encode", "_codecs.decode", "codecs.decode"):
            texts = [_constant_text(a, data) for a in value.args]
            args = [a for a in texts if a is not None]
            if len(args) >= 1 and len(args) == len(texts):
                codec = (args[1] if len(args) > 1 else "utf-8").lower()
                if codec in _TEXT_CODECS:
                    try:
                        result = (
                            codecs.encode(args[0], codec)
                            if "encode" in value.func.name
                            # the stubs admit a str only with a literal codec name (rot13, unicode_escape)
                            else codecs.decode(args[0], codec)  # type: ignore[call-overload]
                        )
                    except (UnicodeError, TypeError, ValueError):
                        return None
                    return result if isinstance(result, str) else result.decode("latin-1")
    return None


def _dtype_layout(dtype: Any, depth: int = 0) -> tuple[int, bool] | None:
    """(itemsize, has_object) of a pickled numpy.dtype, as numpy rebuilds it: REDUCE numpy.dtype(descr, ...)
    then BUILD state (version, byteorder, subarray, names, fields, elsize, alignment, flags). numpy takes the
    size of a built-in type from the type ("i1" is one byte whatever the state says) and the size of a
    flexible one (U, S, V, and structured records) from the state's elsize."""
    if not (isinstance(dtype, Call) and isinstance(dtype.func, Global) and dtype.func.name == "dtype"):
        return None
    if not isinstance(dtype.args, tuple) or not dtype.args or not isinstance(dtype.args[0], str):
        return None
    descr, state = dtype.args[0], dtype.state
    if not _DESCR.fullmatch(descr):
        return None
    if descr[0] in "USV":
        if not (isinstance(state, tuple) and len(state) > 7 and isinstance(state[5], int) and state[5] > 0):
            return None
        if state[4] is None:
            return state[5], False
        return _structured_layout(state, depth)
    import numpy as np

    try:
        resolved = np.dtype(descr)
    except TypeError:
        return None
    return resolved.itemsize, resolved.hasobject


def _structured_layout(state: tuple[Any, ...], depth: int) -> tuple[int, bool] | None:
    """A record dtype: its elsize, and whether any field (or the state's HASOBJECT flag) holds objects.
    Either saying so counts (reading objects where joblib reads raw bytes only fails the scan). Every field
    must fit in the record."""
    fields, elsize, flags = state[4], state[5], state[7]
    if depth > 8 or not isinstance(fields, Container) or fields.kind != "dict" or not isinstance(flags, int):
        return None
    has_object = bool(flags & 1)
    for _, value in fields.items:
        if not (isinstance(value, tuple) and len(value) >= 2 and isinstance(value[1], int)):
            return None
        layout = _dtype_layout(value[0], depth + 1)
        if layout is None or value[1] < 0 or value[1] + layout[0] > elsize:
            return None
        has_object = has_object or layout[1]
    return elsize, has_object
