"""safetensors files: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section.

Checked against the format description in huggingface/safetensors (README "Format") and its reference
loader (`safetensors/src/tensor.rs`, `read_metadata` and `Metadata::validate`): the header starts with `{`
and is padded with spaces only; keys are unique; `__metadata__` maps strings to strings; every tensor has a
known dtype (`Dtype`, sub-byte F4/F6 included), a shape of non-negative integers and `data_offsets`
[begin, end) inside the data section whose length is the shape's size in bytes; tensors do not overlap.
Violations are AISEC-SC-401 (the loader refuses most of them). "The byte buffer needs to be entirely
indexed, and cannot contain holes. This prevents the creation of polyglot files": bytes no tensor covers
are AISEC-SC-402. Only the header is read, never the tensor data.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from aisec.defend.supply_chain.context import LimitExceeded, ScanContext, Unparseable

# Bits per element of each dtype the reference implementation knows (tensor.rs `Dtype::bitsize`).
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}  # fmt: skip
LOADER_MAX_HEADER = 100_000_000  # tensor.rs MAX_HEADER_SIZE: the loader refuses a longer header
_USIZE_MAX = 2**64 - 1
_TENSOR_KEYS = ("dtype", "shape", "data_offsets")
_MAX_REPORTED = 20  # invalid entries reported one by one; the rest are counted


def looks_like_safetensors(data: memoryview) -> bool:
    """Cheap sniff: a header length that fits the file, and a header that starts with `{`."""
    if len(data) < 10:
        return False
    (n,) = struct.unpack_from("<Q", data, 0)
    return 2 <= n <= len(data) - 8 and data[8] == ord("{")


def scan_safetensors(data: memoryview, ctx: ScanContext) -> None:
    """Validate the header as the reference loader does; report uncovered bytes of the data section."""
    if len(data) < 8:
        raise Unparseable("safetensors file shorter than its 8-byte header length")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8:
        raise Unparseable(f"safetensors header length {n} exceeds the file ({len(data)} bytes)", 0)
    if n > ctx.limits.max_header_bytes:
        raise LimitExceeded(
            f"safetensors header of {n} bytes exceeds the {ctx.limits.max_header_bytes}-byte limit"
        )
    if n > LOADER_MAX_HEADER:
        ctx.add("AISEC-SC-401", f"header of {n} bytes exceeds the loader's {LOADER_MAX_HEADER}-byte limit", 0)
    header = _parse_header(bytes(data[8 : 8 + n]), ctx)
    body, body_len = 8 + n, len(data) - 8 - n
    spans: list[tuple[int, int, str]] = []
    problems: list[str] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                problems.append("__metadata__ must map strings to strings")
            continue
        span = _tensor_span(info, body_len)
        if isinstance(span, str):
            problems.append(f"tensor {name[:200]!r}: {span}")
        else:
            spans.append((*span, name))
    for problem in problems[:_MAX_REPORTED]:
        ctx.add("AISEC-SC-401", problem, 8)
    if len(problems) > _MAX_REPORTED:
        ctx.add("AISEC-SC-401", f"{len(problems) - _MAX_REPORTED} more invalid header entries", 8)
    _check_coverage(spans, body, body_len, ctx)


def _parse_header(raw: bytes, ctx: ScanContext) -> dict[str, Any]:
    """The header as a dict: UTF-8 JSON (no NaN/Infinity) that starts with `{`. Duplicate keys (readers
    disagree on which one wins) and padding other than spaces are AISEC-SC-401."""
    if not raw.startswith(b"{"):
        raise Unparseable("safetensors header does not start with '{'", 8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Unparseable(f"safetensors header is not UTF-8: {error}", 8 + error.start) from None
    duplicates: list[str] = []

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            key.encode("utf-8")  # a lone surrogate (\ud800) raises ValueError: serde_json refuses it too
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    try:
        header, end = json.JSONDecoder(object_pairs_hook=unique_keys, parse_constant=_no_constant).raw_decode(
            text
        )
    except (ValueError, RecursionError) as error:
        raise Unparseable(f"safetensors header is not valid JSON: {error}", 8) from None
    if not isinstance(header, dict):
        raise Unparseable("safetensors header is not a JSON object", 8)
    if duplicates:
        ctx.add("AISEC-SC-401", f"{len(duplicates)} duplicate keys in the header (first {duplicates[0][:200]!r}); "
                "readers disagree about which one they use", 8)  # fmt: skip
    padding = text[end:]
    if padding.strip(" "):
        where = 8 + len(text[:end].encode("utf-8"))
        ctx.add(
            "AISEC-SC-401",
            f"header is padded with {padding.strip(' ')[:40]!r}; only spaces are allowed",
            where,
        )
    return header


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _tensor_span(info: object, body_len: int) -> tuple[int, int] | str:
    """The tensor's [begin, end) in the data section, or what makes its entry invalid."""
    if not isinstance(info, dict) or any(key not in info for key in _TENSOR_KEYS):
        return "must be an object with dtype, shape and data_offsets"
    dtype, shape, offsets = (info[key] for key in _TENSOR_KEYS)
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return f"unknown dtype {str(dtype)[:40]!r}"
    if not isinstance(shape, list) or not all(_is_usize(d) for d in shape):
        return f"shape {str(shape)[:80]} is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_usize(o) for o in offsets)):
        return f"data_offsets {str(offsets)[:80]} is not a pair of non-negative integers"
    begin, end = offsets
    bits = _numel(shape) * DTYPE_BITS[dtype]
    if bits // 8 > _USIZE_MAX:
        return f"shape {str(shape)[:80]} overflows the size of a tensor"
    if bits % 8:
        return f"{bits} bits of {dtype} do not fill whole bytes"
    if begin > end:
        return f"data_offsets [{begin}, {end}] end before they begin"
    if end > body_len:
        return f"data_offsets [{begin}, {end}] run past the {body_len}-byte data section"
    if end - begin != bits // 8:
        return f"{end - begin} bytes for shape {str(shape)[:80]} of {dtype}, which takes {bits // 8}"
    return begin, end


def _numel(shape: list[int]) -> int:
    """The product of `shape`, stopping early once it overflows (a hostile shape has millions of dims)."""
    if 0 in shape:
        return 0
    total = 1
    for dim in shape:
        total *= dim
        if total > _USIZE_MAX:
            break
    return total


def _is_usize(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _USIZE_MAX


def _check_coverage(spans: list[tuple[int, int, str]], body: int, body_len: int, ctx: ScanContext) -> None:
    """Tensors must tile the data section: an overlap is invalid, a hole or a tail is hidden data."""
    covered, overlaps, holes = 0, 0, 0
    for begin, end, name in sorted(spans):
        if begin < covered:
            overlaps += 1
            if overlaps <= _MAX_REPORTED:
                ctx.add("AISEC-SC-401", f"tensor {name[:200]!r} [{begin}, {end}) overlaps another tensor",
                        body + begin)  # fmt: skip
        elif begin > covered:
            holes += 1
            if holes <= _MAX_REPORTED:
                ctx.add("AISEC-SC-402", f"{begin - covered} bytes before tensor {name[:200]!r} belong to no "
                        "tensor (the loader refuses holes)", body + covered)  # fmt: skip
        covered = max(covered, end)
    if overlaps > _MAX_REPORTED:
        ctx.add("AISEC-SC-401", f"{overlaps - _MAX_REPORTED} more overlapping tensors", body)
    if holes > _MAX_REPORTED:
        ctx.add("AISEC-SC-402", f"{holes - _MAX_REPORTED} more holes between tensors", body)
    if covered < body_len:
        ctx.add("AISEC-SC-402", f"{body_len - covered} bytes after the last tensor belong to no tensor "
                "(the loader refuses a data section it does not fully cover)", body + covered)  # fmt: skip
