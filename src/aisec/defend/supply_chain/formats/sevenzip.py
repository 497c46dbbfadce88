"""7z archives, read with the standard library only (the format as 7-Zip's DOC/7zFormat.txt describes it).

A 7z file is a 32-byte signature header pointing at a *header* at the end of the file, which is either the
header itself or (the default since 7-Zip 4.x) an "encoded header": a description of packed streams whose
decoding is the header. The header lists *folders* (each a chain of coders turning one packed stream into
one unpacked stream, several files back to back in a solid archive), their *substreams* (the files' data)
and the files (names, empty-stream flags, attributes). We decode what a 7z reader decodes and hand every
file to `ctx.scan_nested`:

* coders: Copy, LZMA, LZMA2, Deflate, BZip2, and the Delta and BCJ filters (x86, PowerPC, IA64, ARM,
  ARM-Thumb, SPARC) where an LZMA or LZMA2 coder follows them, as 7-Zip writes them; `lzma`'s raw decoder
  runs the filter and the LZMA coder as one chain. Any other coder (7zAES, BCJ2, PPMd, Deflate64,
  ARM64, ...) or a folder that is not a single chain makes its files "not analysed" (AISEC-SC-105);
* every count is checked against the bytes left in the header and `ctx.limits` before a loop, headers
  against `max_header_bytes`, output against the declared sizes and the scan's decompression budget
  (`archives.decompress`: zip bombs end in AISEC-SC-003); LZMA dictionaries are allocated no larger than
  the output they may produce;
* names that leave the extraction folder, links (a Unix mode or a Windows reparse point in the attributes)
  and duplicate names are findings, CRC mismatches are AISEC-SC-104 (7-Zip reports them, the data is read).

`torch.load` never opens a 7z archive; 7z is read because models are shipped in them (picklescan scans them).
"""

from __future__ import annotations

import bz2
import lzma
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aisec.defend.supply_chain.context import LimitExceeded, ScanContext, Unparseable
from aisec.defend.supply_chain.formats.archives import decompress, unsafe_member_name

SIGNATURE = b"7z\xbc\xaf\x27\x1c"
_SIGNATURE_HEADER = 32
_MAX_ENCODED_HEADERS = 4  # an encoded header whose decoding is again an encoded header, and so on
_MAX_CODERS = 64  # per folder, and streams per folder (7-Zip's own bounds)

# Property ids (7zFormat.txt, "Property IDs").
_END, _HEADER, _ARCHIVE_PROPERTIES, _ADDITIONAL_STREAMS = 0x00, 0x01, 0x02, 0x03
_MAIN_STREAMS, _FILES_INFO, _PACK_INFO, _UNPACK_INFO = 0x04, 0x05, 0x06, 0x07
_SUBSTREAMS_INFO, _SIZE, _CRC, _FOLDER = 0x08, 0x09, 0x0A, 0x0B
_CODERS_UNPACK_SIZE, _NUM_UNPACK_STREAM, _EMPTY_STREAM, _EMPTY_FILE = 0x0C, 0x0D, 0x0E, 0x0F
_NAME, _ATTRIBUTES, _ENCODED_HEADER = 0x11, 0x15, 0x17

# Coder ids (7-Zip's DOC/Methods.txt).
_COPY, _LZMA, _LZMA2 = b"\x00", b"\x03\x01\x01", b"\x21"
_DEFLATE, _BZIP2, _DELTA = b"\x04\x01\x08", b"\x04\x02\x02", b"\x03"
_BCJ = {
    b"\x03\x03\x01\x03": lzma.FILTER_X86, b"\x04": lzma.FILTER_X86,
    b"\x03\x03\x02\x05": lzma.FILTER_POWERPC, b"\x05": lzma.FILTER_POWERPC,
    b"\x03\x03\x04\x01": lzma.FILTER_IA64, b"\x06": lzma.FILTER_IA64,
    b"\x03\x03\x05\x01": lzma.FILTER_ARM, b"\x07": lzma.FILTER_ARM,
    b"\x03\x03\x07\x01": lzma.FILTER_ARMTHUMB, b"\x08": lzma.FILTER_ARMTHUMB,
    b"\x03\x03\x08\x05": lzma.FILTER_SPARC, b"\x09": lzma.FILTER_SPARC,
}  # fmt: skip
_KNOWN_UNSUPPORTED = {
    b"\x06\xf1\x07\x01": "7zAES encryption", b"\x03\x03\x01\x1b": "BCJ2", b"\x03\x04\x01": "PPMd",
    b"\x04\x01\x09": "Deflate64", b"\x0a": "ARM64", b"\x0b": "RISC-V", b"\x04\xf7\x11\x01": "Zstandard",
}  # fmt: skip
_FILE_ATTRIBUTE_DIRECTORY = 0x10
_FILE_ATTRIBUTE_REPARSE_POINT = 0x400
_FILE_ATTRIBUTE_UNIX_EXTENSION = 0x8000


def looks_like_7z(data: memoryview) -> bool:
    return bytes(data[:6]) == SIGNATURE


class _Unsupported(Exception):
    """A folder uses a coder (or a coder graph) we do not decode: its files are not analysed."""


class _Reader:
    """A cursor over header bytes: 7z's variable-length NUMBER, fixed integers, bytes and bit vectors. Every
    read is bounded by the bytes left; `count` bounds a loop before it starts."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.left:
            raise Unparseable(f"7z header: {n} bytes wanted at offset {self.pos}, {self.left} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def number(self) -> int:
        """7z's NUMBER: the count of leading one bits of the first byte is the count of bytes that follow
        (little-endian); the first byte's remaining bits are the value's high bits."""
        first = self.byte()
        mask = 0x80
        value = 0
        for i in range(8):
            if not first & mask:
                return value | ((first & (mask - 1)) << (8 * i))
            value |= self.byte() << (8 * i)
            mask >>= 1
        return value

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def count(self, n: int, what: str, each: int = 1) -> int:
        """`n` items of at least `each` bytes must fit in what is left (so a loop over them is bounded)."""
        if n * each > self.left:
            raise Unparseable(f"7z header: {n} {what} cannot fit in the {self.left} bytes left")
        return n

    def bits(self, n: int) -> list[bool]:
        raw = self.take((n + 7) // 8)
        return [bool(raw[i >> 3] & (0x80 >> (i & 7))) for i in range(n)]

    def defined(self, n: int, each: int) -> list[bool]:
        """AllAreDefined, then (if 0) a bit vector of `n` items; `each` defined item takes that many bytes."""
        if self.byte():
            return [True] * self.count(n, "defined items", each)
        return self.bits(n)

    def skip_property(self) -> None:
        self.take(self.number())


@dataclass
class _Coder:
    method: bytes
    inputs: int
    outputs: int
    props: bytes


@dataclass
class _Folder:
    coders: list[_Coder]
    bind_pairs: list[tuple[int, int]]  # (in stream, out stream) of the folder
    packed: list[int]  # in streams fed by pack streams
    first_pack: int = 0  # index of its first pack stream in PackInfo
    unpack_sizes: list[int] = field(default_factory=list)  # per out stream
    crc: int | None = None

    def main_output(self) -> int:
        bound = {out for _, out in self.bind_pairs}
        free = [i for i in range(sum(c.outputs for c in self.coders)) if i not in bound]
        if len(free) != 1:
            raise Unparseable("7z folder: its coders do not have exactly one final output")
        return free[0]

    @property
    def size(self) -> int:
        return self.unpack_sizes[self.main_output()]


@dataclass
class _Streams:
    pack_pos: int = 0
    pack_sizes: list[int] = field(default_factory=list)
    folders: list[_Folder] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # every substream, folder by folder
    crcs: list[int | None] = field(default_factory=list)
    folder_of: list[int] = field(default_factory=list)  # the folder of each substream


def _read_digests(r: _Reader, n: int) -> list[int | None]:
    defined = r.defined(n, 4)
    return [r.uint32() if d else None for d in defined]


def _read_pack_info(r: _Reader, streams: _Streams) -> None:
    streams.pack_pos = r.number()
    n = r.count(r.number(), "pack streams")
    while (nid := r.byte()) != _SIZE:
        if nid == _END:
            raise Unparseable("7z pack info without sizes")
        r.skip_property()
    streams.pack_sizes = [r.number() for _ in range(n)]
    while (nid := r.byte()) != _END:
        if nid == _CRC:
            _read_digests(r, n)  # the packed streams' CRCs; the unpacked data's are the ones checked
        else:
            r.skip_property()


def _read_folder(r: _Reader) -> _Folder:
    coders = []
    for _ in range(r.count(r.number(), "coders", 2)):
        flags = r.byte()
        if flags & 0xC0:
            raise Unparseable("7z coder with alternative methods or reserved bits")
        method = r.take(flags & 0x0F)
        inputs, outputs = (r.number(), r.number()) if flags & 0x10 else (1, 1)
        props = r.take(r.number()) if flags & 0x20 else b""
        coders.append(_Coder(method, inputs, outputs, props))
    total_in, total_out = sum(c.inputs for c in coders), sum(c.outputs for c in coders)
    if not coders or len(coders) > _MAX_CODERS or total_in > _MAX_CODERS or not 0 < total_out <= _MAX_CODERS:
        raise Unparseable(f"7z folder with {len(coders)} coders, {total_in} inputs and {total_out} outputs")
    bind_pairs = [(r.number(), r.number()) for _ in range(total_out - 1)]
    n_packed = total_in - len(bind_pairs)
    if n_packed < 1:
        raise Unparseable("7z folder without a packed stream")
    if n_packed == 1:
        bound = {i for i, _ in bind_pairs}
        packed = [i for i in range(total_in) if i not in bound][:1]
    else:
        packed = [r.number() for _ in range(r.count(n_packed, "packed streams"))]
    if any(not (0 <= i < total_in and 0 <= o < total_out) for i, o in bind_pairs) or not packed:
        raise Unparseable("7z folder binds streams that do not exist")
    return _Folder(coders, bind_pairs, packed)


def _read_unpack_info(r: _Reader, streams: _Streams) -> None:
    while (nid := r.byte()) != _FOLDER:
        if nid == _END:
            raise Unparseable("7z coders info without folders")
        r.skip_property()
    n = r.count(r.number(), "folders", 3)
    if r.byte():
        raise Unparseable("7z folders stored outside the header (External) are not supported")
    folders = [_read_folder(r) for _ in range(n)]
    first = 0
    for folder in folders:
        folder.first_pack = first
        first += len(folder.packed)
    while (nid := r.byte()) != _CODERS_UNPACK_SIZE:
        if nid == _END:
            raise Unparseable("7z coders info without unpacked sizes")
        r.skip_property()
    for folder in folders:
        outputs = sum(c.outputs for c in folder.coders)
        folder.unpack_sizes = [r.number() for _ in range(r.count(outputs, "unpacked sizes"))]
    while (nid := r.byte()) != _END:
        if nid == _CRC:
            for folder, crc in zip(folders, _read_digests(r, n), strict=True):
                folder.crc = crc
        else:
            r.skip_property()
    streams.folders = folders


def _read_substreams_info(r: _Reader, streams: _Streams, limit: int) -> None:
    folders = streams.folders
    counts = [1] * len(folders)
    nid = r.byte()
    while nid not in (_SIZE, _CRC, _END):
        if nid == _NUM_UNPACK_STREAM:
            counts = [r.number() for _ in folders]
            if sum(counts) > limit:
                raise LimitExceeded(f"more than {limit} archive members")
        else:
            r.skip_property()
        nid = r.byte()
    sizes: list[int] = []
    for folder, count in zip(folders, counts, strict=True):
        if count == 0:
            continue
        if nid == _SIZE:
            parts = [r.number() for _ in range(r.count(count - 1, "substream sizes"))]
        elif count == 1:
            parts = []
        else:
            raise Unparseable("7z folder with several substreams but no sizes")
        last = folder.size - sum(parts)
        if last < 0:
            raise Unparseable("7z substreams larger than their folder")
        sizes += [*parts, last]
    if nid == _SIZE:
        nid = r.byte()
    known = [
        folder.crc if count == 1 and folder.crc is not None else None
        for folder, count in zip(folders, counts, strict=True)
    ]
    crcs: list[int | None] = []
    while nid != _END:
        if nid == _CRC:
            missing = sum(c for f, c in zip(known, counts, strict=True) if f is None)
            digests = iter(_read_digests(r, missing))
            crcs = []
            for crc, count in zip(known, counts, strict=True):
                crcs += [crc] if crc is not None else [next(digests) for _ in range(count)]
        else:
            r.skip_property()
        nid = r.byte()
    streams.sizes = sizes
    streams.crcs = crcs or [
        folder.crc if count == 1 else None
        for folder, count in zip(folders, counts, strict=True)
        for _ in range(count)
    ]
    streams.folder_of = [i for i, count in enumerate(counts) for _ in range(count)]


def _read_streams_info(r: _Reader, limit: int) -> _Streams:
    streams = _Streams()
    nid = r.byte()
    if nid == _PACK_INFO:
        _read_pack_info(r, streams)
        nid = r.byte()
    if nid == _UNPACK_INFO:
        _read_unpack_info(r, streams)
        nid = r.byte()
    if nid == _SUBSTREAMS_INFO:
        _read_substreams_info(r, streams, limit)
        nid = r.byte()
    else:
        streams.sizes = [f.size for f in streams.folders]
        streams.crcs = [f.crc for f in streams.folders]
        streams.folder_of = list(range(len(streams.folders)))
    if nid != _END:
        raise Unparseable(f"7z streams info: unexpected property {nid:#x}")
    if sum(len(f.packed) for f in streams.folders) > len(streams.pack_sizes):
        raise Unparseable("7z folders use more packed streams than the archive has")
    return streams


@dataclass
class _Entry:
    name: str
    has_stream: bool = True
    is_dir: bool = False
    attributes: int | None = None


def _read_files_info(r: _Reader, ctx: ScanContext) -> list[_Entry]:
    n = r.number()
    ctx.budget.charge_members(n)
    entries = [_Entry(f"#{i}") for i in range(n)]
    empty_streams: list[bool] = [False] * n
    empty_files: list[bool] = []
    while (kind := r.byte()) != _END:
        size = r.number()
        body = _Reader(r.take(size))
        if kind == _EMPTY_STREAM:
            empty_streams = body.bits(n)
        elif kind == _EMPTY_FILE:
            empty_files = body.bits(sum(empty_streams))
        elif kind == _NAME:
            if body.byte():
                raise Unparseable("7z file names stored outside the header (External) are not supported")
            names = bytes(body.take(body.left)).decode("utf-16-le", "replace").split("\0")
            if len(names) != n + 1 or names[-1]:
                raise Unparseable(f"7z file names: {len(names) - 1} names for {n} files")
            for entry, name in zip(entries, names[:-1], strict=True):
                entry.name = name
        elif kind == _ATTRIBUTES:
            defined = body.defined(n, 0)
            if body.byte():
                raise Unparseable("7z attributes stored outside the header (External) are not supported")
            for entry, is_defined in zip(entries, defined, strict=True):
                entry.attributes = body.uint32() if is_defined else None
        # Times, start positions, anti-items, padding (kDummy): nothing a loader reads for content.
    empty_index = 0
    for entry, empty in zip(entries, empty_streams, strict=True):
        if empty:
            entry.has_stream = False
            empty_file = empty_index < len(empty_files) and empty_files[empty_index]
            entry.is_dir = not empty_file
            empty_index += 1
        if entry.attributes is not None and entry.attributes & _FILE_ATTRIBUTE_DIRECTORY:
            entry.is_dir = True
    return entries


def _chain(folder: _Folder) -> list[_Coder]:
    """The folder's coders from its output to its packed stream, when they form one chain of simple
    (one-in, one-out) coders; otherwise _Unsupported."""
    if any(c.inputs != 1 or c.outputs != 1 for c in folder.coders) or len(folder.packed) != 1:
        raise _Unsupported("a coder graph with more than one stream per coder (e.g. BCJ2)")
    feeds = dict(folder.bind_pairs)  # in stream -> the out stream that feeds it
    chain: list[_Coder] = []
    visited: set[int] = set()
    index = folder.main_output()
    while True:
        if index in visited:
            raise Unparseable("7z folder: its coders form a cycle")
        visited.add(index)
        chain.append(folder.coders[index])
        if index in feeds:
            index = feeds[index]
        elif folder.packed == [index]:
            return chain
        else:
            raise Unparseable("7z folder: a coder's input is neither bound nor packed")


def _method_name(method: bytes) -> str:
    return _KNOWN_UNSUPPORTED.get(method, f"coder {method.hex() or '(empty id)'}")


def _lzma_filter(coder: _Coder, out_size: int, bound: int) -> dict[str, Any]:
    """The raw-decoder filter of an LZMA or LZMA2 coder, its dictionary capped at the output it can make."""
    props = coder.props
    if coder.method == _LZMA:
        if len(props) != 5 or props[0] >= 9 * 5 * 5:
            raise Unparseable("7z LZMA coder with invalid properties")
        lc, rest = props[0] % 9, props[0] // 9
        dict_size = int.from_bytes(props[1:5], "little")
        spec: dict[str, Any] = {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5}
    else:
        if len(props) != 1 or props[0] > 40:
            raise Unparseable("7z LZMA2 coder with invalid properties")
        bits = props[0]
        dict_size = 0xFFFFFFFF if bits == 40 else (2 | (bits & 1)) << (bits // 2 + 11)
        spec = {"id": lzma.FILTER_LZMA2}
    spec["dict_size"] = max(4096, min(dict_size, out_size, bound))
    return spec


def _filter(coder: _Coder) -> dict[str, Any]:
    if coder.method == _DELTA:
        if len(coder.props) != 1:
            raise Unparseable("7z Delta coder with invalid properties")
        return {"id": lzma.FILTER_DELTA, "dist": coder.props[0] + 1}
    spec: dict[str, Any] = {"id": _BCJ[coder.method]}
    if len(coder.props) == 4:
        spec["start_offset"] = int.from_bytes(coder.props, "little")
    elif coder.props:
        raise Unparseable("7z branch filter with invalid properties")
    return spec


def _decode_folder(data: memoryview, streams: _Streams, index: int, ctx: ScanContext) -> memoryview:
    """The folder's unpacked bytes, exactly its declared size. Unparseable when the packed data is missing or
    decodes to another size, _Unsupported for a coder we do not decode."""
    folder = streams.folders[index]
    chain = _chain(folder)
    start = _SIGNATURE_HEADER + streams.pack_pos + sum(streams.pack_sizes[: folder.first_pack])
    end = start + streams.pack_sizes[folder.first_pack]
    if end > len(data):
        raise Unparseable(f"7z packed stream ends at {end}, beyond the end of the file ({len(data)})")
    current: memoryview = data[start:end]
    sizes = {id(c): s for c, s in zip(folder.coders, folder.unpack_sizes, strict=True)}
    for coder in reversed(chain):  # from the packed stream outward
        size = sizes[id(coder)]
        method = coder.method
        if method == _COPY:
            continue
        if method in (_LZMA, _LZMA2):
            bound = max(ctx.limits.max_small_unpacked, ctx.limits.max_ratio * max(len(current), 1))
            chain_filters = [_lzma_filter(coder, size, bound)]
            current = _run(
                current, ctx, partial(lzma.LZMADecompressor, lzma.FORMAT_RAW, filters=chain_filters), size
            )
        elif method == _DEFLATE:
            current = _run(current, ctx, lambda: zlib.decompressobj(-15), size)
        elif method == _BZIP2:
            current = _run(current, ctx, bz2.BZ2Decompressor, size)
        elif method == _DELTA or method in _BCJ:
            # liblzma runs these filters only in front of an LZMA2 coder: wrap the bytes in LZMA2's stored
            # chunks, whose end marker also flushes the filter's last bytes (an LZMA stream in 7z has none).
            chain_filters = [_filter(coder), {"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
            stored = _lzma2_stored(current)
            current = _run(
                stored, ctx, partial(lzma.LZMADecompressor, lzma.FORMAT_RAW, filters=chain_filters), size
            )
        else:
            raise _Unsupported(_method_name(method))
    if len(current) != folder.size:
        raise Unparseable(f"7z folder decodes to {len(current)} bytes, its header says {folder.size}")
    return current


def _lzma2_stored(data: memoryview) -> memoryview:
    """`data` as an LZMA2 stream of stored (uncompressed) chunks: a control byte (1: the first, resetting
    the dictionary; 2: the next ones), the chunk's size less one (big-endian, 16 bits), the bytes; then 0."""
    out = bytearray()
    for start in range(0, len(data), 1 << 16):
        chunk = data[start : start + (1 << 16)]
        out += bytes([1 if start == 0 else 2]) + (len(chunk) - 1).to_bytes(2, "big")
        out += chunk
    out.append(0)
    return memoryview(out)


def _run(raw: memoryview, ctx: ScanContext, make: Callable[[], Any], size: int) -> memoryview:
    try:
        out, _, _ = decompress(raw, ctx, make, limit=size)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as error:
        raise Unparseable(f"7z packed stream does not decode: {error}") from None
    if len(out) != size:
        raise Unparseable(f"7z packed stream decodes to {len(out)} bytes, its header says {size}")
    return out


def _header_bytes(data: memoryview, ctx: ScanContext) -> bytes | None:
    """The (decoded) header, starting with kHeader; None for an empty archive or an encrypted header."""
    if len(data) < _SIGNATURE_HEADER:
        raise Unparseable("7z signature header is truncated")
    if data[6] != 0:
        raise Unparseable(f"7z format version {data[6]}.{data[7]} is not one 7-Zip reads")
    (start_crc,) = struct.unpack_from("<I", data, 8)
    next_offset, next_size, next_crc = struct.unpack_from("<QQI", data, 12)
    if zlib.crc32(data[12:32]) != start_crc:
        ctx.add("AISEC-SC-104", "the 7z start header does not match its CRC", 8)
    if next_size == 0:
        if len(data) > _SIGNATURE_HEADER:
            ctx.add("AISEC-SC-006", f"{len(data) - 32} bytes follow an empty 7z archive's header", 32)
        return None
    start = _SIGNATURE_HEADER + next_offset
    if start + next_size > len(data):
        raise Unparseable(f"7z header ({next_size} bytes at {start}) lies beyond the end of the file")
    if next_size > ctx.limits.max_header_bytes:
        raise LimitExceeded(f"7z header of {next_size} bytes")
    header = bytes(data[start : start + next_size])
    if zlib.crc32(header) != next_crc:
        ctx.add("AISEC-SC-104", "the 7z header does not match its CRC", start)
    if start + next_size < len(data):
        ctx.add(
            "AISEC-SC-006", f"{len(data) - start - next_size} bytes follow the 7z header", start + next_size
        )
    for _ in range(_MAX_ENCODED_HEADERS):
        r = _Reader(header)
        nid = r.byte()
        if nid == _HEADER:
            return header
        if nid != _ENCODED_HEADER:
            raise Unparseable(f"7z header starts with property {nid:#x}")
        streams = _read_streams_info(r, ctx.limits.max_members)
        if len(streams.folders) != 1:
            raise Unparseable(f"7z encoded header in {len(streams.folders)} folders")
        if streams.folders[0].size > ctx.limits.max_header_bytes:
            raise LimitExceeded(f"7z header of {streams.folders[0].size} bytes")
        try:
            header = bytes(_decode_folder(data, streams, 0, ctx))
        except _Unsupported as error:
            ctx.add("AISEC-SC-105", f"the 7z header is packed with {error}: no member could be listed")
            return None
    raise Unparseable(f"7z header encoded more than {_MAX_ENCODED_HEADERS} times")


def scan_7z(data: memoryview, ctx: ScanContext) -> str:
    """Every file of a 7z archive, decoded folder by folder and scanned as a nested part."""
    header = _header_bytes(data, ctx)
    if header is None:
        return "7z"
    r = _Reader(header)
    r.byte()  # kHeader
    nid = r.byte()
    if nid == _ARCHIVE_PROPERTIES:
        while r.byte() != _END:
            r.skip_property()
        nid = r.byte()
    if nid == _ADDITIONAL_STREAMS:
        _read_streams_info(r, ctx.limits.max_members)  # only referred to by "External" data, refused above
        nid = r.byte()
    streams = _Streams()
    if nid == _MAIN_STREAMS:
        streams = _read_streams_info(r, ctx.limits.max_members)
        nid = r.byte()
    entries: list[_Entry] = []
    if nid == _FILES_INFO:
        entries = _read_files_info(r, ctx)
        nid = r.byte()
    if nid != _END:
        raise Unparseable(f"7z header: unexpected property {nid:#x}")
    with_data = [e for e in entries if e.has_stream]
    if len(with_data) != len(streams.sizes):
        raise Unparseable(f"7z header: {len(with_data)} files with data but {len(streams.sizes)} streams")
    _check_names(entries, ctx)
    _scan_members(data, streams, with_data, ctx)
    return "7z"


def _check_names(entries: list[_Entry], ctx: ScanContext) -> None:
    seen: set[str] = set()
    for entry in entries:
        name = entry.name
        if name in seen and not entry.is_dir:
            ctx.add("AISEC-SC-103", f"two members are named {name!r}")
        seen.add(name)
        if unsafe_member_name(name):
            ctx.add("AISEC-SC-101", f"member {name!r} leaves the extraction folder")
        attributes = entry.attributes or 0
        unix_link = attributes & _FILE_ATTRIBUTE_UNIX_EXTENSION and stat.S_ISLNK(attributes >> 16)
        if unix_link or attributes & _FILE_ATTRIBUTE_REPARSE_POINT:
            ctx.add("AISEC-SC-102", f"member {name!r} is a link")


def _scan_members(data: memoryview, streams: _Streams, entries: list[_Entry], ctx: ScanContext) -> None:
    """Decode each folder once, then scan its substreams as the files they are."""
    offsets: list[int] = []
    position = 0
    previous = -1
    for folder, size in zip(streams.folder_of, streams.sizes, strict=True):
        position = 0 if folder != previous else position
        offsets.append(position)
        position += size
        previous = folder
    by_folder: dict[int, list[int]] = {}
    for i, folder in enumerate(streams.folder_of):
        by_folder.setdefault(folder, []).append(i)
    for folder, members in by_folder.items():
        names = [entries[i].name for i in members]
        try:
            content = _decode_folder(data, streams, folder, ctx)
        except _Unsupported as error:
            for name in names:
                ctx.child(name).add("AISEC-SC-105", f"packed with {error}: not analysed")
            continue
        except Unparseable as error:
            described = ", ".join(repr(n) for n in names[:3]) + (
                f" and {len(names) - 3} more" if len(names) > 3 else ""
            )
            ctx.child(names[0]).add("AISEC-SC-001", f"7z folder holding {described}: {error}")
            continue
        for i in members:
            part = content[offsets[i] : offsets[i] + streams.sizes[i]]
            crc = streams.crcs[i] if i < len(streams.crcs) else None
            if crc is not None and zlib.crc32(part) != crc:
                ctx.add("AISEC-SC-104", f"member {entries[i].name!r} does not match its CRC")
            ctx.scan_nested(part, entries[i].name)
