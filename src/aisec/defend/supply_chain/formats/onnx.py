"""ONNX models (`.onnx`): operator domains and external-data paths, read by our own protobuf walker.

Why not `onnx.load`: the scanner must not depend on the onnx package, and `onnx.load` parses the whole
message into memory, tensor payloads included (a multi-GB model costs its size again, a hostile length
can ask for more). This module walks the protobuf wire format itself (protobuf.dev/programming-guides/
encoding): it reads only the fields below and skips every other length-delimited field by offset, so
tensor data (`raw_data`, `float_data`, ...) is never copied and memory stays bounded whatever the file
size. Field numbers come from onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
TensorProto, SparseTensorProto, FunctionProto, TrainingInfoProto, OperatorSetIdProto).

What is checked (docs/Operators.md, docs/ExternalData.md):

* Operator domains, from `opset_import` (model and functions) and every `NodeProto.domain` of the main
  graph, of every subgraph in node attributes (`If`/`Loop`/`Scan` bodies: AttributeProto.g and .graphs),
  of training graphs and of model-local functions. The standard domains need nothing but an ONNX
  runtime; `com.microsoft` (and its sub-domains) are onnxruntime's contrib operators (AISEC-SC-602); any
  other domain needs a custom-op library, native code loaded into the process (AISEC-SC-601), unless a
  FunctionProto of the same model defines the operator (a local function, expanded from ONNX nodes).
* External data: a tensor with `data_location = EXTERNAL` names a file in `external_data["location"]`,
  which loaders resolve against the model's folder. A location that is absolute, holds a `..`
  component, a drive, a UNC share or a URL, or resolves (through symlinks) outside the model's folder
  reads any file the loading user can read: CVE-2022-25882 (onnx < 1.13, `..` locations),
  CVE-2024-27318 (onnx <= 1.15, its bypass through nested `subdir/../..` paths), CVE-2026-27489 and
  CVE-2026-34447 (onnx < 1.21, symlinks). (CVE-2024-27319, often cited with them, is an out-of-bounds
  read in onnx's assertion messages, not a path issue.) The location `*/_ORT_MEM_ADDR_/*` is
  onnxruntime's marker for weights already in memory (core/framework/tensorprotoutils.h): loaders that
  honour it in a file (OpenVINO's ONNX frontend) read the `offset` as a pointer, an arbitrary memory read
  (CWE-822). Such locations are AISEC-SC-603; the others are listed once in an AISEC-SC-604 note.

Malformed wire data (truncated fields, varints over 10 bytes, lengths past the data, a known field
with the wrong wire type, groups) raises `Unparseable` with its offset. Messages nested deeper than
protobuf's default recursion limit (100), which every protobuf-based loader refuses, end the scan with
`LimitExceeded`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aisec.defend.supply_chain.context import LimitExceeded, ScanContext, Unparseable

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5  # wire types; 3 and 4 (groups) are deprecated and unused by ONNX
_MAX_DEPTH = 100  # protobuf's default recursion limit (io/coded_stream.h)
_MAX_TEXT = 4096  # longest name, domain or path read (PATH_MAX on Linux); longer ones are cut
_MAX_LISTED = 20  # items named in one finding's message
_MAX_FINDINGS = 50  # findings of one rule per model; the rest are counted in one more finding
_MAX_IR_VERSION = 32  # IR version 12 is current (onnx 1.23); room for future versions

# ModelProto fields and their wire types, for the sniffer.
_MODEL_FIELDS = {1: _VARINT, 2: _LEN, 3: _LEN, 4: _LEN, 5: _VARINT, 6: _LEN, 7: _LEN, 8: _LEN, 14: _LEN,
                 20: _LEN, 25: _LEN, 26: _LEN}  # fmt: skip
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview",
                               "ai.onnx.preview.training"})  # fmt: skip
_CONTRIB_DOMAIN = "com.microsoft"
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"  # onnxruntime core/framework/tensorprotoutils.h
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|\\\\)")
_DRIVE = re.compile(r"^[A-Za-z]:")


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The base-128 varint at `pos` (at most 10 bytes, kept to 64 bits) and the offset after it."""
    start, result = pos, 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise Unparseable("truncated varint", start)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
    raise Unparseable("varint longer than 10 bytes", start)


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the message in data[start:end] as (number, wire type, a, b, offset): a varint's value
    in `a`; a length-delimited field's payload span in `a:b`; fixed-size fields are skipped (a = b = 0)."""
    pos = start
    while pos < end:
        offset = pos
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0 or number > 0x1FFF_FFFF:
            raise Unparseable(f"field number {number} is out of range", offset)
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, 0, offset
        elif wire == _LEN:
            length, pos = _varint(data, pos, end)
            if length > end - pos:
                raise Unparseable(
                    f"field {number} is {length} bytes long, past the end of its message", offset
                )
            yield number, wire, pos, pos + length, offset
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > end:
                raise Unparseable(f"fixed-size field {number} is truncated", offset)
            yield number, wire, 0, 0, offset
        else:
            raise Unparseable(
                f"field {number} has wire type {wire} (groups and types 6-7 are not ONNX)", offset
            )


def looks_like_onnx(data: memoryview) -> bool:
    """Whether `data` starts like a serialised ModelProto: its first fields (up to 16) are all ModelProto
    fields with their own wire types, and an IR version between 1 and 32 comes before the graph or an
    opset import (serialisers write fields in number order). Reads only field headers, never payloads."""
    seen_ir = False
    try:
        for count, (number, wire, value, _, _) in enumerate(_fields(data, 0, len(data))):
            if count >= 16 or _MODEL_FIELDS.get(number) != wire:
                return False
            if number == 1:
                if not 1 <= value <= _MAX_IR_VERSION:
                    return False
                seen_ir = True
            if number in (7, 8) and seen_ir:
                return True
    except Unparseable:
        return False
    return False


def scan_onnx(data: memoryview, ctx: ScanContext, *, base_dir: Path | None = None) -> None:
    """Walk the model (graphs, subgraphs, training graphs, functions) and report its operator domains and
    external-data files. `base_dir`, the model's folder on disk when known, lets symlinked external files
    be resolved; without it only the location strings are judged."""
    walk = _Walk(data)
    try:
        walk.model()
    finally:
        _report_domains(walk, ctx)
        _report_external(walk, ctx, base_dir)


@dataclass
class _Tensor:
    name: str = ""
    location: str = ""  # external_data["location"]
    is_external: bool = False  # data_location == EXTERNAL


@dataclass
class _Walk:
    """What the walk collects: domains with the offset of their first use, operator types per domain,
    model-local functions, and the tensors stored outside the file."""

    data: memoryview
    opset_domains: dict[str, int] = field(default_factory=dict)
    node_ops: dict[str, dict[str, int]] = field(default_factory=dict)
    functions: set[tuple[str, str]] = field(default_factory=set)
    external: list[tuple[_Tensor, int]] = field(default_factory=list)

    def _text(self, a: int, b: int) -> str:
        text = bytes(self.data[a : min(b, a + _MAX_TEXT)]).decode("utf-8", "replace")
        return text + "…" if b - a > _MAX_TEXT else text

    def _check(self, wire: int, expected: int, what: str, offset: int, depth: int = 0) -> None:
        if wire != expected:
            raise Unparseable(f"{what} has wire type {wire}, expected {expected}", offset)
        if depth > _MAX_DEPTH:
            raise LimitExceeded(f"ONNX messages nested deeper than {_MAX_DEPTH} (protobuf's recursion limit)")

    def model(self) -> None:
        for number, wire, a, b, offset in _fields(self.data, 0, len(self.data)):
            if number == 7:
                self._check(wire, _LEN, "ModelProto.graph", offset, 1)
                self.graph(a, b, 1)
            elif number == 8:
                self._check(wire, _LEN, "ModelProto.opset_import", offset, 1)
                self.opset(a, b)
            elif number == 20:
                self._check(wire, _LEN, "ModelProto.training_info", offset, 1)
                self.training_info(a, b, 1)
            elif number == 25:
                self._check(wire, _LEN, "ModelProto.functions", offset, 1)
                self.function(a, b, 1)

    def opset(self, start: int, end: int) -> None:
        domain = ""
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number == 1:
                self._check(wire, _LEN, "OperatorSetIdProto.domain", offset)
                domain = self._text(a, b)
        self.opset_domains.setdefault(domain, start)

    def training_info(self, start: int, end: int, depth: int) -> None:
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number in (1, 2):  # initialization, algorithm
                self._check(wire, _LEN, "TrainingInfoProto graph", offset, depth + 1)
                self.graph(a, b, depth + 1)

    def function(self, start: int, end: int, depth: int) -> None:
        name = domain = ""
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number == 1:
                self._check(wire, _LEN, "FunctionProto.name", offset)
                name = self._text(a, b)
            elif number == 10:
                self._check(wire, _LEN, "FunctionProto.domain", offset)
                domain = self._text(a, b)
            elif number == 7:
                self._check(wire, _LEN, "FunctionProto.node", offset, depth + 1)
                self.node(a, b, depth + 1)
            elif number == 9:
                self._check(wire, _LEN, "FunctionProto.opset_import", offset, depth + 1)
                self.opset(a, b)
            elif number == 11:
                self._check(wire, _LEN, "FunctionProto.attribute_proto", offset, depth + 1)
                self.attribute(a, b, depth + 1)
        self.functions.add((domain, name))

    def graph(self, start: int, end: int, depth: int) -> None:
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number == 1:
                self._check(wire, _LEN, "GraphProto.node", offset, depth + 1)
                self.node(a, b, depth + 1)
            elif number == 5:
                self._check(wire, _LEN, "GraphProto.initializer", offset, depth + 1)
                self.tensor(a, b)
            elif number == 15:
                self._check(wire, _LEN, "GraphProto.sparse_initializer", offset, depth + 1)
                self.sparse_tensor(a, b, depth + 1)

    def node(self, start: int, end: int, depth: int) -> None:
        op_type = domain = ""
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number == 4:
                self._check(wire, _LEN, "NodeProto.op_type", offset)
                op_type = self._text(a, b)
            elif number == 7:
                self._check(wire, _LEN, "NodeProto.domain", offset)
                domain = self._text(a, b)
            elif number == 5:
                self._check(wire, _LEN, "NodeProto.attribute", offset, depth + 1)
                self.attribute(a, b, depth + 1)
        self.node_ops.setdefault(domain, {}).setdefault(op_type, start)

    def attribute(self, start: int, end: int, depth: int) -> None:
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number in (5, 10):  # t, tensors
                self._check(wire, _LEN, "AttributeProto tensor", offset, depth + 1)
                self.tensor(a, b)
            elif number in (6, 11):  # g, graphs
                self._check(wire, _LEN, "AttributeProto graph", offset, depth + 1)
                self.graph(a, b, depth + 1)
            elif number in (22, 23):  # sparse_tensor, sparse_tensors
                self._check(wire, _LEN, "AttributeProto sparse tensor", offset, depth + 1)
                self.sparse_tensor(a, b, depth + 1)

    def sparse_tensor(self, start: int, end: int, depth: int) -> None:
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number in (1, 2):  # values, indices
                self._check(wire, _LEN, "SparseTensorProto tensor", offset, depth + 1)
                self.tensor(a, b)

    def tensor(self, start: int, end: int) -> None:
        """A TensorProto's name, data location and external-data entries; its data is skipped."""
        info = _Tensor()
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number == 8:
                self._check(wire, _LEN, "TensorProto.name", offset)
                info.name = self._text(a, b)
            elif number == 14:
                self._check(wire, _VARINT, "TensorProto.data_location", offset)
                info.is_external = a == _EXTERNAL
            elif number == 13:
                self._check(wire, _LEN, "TensorProto.external_data", offset)
                key, value = self._entry(a, b)
                if key == "location":
                    info.location = value  # the last entry wins, as in onnx's ExternalDataInfo
        if info.is_external:
            self.external.append((info, start))

    def _entry(self, start: int, end: int) -> tuple[str, str]:
        key = value = ""
        for number, wire, a, b, offset in _fields(self.data, start, end):
            if number in (1, 2):
                self._check(wire, _LEN, "StringStringEntryProto field", offset)
                if number == 1:
                    key = self._text(a, b)
                else:
                    value = self._text(a, b)
        return key, value


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _report_domains(walk: _Walk, ctx: ScanContext) -> None:
    """One finding per non-standard domain, naming its operators (AISEC-SC-601 / -602)."""
    function_domains = {domain for domain, _ in walk.functions}
    reported = {"AISEC-SC-601": 0, "AISEC-SC-602": 0}
    for domain in sorted(set(walk.opset_domains) | set(walk.node_ops)):
        if domain in _STANDARD_DOMAINS:
            continue
        ops = walk.node_ops.get(domain, {})
        custom = sorted(op for op in ops if (domain, op) not in walk.functions)
        if not custom and domain in function_domains:
            continue  # the domain of the model's own functions
        contrib = domain == _CONTRIB_DOMAIN or domain.startswith(_CONTRIB_DOMAIN + ".")
        rule = "AISEC-SC-602" if contrib else "AISEC-SC-601"
        reported[rule] += 1
        if reported[rule] > _MAX_FINDINGS:
            continue
        offset = ops[custom[0]] if custom else walk.opset_domains[domain]
        uses = f"operators {_listing(custom)}" if custom else "no node (declared in opset_import)"
        kind = "onnxruntime contrib" if contrib else "custom (needs a native custom-op library)"
        ctx.add(rule, f"{kind} domain {domain!r}: {uses}", offset)
    for rule, count in reported.items():
        if count > _MAX_FINDINGS:
            ctx.add(rule, f"{count - _MAX_FINDINGS} more domains like the above")


def _escape_reason(location: str, base_dir: Path | None) -> str | None:
    """Why reading `location` would leave the model's folder, or None when it stays inside."""
    if location == _ORT_MEMORY_TAG:
        return "onnxruntime's in-memory weights marker: loaders honouring it read the offset as a pointer"
    if _URL.match(location):
        return "a URL"
    if location.startswith(("\\\\", "//")):
        return "a UNC or network path"
    if location.startswith(("/", "\\")) or _DRIVE.match(location):
        return "an absolute path"
    if ".." in re.split(r"[/\\]", location):
        return "a '..' component (CVE-2022-25882, CVE-2024-27318)"
    if "\x00" in location:
        return "a NUL byte, where C loaders cut the path"
    if base_dir is not None:
        root = base_dir.resolve()
        try:
            target = (root / location).resolve()
        except (OSError, RuntimeError) as error:  # a symlink loop
            return f"a path that does not resolve ({error})"
        if not target.is_relative_to(root):
            return f"a link that resolves outside {base_dir} (CVE-2026-27489)"
    return None


def _report_external(walk: _Walk, ctx: ScanContext, base_dir: Path | None) -> None:
    """AISEC-SC-603 per escaping location; one AISEC-SC-604 note listing the files that stay inside."""
    tensors: dict[str, list[str]] = {}
    offsets: dict[str, int] = {}
    for info, offset in walk.external:
        tensors.setdefault(info.location, []).append(info.name)
        offsets.setdefault(info.location, offset)
    inside, escapes = [], 0
    for location, names in tensors.items():
        reason = _escape_reason(location, base_dir)
        if reason is None:
            inside.append(location)
            continue
        escapes += 1
        if escapes <= _MAX_FINDINGS:
            message = f"tensor(s) {_listing(names)} read external data from {location!r}: {reason}"
            ctx.add("AISEC-SC-603", message, offsets[location])
    if escapes > _MAX_FINDINGS:
        ctx.add("AISEC-SC-603", f"{escapes - _MAX_FINDINGS} more external-data locations leave the folder")
    if inside:
        count = sum(len(tensors[location]) for location in inside)
        files = _listing([repr(location) for location in sorted(inside)])
        ctx.add("AISEC-SC-604", f"{count} tensor(s) stored in {len(inside)} external file(s): {files}")
