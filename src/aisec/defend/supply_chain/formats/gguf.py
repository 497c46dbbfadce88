"""GGUF files (llama.cpp, ggml): a header, typed metadata key/values, tensor infos, then aligned tensor data.

Parsed per the GGUF specification (ggml `docs/gguf.md`) and checked as ggml's reader does (`src/gguf.cpp`,
`gguf_init_from_file_impl`): versions 1 (32-bit counts and lengths) to 3 (64-bit; big-endian files are
recognised by their byte-swapped version); every metadata value of every type, arrays nested at most
`_MAX_ARRAY_DEPTH` deep; non-empty unique keys; `general.alignment` a power of two stored as uint32; tensor
names unique and shorter than 64 bytes, at most 4 dimensions, a known ggml type whose block size divides
the first dimension, offsets aligned, laid out back to back and inside the file. Malformed structure
raises `Unparseable`; a violation ggml refuses to load is AISEC-SC-501; bytes after the tensor data are
AISEC-SC-006. Every count is checked against the bytes left before it is used, so hostile lengths
(2**63) end at once. Chat templates (`tokenizer.chat_template`, `tokenizer.chat_template.<name>`) are
rendered with Jinja2 by inference servers, some without a sandbox (llama-cpp-python before 0.2.72,
CVE-2024-34359; SGLang, CVE-2026-5760): they go to the template checker. Tensor data is never read.
"""

from __future__ import annotations

import struct

from aisec.defend.supply_chain.context import LimitExceeded, ScanContext, Unparseable

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: tensor names must be shorter
_MAX_ARRAY_DEPTH = 4  # the spec allows nested arrays; ggml reads none, real files have none
_MAX_REPORTED = 20  # problems reported one by one; the rest are counted
_MAX_PADDING = 1 << 16  # padding gaps up to this size are checked for zeros
_STRING, _ARRAY, _UINT32, _BOOL = 8, 9, 4, 7
# gguf_metadata_value_type -> struct format of the fixed-size types.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
# ggml_type -> (elements per block, bytes per block), from ggml's type_traits.
GGML_TYPES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
              9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
              15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
              21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
              28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
              41: (128, 18), 42: (64, 18)}  # fmt: skip


def looks_like_gguf(data: memoryview) -> bool:
    """The GGUF magic."""
    return bytes(data[:4]) == MAGIC


class _Reader:
    """Reads header fields in order, never past the end of the data nor past the header limit."""

    def __init__(self, data: memoryview, ctx: ScanContext) -> None:
        self.data, self.pos, self.limit = data, 4, ctx.limits.max_header_bytes
        (version_le,) = struct.unpack_from("<I", data, 4)
        self.endian = ">" if version_le and not version_le & 0xFFFF else "<"  # big-endian v3: byte-swapped
        self.version = int(self.scalar("I"))
        if self.version not in (1, 2, 3):
            raise Unparseable(f"GGUF version {self.version} is not 1, 2 or 3", 4)
        self.wide, self.width = ("I", 4) if self.version == 1 else ("Q", 8)  # v1: 32-bit counts and lengths

    def take(self, n: int) -> int:
        """Skip `n` bytes; returns where they start."""
        start = self.pos
        if n > len(self.data) - start:
            raise Unparseable(
                f"GGUF field of {n} bytes at offset {start} runs past the end of the file", start
            )
        if start + n > self.limit:
            raise LimitExceeded(f"GGUF header longer than the {self.limit}-byte limit")
        self.pos += n
        return start

    def scalar(self, fmt: str) -> int | float:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(self.endian + fmt, self.data, start)[0]

    def count(self, what: str, min_size: int) -> int:
        """A length or count, checked against the bytes left (each item takes at least `min_size`)."""
        at = self.pos
        n = int(self.scalar(self.wide))
        if n * min_size > len(self.data) - self.pos:
            raise Unparseable(f"GGUF {what} {n} at offset {at} exceeds the rest of the file", at)
        return n

    def string(self) -> tuple[int, bytes]:
        """A length-prefixed string (keys, names, templates): where it starts, and its bytes."""
        start = self.take(self.count("string length", 1))
        return start, bytes(self.data[start : self.pos])

    def skip_strings(self, n: int) -> None:
        """Skip `n` strings (a vocabulary of 10**5 tokens) without building them."""
        length, data, pos, width = struct.Struct(self.endian + self.wide), self.data, self.pos, self.width
        stop = min(len(data), self.limit)
        for _ in range(n):
            if pos + width > stop:
                pos += width
                break
            pos += width + length.unpack_from(data, pos)[0]
            if pos > stop:
                break
        self.take(pos - self.pos)  # raises if the strings ran past the file or the header limit


def scan_gguf(data: memoryview, ctx: ScanContext) -> None:
    """Parse the header, metadata and tensor infos; check templates, alignment and the tensor layout."""
    if len(data) < 8:
        raise Unparseable("GGUF file shorter than its magic and version")
    r = _Reader(data, ctx)
    n_tensors = r.count("tensor count", r.width + 1 + 4 + 4 + 8)
    n_kv = r.count("metadata count", r.width + 1 + 4 + 1)
    problems: list[tuple[str, int]] = []
    alignment = _read_metadata(r, n_kv, ctx, problems)
    names: set[bytes] = set()
    tensors = [_read_tensor_info(r, alignment, problems, names) for _ in range(n_tensors)]
    header_end = r.pos
    data_start = _align(header_end, alignment)
    if n_tensors and data_start > len(data):
        raise Unparseable(
            f"GGUF tensor data would start at {data_start}, past the end of the file", header_end
        )
    gaps = [(header_end, min(data_start, len(data)))]
    end = _check_layout(tensors, data_start, alignment, len(data), problems, gaps)
    for message, offset in problems[:_MAX_REPORTED]:
        ctx.add("AISEC-SC-501", message, offset)
    if len(problems) > _MAX_REPORTED:
        ctx.add("AISEC-SC-501", f"{len(problems) - _MAX_REPORTED} more GGUF problems")
    if end is not None:
        _check_padding(data, gaps, alignment, ctx)
        if end < len(data):
            ctx.add("AISEC-SC-006", f"{len(data) - end} bytes follow the GGUF tensor data", end)


def _read_metadata(r: _Reader, n_kv: int, ctx: ScanContext, problems: list[tuple[str, int]]) -> int:
    """Read every key/value; check the chat templates; returns general.alignment (or the default)."""
    alignment, seen = DEFAULT_ALIGNMENT, set()
    for _ in range(n_kv):
        at, raw = r.string()
        key = raw.decode("utf-8", "replace")[:200]
        if not raw:
            raise Unparseable("GGUF metadata key is empty", at)
        if raw in seen:
            problems.append((f"duplicate metadata key {key!r}: readers disagree about which value wins", at))
        elif not raw.isascii() or len(raw) > 0xFFFF:
            problems.append((f"metadata key {key!r} is not ASCII of at most 65535 bytes", at))
        seen.add(raw)
        value_at = r.pos
        value_type = int(r.scalar("I"))
        if raw == b"general.alignment" and value_type == _UINT32:
            value = int(r.scalar("I"))
            if value and not value & (value - 1):
                alignment = value
            else:
                problems.append((f"general.alignment {value} is not a power of two", value_at))
        elif raw == b"tokenizer.chat_template" or raw.startswith(b"tokenizer.chat_template."):
            from aisec.defend.supply_chain.formats.templates import check_template  # jinja2: only when needed

            strings: list[tuple[int, bytes]] = []
            _read_value(r, value_type, problems, strings)
            if value_type != _STRING:
                problems.append((f"{key} is of GGUF type {value_type}, not a string", value_at))
            for i, (text_at, text) in enumerate(strings):
                where = f"metadata[{key}]" if value_type == _STRING else f"metadata[{key}][{i}]"
                try:
                    check_template(text.decode("utf-8"), ctx, where)
                except UnicodeDecodeError:
                    problems.append((f"{where} is not UTF-8", text_at))
        else:
            if raw == b"general.alignment":
                problems.append((f"general.alignment is of GGUF type {value_type}, not uint32", value_at))
            _read_value(r, value_type, problems, None)
    return alignment


def _read_value(
    r: _Reader,
    value_type: int,
    problems: list[tuple[str, int]],
    strings: list[tuple[int, bytes]] | None,
    depth: int = 0,
) -> None:
    """Skip one value of any type; collect its strings (with where they start) into `strings` if given."""
    at = r.pos
    if value_type in _SCALARS:
        value = r.scalar(_SCALARS[value_type])
        if value_type == _BOOL and value not in (0, 1):
            problems.append((f"boolean value {value} is neither 0 nor 1", at))
    elif value_type == _STRING:
        if strings is None:
            r.skip_strings(1)
        else:
            strings.append(r.string())
    elif value_type == _ARRAY:
        if depth == _MAX_ARRAY_DEPTH:
            raise Unparseable(f"GGUF arrays nested deeper than {_MAX_ARRAY_DEPTH}", at)
        item_type = int(r.scalar("I"))
        if item_type in _SCALARS:
            size = struct.calcsize(_SCALARS[item_type])
            start = r.take(r.count("array length", size) * size)
            if item_type == _BOOL and bytes(r.data[start : r.pos]).translate(None, b"\x00\x01"):
                problems.append(("boolean array holds values other than 0 and 1", start))
        elif item_type == _STRING and strings is None:
            r.skip_strings(r.count("array length", r.width))
        elif item_type in (_STRING, _ARRAY):
            n = r.count("array length", r.width if item_type == _STRING else 4 + r.width)
            for _ in range(n):
                _read_value(r, item_type, problems, strings, depth + 1)
        else:
            raise Unparseable(f"GGUF array item type {item_type} is not known", at)
    else:
        raise Unparseable(f"GGUF value type {value_type} is not known", at)


def _read_tensor_info(
    r: _Reader, alignment: int, problems: list[tuple[str, int]], names: set[bytes]
) -> tuple[str, int, int, int] | None:
    """One tensor info: (name, data offset, size in bytes, where the info starts), or None if invalid."""
    at, raw = r.string()
    name = raw.decode("utf-8", "replace")[:200]
    if len(raw) >= MAX_NAME:
        problems.append((f"tensor name {name!r} is {len(raw)} bytes long; ggml allows {MAX_NAME - 1}", at))
    if raw in names:
        problems.append((f"duplicate tensor name {name!r}", at))
    names.add(raw)
    n_dims = int(r.scalar("I"))
    if n_dims > MAX_DIMS:
        r.take(n_dims * r.width)
        dims = None
    else:
        dims = [int(r.scalar(r.wide)) for _ in range(n_dims)]
    ggml_type = int(r.scalar("I"))
    offset = int(r.scalar("Q"))
    if dims is None:
        problems.append((f"tensor {name!r} has {n_dims} dimensions; ggml allows {MAX_DIMS}", at))
        return None
    if ggml_type not in GGML_TYPES:
        problems.append((f"tensor {name!r} has unknown ggml type {ggml_type}", at))
        return None
    block, block_bytes = GGML_TYPES[ggml_type]
    numel = 1
    for dim in dims:
        numel *= dim
    if any(dim >= 2**63 for dim in dims) or numel >= 2**63:
        problems.append((f"tensor {name!r} has shape {dims}, too many elements", at))
        return None
    if (dims[0] if dims else 1) % block:
        problems.append(
            (f"tensor {name!r}: first dimension of {dims} is not a multiple of the block size {block}", at)
        )
        return None
    if offset % alignment:
        problems.append(
            (f"tensor {name!r} data offset {offset} is not a multiple of the alignment {alignment}", at)
        )
    return name, offset, numel // block * block_bytes, at


def _align(offset: int, alignment: int) -> int:
    return offset + (alignment - offset % alignment) % alignment


def _check_layout(
    tensors: list[tuple[str, int, int, int] | None],
    data_start: int,
    alignment: int,
    size: int,
    problems: list[tuple[str, int]],
    gaps: list[tuple[int, int]],
) -> int | None:
    """ggml reads tensors back to back, each padded to the alignment: anything else overlaps or hides
    data. Collects the padding after each tensor into `gaps`; returns where the tensor data ends, or None
    when the layout is not the one ggml expects (then padding and trailing bytes are not checked)."""
    expected, ok = 0, all(tensor is not None for tensor in tensors)
    for tensor in tensors:
        if tensor is None:
            continue
        name, offset, nbytes, at = tensor
        if offset != expected:
            ok = False
            problems.append((f"tensor {name!r} at data offset {offset}, where ggml expects {expected} "
                             "(tensors overlap, leave a gap or are out of order)", at))  # fmt: skip
        if data_start + offset + nbytes > size:
            ok = False
            problems.append((f"tensor {name!r} ({nbytes} bytes at {data_start + offset}) runs past the end of "
                             "the file", at))  # fmt: skip
        expected = offset + _align(nbytes, alignment)
        gaps.append((min(data_start + offset + nbytes, size), min(data_start + expected, size)))
    return data_start + expected if ok else None


def _check_padding(data: memoryview, gaps: list[tuple[int, int]], alignment: int, ctx: ScanContext) -> None:
    """The spec pads with 0x00 bytes: anything else in the padding is data no reader looks at."""
    dirty = [
        start
        for start, stop in gaps
        if 0 < stop - start <= _MAX_PADDING and bytes(data[start:stop]).strip(b"\0")
    ]
    if dirty:
        ctx.add("AISEC-SC-006", f"{len(dirty)} alignment paddings hold non-zero bytes", dirty[0])
    if alignment > _MAX_PADDING and len(gaps) > 1:
        ctx.add("AISEC-SC-006", f"general.alignment {alignment} leaves up to {alignment - 1} bytes of unchecked "
                "padding after each tensor")  # fmt: skip
