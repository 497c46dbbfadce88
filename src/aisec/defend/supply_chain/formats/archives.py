"""Containers: zip (PyTorch checkpoints, TorchScript, .npz, .keras), tar, and compressed streams.

Zip members are read the way PyTorch's reader (miniz, caffe2/serialize/inline_container.cc) reads them:
through the central directory, at the local header's data offset, ignoring CRCs and flag bits (an
"encrypted" member is read as plain bytes). Python's `zipfile` refuses such members and, for two members
of one name, returns the last where PyTorch takes the first; so we use `zipfile` only to parse the
central directory and read every entry ourselves, duplicates included. Decompression is streamed under
the scan's budget, so a zip bomb ends in a finding. Member names that leave the extraction folder and
links are findings (a loader that extracts the archive would write or read outside it).
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

from aisec.defend.supply_chain.context import LimitExceeded, ScanContext, Unparseable
from aisec.defend.supply_chain.limits import MIB

_CHUNK = 4 * MIB
_TENSOR_MEMBER = re.compile(r"^(?:.*/)?data/\d+$")
_TORCHSCRIPT_OP = re.compile(
    r"\btorch\.(?:ops\.(?!aten\b|prim\b|quantized\b|_quantized\b|profiler\b)\w+|classes\.\w+)"
)
_TORCHSCRIPT_FILE_OP = re.compile(r"\b(?:from_file|load_library|_load_for_lite_interpreter)\b")


class MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview, so `zipfile`/`tarfile` read without a copy."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def unsafe_member_name(name: str) -> bool:
    """Whether extracting a member of this name would leave the target folder."""
    normal = name.replace("\\", "/")
    return normal.startswith("/") or bool(re.match(r"^[A-Za-z]:", normal)) or ".." in normal.split("/")


def scan_zip(data: memoryview, ctx: ScanContext) -> str:
    """Every central-directory entry, read as PyTorch reads it; then the archive's kind (for the report)."""
    try:
        with zipfile.ZipFile(MemoryFile(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error, NotImplementedError) as error:
        raise Unparseable(f"zip central directory does not parse: {error}") from None
    ctx.budget.charge_members(len(entries))
    names = [e.filename for e in entries]
    is_torch = any(n.endswith("data.pkl") or n.endswith("constants.pkl") for n in names)
    kind = _zip_kind(names, is_torch)
    seen: set[str] = set()
    for entry in entries:
        if entry.filename in seen:
            ctx.add("AISEC-SC-103", f"two members are named {entry.filename!r}", entry.header_offset)
        seen.add(entry.filename)
        if unsafe_member_name(entry.filename):
            ctx.add(
                "AISEC-SC-101", f"member {entry.filename!r} leaves the extraction folder", entry.header_offset
            )
        if stat.S_ISLNK(entry.external_attr >> 16):
            ctx.add("AISEC-SC-102", f"member {entry.filename!r} is a symbolic link", entry.header_offset)
        if entry.filename.endswith("/"):  # (ZipInfo.is_dir fails on an empty name)
            continue
        if is_torch and _TENSOR_MEMBER.match(entry.filename):
            continue  # raw tensor storage: PyTorch reads it as bytes, never parses it
        _scan_zip_member(data, entry, ctx, "torchscript" if kind == "torchscript" else "")
    return kind


def _zip_kind(names: list[str], is_torch: bool) -> str:
    if is_torch:
        return "torchscript" if any("/code/" in n or n.startswith("code/") for n in names) else "pytorch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    if "config.json" in names and ("metadata.json" in names or "model.weights.h5" in names):
        return "keras"
    return "zip"


def _scan_zip_member(data: memoryview, entry: zipfile.ZipInfo, ctx: ScanContext, dialect: str) -> None:
    start = entry.header_offset
    if start + 30 > len(data) or bytes(data[start : start + 4]) != b"PK\x03\x04":
        ctx.child(entry.filename).add("AISEC-SC-001", "zip member's local header is missing or corrupt")
        return
    name_len, extra_len = struct.unpack_from("<HH", data, start + 26)
    begin = start + 30 + name_len + extra_len
    end = begin + entry.compress_size
    if end > len(data):
        ctx.child(entry.filename).add("AISEC-SC-001", "zip member is truncated")
        return
    raw = data[begin:end]
    if entry.flag_bits & 0x1:
        ctx.add(
            "AISEC-SC-104", f"member {entry.filename!r} is flagged encrypted; PyTorch reads it as plain bytes"
        )
    try:
        content = _decompress_member(raw, entry, ctx)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as error:
        ctx.child(entry.filename).add("AISEC-SC-001", f"zip member does not decompress: {error}")
        return
    if (zlib.crc32(content) & 0xFFFFFFFF) != entry.CRC:
        ctx.add("AISEC-SC-104", f"member {entry.filename!r} does not match its CRC; PyTorch ignores CRCs")
    child = ctx.child(entry.filename)
    child.pickle_dialect = dialect or ctx.pickle_dialect
    ctx.dispatch(content, child)
    if entry.filename.endswith(".py") and "code/" in entry.filename:
        _check_torchscript_code(content, child)


def _decompress_member(raw: memoryview, entry: zipfile.ZipInfo, ctx: ScanContext) -> memoryview:
    """The member's bytes (stored members are not copied); a truncated stream is an error."""
    if entry.compress_type == zipfile.ZIP_STORED:
        return raw
    content, _, complete = _inflate(raw, entry, ctx)
    if not complete:
        raise ValueError("the compressed stream is truncated")
    return content


def _inflate(raw: memoryview, entry: zipfile.ZipInfo, ctx: ScanContext) -> tuple[memoryview, int, bool]:
    if entry.compress_type == zipfile.ZIP_DEFLATED:
        return decompress(raw, ctx, lambda: zlib.decompressobj(-15))
    if entry.compress_type == zipfile.ZIP_BZIP2:
        return decompress(raw, ctx, bz2.BZ2Decompressor)
    if entry.compress_type == zipfile.ZIP_LZMA:
        if len(raw) < 4:
            raise ValueError("truncated LZMA header")
        (props_size,) = struct.unpack_from("<H", raw, 2)
        props = bytes(raw[4 : 4 + props_size])
        # private, as zipfile uses it; typeshed does not declare it
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]  # noqa: SLF001
        raw_lzma = raw[4 + props_size :]
        return decompress(raw_lzma, ctx, lambda: lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters))
    raise ValueError(f"compression method {entry.compress_type} is not supported")


def _check_torchscript_code(content: memoryview, ctx: ScanContext) -> None:
    """TorchScript cannot run arbitrary Python, but custom operators and classes load native code, and a
    few built-ins read files; flag those in the archive's code/ files."""
    text = str(content, "utf-8", "replace")
    for match in list(_TORCHSCRIPT_OP.finditer(text)) + list(_TORCHSCRIPT_FILE_OP.finditer(text)):
        ctx.add("AISEC-SC-801", f"TorchScript code uses {match.group(0)}", match.start())


def decompress(
    raw: memoryview, ctx: ScanContext, make: Callable[[], Any], limit: int | None = None
) -> tuple[memoryview, int, bool]:
    """Stream-decompress under the budget: returns (content, bytes left after the stream's end, whether the
    end marker was reached). Stops with LimitExceeded past the scan's total, or once past
    `max_small_unpacked` at a ratio above `max_ratio` (a zip bomb); with `limit`, stops after that many
    bytes (a stream of known size, as 7z's). Input is fed in chunks, so neither the compressed nor the
    decompressed side is ever copied whole more than once."""
    decompressor = make()
    limits = ctx.limits
    out = bytearray()
    pending = raw
    tail: bytes = b""  # zlib's unconsumed_tail: input it could not use because of max_length
    chunk: bytes | memoryview
    while not decompressor.eof:
        if tail:
            chunk, tail = tail, b""
        elif pending:
            chunk, pending = pending[:_CHUNK], pending[_CHUNK:]
        elif getattr(decompressor, "needs_input", True):
            break  # input exhausted before the end marker
        else:
            chunk = b""
        produced = decompressor.decompress(chunk, _CHUNK)
        tail = getattr(decompressor, "unconsumed_tail", b"")
        out += produced
        ctx.budget.charge_unpacked(len(produced))
        if len(out) > limits.max_small_unpacked and len(out) > limits.max_ratio * max(len(raw), 1):
            raise LimitExceeded(f"decompresses to more than {limits.max_ratio} times its size (a zip bomb?)")
        if limit is not None and len(out) >= limit:
            del out[limit:]
            break
        if not produced and not chunk and not tail:
            break
    unused = len(decompressor.unused_data) + len(pending) if decompressor.eof else 0
    return memoryview(out), unused, decompressor.eof


def scan_compressed(data: memoryview, ctx: ScanContext) -> str:
    """A gzip, bzip2, xz, raw-lzma ("lzma-alone") or zlib stream (joblib's compressors): decompress under
    the budget, then scan the content. Bytes after the end of the stream are a finding."""
    kind = sniff_compression(data)
    if kind is None:  # dispatch sends only what sniff_compression recognised
        raise Unparseable("not a gzip, bzip2, xz, lzma or zlib stream")
    makers: dict[str, Callable[[], Any]] = {
        "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
        "zlib": zlib.decompressobj,
        "bz2": bz2.BZ2Decompressor,
        "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
        "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    }
    try:
        content, unused, complete = decompress(data, ctx, makers[kind])
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as error:
        raise Unparseable(f"{kind} stream does not decompress: {error}") from None
    if not complete:
        ctx.add("AISEC-SC-001", f"the {kind} stream is truncated (no end marker); its content was scanned")
    if unused:
        ctx.add("AISEC-SC-006", f"{unused} bytes follow the end of the {kind} stream", len(data) - unused)
    inner = ctx.scan_nested(content, "decompressed", _strip_compression_suffix(ctx.name))
    return f"{kind}({inner})"


def _strip_compression_suffix(name: str) -> str:
    for suffix in (".gz", ".bz2", ".xz", ".lzma", ".z", ".zlib"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sniff_compression(data: memoryview) -> str | None:
    head = bytes(data[:6])
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    return None


def scan_tar(data: memoryview, ctx: ScanContext) -> None:
    """Every member of a (plain) tar archive; names that leave the folder and links are findings."""
    try:
        with tarfile.open(fileobj=MemoryFile(data), mode="r:") as archive:
            members = []
            for member in archive:
                ctx.budget.charge_members()
                members.append(member)
    except tarfile.TarError as error:
        raise Unparseable(f"tar archive does not parse: {error}") from None
    for member in members:
        if unsafe_member_name(member.name):
            ctx.add("AISEC-SC-101", f"member {member.name!r} leaves the extraction folder", member.offset)
        if member.issym() or member.islnk():
            ctx.add("AISEC-SC-102", f"member {member.name!r} links to {member.linkname!r}", member.offset)
        if not member.isfile():
            continue
        if member.offset_data + member.size > len(data):
            ctx.child(member.name).add("AISEC-SC-001", "tar member is truncated")
            continue
        ctx.scan_nested(data[member.offset_data : member.offset_data + member.size], member.name)
