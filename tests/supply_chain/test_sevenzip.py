"""The 7z reader (formats/sevenzip.py): real 7-Zip archives, archives written from the spec, hostile ones.

`data/7z/` holds archives written by 7-Zip 26 (`data/make_7z_fixtures.py`): the same benign files packed
with each method 7-Zip offers that we decode, the same plus a malicious pickle, and archives whose members
we cannot decode (AES, PPMd, BCJ2, ARM64). `corpus.seven_zip` writes archives from the format's
specification, so the tests can also build what no honest writer makes.
"""

from __future__ import annotations

import pickle
import struct
import sys
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest

from aisec.defend.supply_chain import ScanLimits, Verdict, scan_bytes, scan_file
from aisec.defend.supply_chain.context import Budget, ScanContext
from aisec.defend.supply_chain.formats.sevenzip import scan_7z
from aisec.defend.supply_chain.result import ScanFinding, verdict_of

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE / "data"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from corpus import SEVEN_ZIP_CODERS, SevenZipCoder, _7z_number, seven_zip  # noqa: E402
from make_7z_fixtures import EVIL, METHODS, UNSUPPORTED, fixture_members  # noqa: E402

FIXTURES = HERE / "data" / "7z"
BENIGN = pickle.dumps(OrderedDict(w=[1.0, 2.0]), protocol=4)


def members(data: bytes, limits: ScanLimits | None = None) -> tuple[dict[str, bytes], list[ScanFinding]]:
    """What the reader hands on: each member's name and bytes (recorded instead of scanned)."""
    got: dict[str, bytes] = {}

    def record(part: memoryview, ctx: ScanContext) -> str:
        got[ctx.name] = bytes(part)
        return "recorded"

    findings: list[ScanFinding] = []
    scan_7z(memoryview(data), ScanContext("a.7z", Budget(limits or ScanLimits()), findings, record))
    return got, findings


def rules(data: bytes, limits: ScanLimits | None = None) -> set[str]:
    return {f.rule_id for f in scan_bytes(data, "a.7z", limits)[1]}


def verdict(data: bytes, limits: ScanLimits | None = None) -> Verdict:
    return verdict_of(scan_bytes(data, "a.7z", limits)[1])


# Archives written by 7-Zip ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_real_7zip_archive_reads_byte_for_byte(method: str) -> None:
    got, findings = members((FIXTURES / f"{method}.7z").read_bytes())
    assert got == fixture_members() and findings == []
    scan = scan_file(FIXTURES / f"{method}.7z")
    assert scan.format == "7z" and scan.verdict is Verdict.SAFE, scan.findings


@pytest.mark.parametrize("method", sorted(METHODS))
def test_real_7zip_archive_with_a_malicious_member_is_unsafe(method: str) -> None:
    got, _ = members((FIXTURES / f"{method}-evil.7z").read_bytes())
    assert got == {**fixture_members(), "evil.pkl": EVIL}
    scan = scan_file(FIXTURES / f"{method}-evil.7z")
    assert scan.verdict is Verdict.UNSAFE
    assert [(f.rule_id, f.location.split("!")[-1].split("@")[0]) for f in scan.findings] == [
        ("AISEC-SC-201", "evil.pkl")
    ]


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_members_we_cannot_decode_are_never_safe(name: str) -> None:
    scan = scan_file(FIXTURES / f"{name}.7z")
    assert scan.verdict is Verdict.ERROR
    assert {f.rule_id for f in scan.findings} == {"AISEC-SC-105"}
    if name == "aes-header":  # the file list itself is encrypted
        assert "header" in scan.findings[0].message
    else:
        assert sorted(f.location.split("!")[-1] for f in scan.findings) == sorted(fixture_members())


def test_real_7zip_folders_empty_files_and_links() -> None:
    got, findings = members((FIXTURES / "tree.7z").read_bytes())
    assert got == {"sub/model.pkl": fixture_members()["model.pkl"]} and findings == []
    assert scan_file(FIXTURES / "tree.7z").verdict is Verdict.SAFE
    assert scan_file(FIXTURES / "only-empty-file.7z").verdict is Verdict.SAFE
    link = scan_file(FIXTURES / "symlink.7z")
    assert link.verdict is Verdict.UNSAFE and {f.rule_id for f in link.findings} == {"AISEC-SC-102"}


def test_picklescan_style_7z_is_unsafe() -> None:
    """picklescan's tests/data/malicious1.7z: a pickle calling builtins.eval in LZMA2, header LZMA2-packed."""
    payload = b"\x80\x04\x95(\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x0cprint('456')\x94\x85\x94R\x94."
    data = seven_zip([("data.pkl", payload)], "lzma2", encode_header=True)
    assert verdict(data) is Verdict.UNSAFE and "AISEC-SC-201" in rules(data)


# Archives written from the spec ------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SEVEN_ZIP_CODERS))
@pytest.mark.parametrize("encode_header", [False, True])
@pytest.mark.parametrize("solid", [True, False])
def test_spec_archives_round_trip(method: str, encode_header: bool, solid: bool) -> None:
    files = [("model.pkl", BENIGN), ("empty.txt", b""), ("notes.txt", b"x" * 5000), ("evil.pkl", EVIL)]
    data = seven_zip(files, method, encode_header=encode_header, solid=solid)
    got, findings = members(data)
    assert got == {n: d for n, d in files if d} and findings == []
    assert verdict(seven_zip(files[:3], method, encode_header=encode_header, solid=solid)) is Verdict.SAFE
    assert verdict(data) is Verdict.UNSAFE


@pytest.mark.parametrize(
    ("name", "rule"),
    [("../model.pkl", "AISEC-SC-101"), ("/etc/model.pkl", "AISEC-SC-101"), ("C:\\model.pkl", "AISEC-SC-101")],
)
def test_names_that_leave_the_folder(name: str, rule: str) -> None:
    data = seven_zip([(name, BENIGN)])
    assert rule in rules(data) and verdict(data) is Verdict.UNSAFE


def test_duplicate_names() -> None:
    data = seven_zip([("model.pkl", BENIGN), ("model.pkl", EVIL)], "lzma2")
    assert {"AISEC-SC-103", "AISEC-SC-201"} <= rules(data)


@pytest.mark.parametrize(
    "attributes", [0x8000 | (0o120777 << 16), 0x400 | 0x20]
)  # Unix symlink, reparse point
def test_links(attributes: int) -> None:
    data = seven_zip([("link.pkl", b"model.pkl")], attributes={"link.pkl": attributes})
    assert rules(data) == {"AISEC-SC-102"}


@pytest.mark.parametrize(
    ("method", "what"),
    [
        (b"\x06\xf1\x07\x01", "7zAES"),
        (b"\x03\x04\x01", "PPMd"),
        (b"\x7f\x01", "coder 7f01"),
        (b"", "empty id"),
    ],
)
def test_unknown_or_encrypted_coder(method: str, what: str) -> None:
    coder = SevenZipCoder(method, b"\x01\x02", lambda d: bytes(reversed(d)))
    findings = scan_bytes(seven_zip([("model.pkl", EVIL)], coder), "a.7z")[1]
    assert [f.rule_id for f in findings] == ["AISEC-SC-105"] and what in findings[0].message
    assert verdict_of(findings) is Verdict.ERROR


def test_crc_mismatch_is_reported_and_the_member_still_scanned() -> None:
    data = bytearray(seven_zip([("model.pkl", EVIL)]))
    crc_at = bytes(data).rindex(struct.pack("<I", zlib.crc32(EVIL)))
    data[crc_at] ^= 0xFF
    assert {"AISEC-SC-104", "AISEC-SC-201"} <= rules(bytes(data))  # the header's CRC no longer holds either


def test_trailing_bytes_and_empty_archive() -> None:
    assert "AISEC-SC-006" in rules(seven_zip([("model.pkl", BENIGN)]) + b"hidden")
    empty = b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<I", zlib.crc32(bytes(20))) + bytes(20)
    assert rules(empty) == set() and verdict(empty) is Verdict.SAFE


# Hostile archives: never safe, never a hang -------------------------------------------------------------


def _with_header(header: bytes, data: bytes = b"") -> bytes:
    start = struct.pack("<QQI", len(data), len(header), zlib.crc32(header))
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<I", zlib.crc32(start)) + start + data + header


PACK_5 = b"\x06\x00\x01\x09\x05\x00"  # PackInfo: one pack stream of 5 bytes at offset 0
COPY_5 = b"\x07\x0b\x01\x00\x01\x01\x00\x0c\x05\x00"  # UnpackInfo: one folder, Copy, 5 bytes
FILE_A = b"\x05\x01\x11\x05\x00a\x00\x00\x00\x00"  # FilesInfo: one file named "a"


def _assert_refused(data: bytes, limits: ScanLimits | None = None) -> set[str]:
    started = time.perf_counter()
    findings = scan_bytes(data, "a.7z", limits)[1]
    assert time.perf_counter() - started < 5
    assert verdict_of(findings) is not Verdict.SAFE
    assert not [f for f in findings if "could not be analysed (" in f.message], findings  # no scanner bug
    return {f.rule_id for f in findings}


@pytest.mark.parametrize("method", ["lzma2", "lzma", "copy"])
def test_every_truncation_of_a_real_archive_is_refused(method: str) -> None:
    whole = (FIXTURES / f"{method}-evil.7z").read_bytes()
    for end in range(6, len(whole)):  # (shorter, the bytes are not a 7z signature: text or empty)
        _assert_refused(whole[:end])


@pytest.mark.parametrize(
    "header",
    [
        b"\x01\x05" + _7z_number(1 << 40) + b"\x00\x00",  # 2^40 files
        b"\x01\x04\x06\x00" + _7z_number(1 << 50) + b"\x09\x00\x00",  # 2^50 pack streams
        b"\x01\x04\x07\x0b" + _7z_number(1 << 50) + b"\x00\x01\x00",  # 2^50 folders
        b"\x01\x04\x07\x0b\x01\x00" + _7z_number(1 << 30) + b"\x01\x00",  # 2^30 coders
        b"\x01\x04\x06\x00\x01\x09\x05\x00\x07\x0b\x01\x00\x01\x01\x00\x0c" + _7z_number(1 << 62) + b"\x00\x08\x0d"
        + _7z_number(1 << 40) + b"\x00\x00\x00",  # 2^40 substreams in one folder
        b"\x01\x04" + PACK_5 + b"\x07\x0b\x01\x00\x01\x01\x00\x0c" + _7z_number(1 << 62) + b"\x00\x00"
        + FILE_A + b"\x00",  # a Copy folder of 2^62 bytes from 5
        b"\x01\x04\x06" + _7z_number(1 << 62) + b"\x01\x09\x05\x00" + COPY_5 + b"\x00" + FILE_A
        + b"\x00",  # a pack stream far beyond the end of the file
        b"\x01\x04" + PACK_5 + b"\x07\x0b\x01\x00\x02\x01\x00\x01\x00\x07\x07\x0c\x05\x05\x00\x00"
        + FILE_A + b"\x00",  # a bind pair naming streams that do not exist
        b"\x01\x02\x01\xff",  # archive property of a size past the end
        b"\x02",  # neither a header nor an encoded header
        b"",
    ],
)  # fmt: skip
def test_hostile_headers(header: bytes) -> None:
    _assert_refused(_with_header(header, b"\x00" * 5))


def test_hostile_signature_header() -> None:
    good = seven_zip([("model.pkl", BENIGN)])
    for offset, size in ((12, 1 << 60), (20, 1 << 60), (12, 1 << 63)):  # next header offset, size
        data = bytearray(good)
        data[offset : offset + 8] = struct.pack("<Q", size)
        _assert_refused(bytes(data))
    _assert_refused(good[:6] + b"\x01\x04" + good[8:])  # a major version 7-Zip refuses


def test_encoded_header_that_decodes_to_itself() -> None:
    """kEncodedHeader whose folder (Copy) unpacks to the very same encoded header: refused after 4 rounds."""
    size = 18  # the header's own length, which it declares twice (a one-byte NUMBER each time)
    header = (
        b"\x17\x06\x00\x01\x09"
        + bytes([size])
        + b"\x00\x07\x0b\x01\x00\x01\x01\x00\x0c"
        + bytes([size])
        + b"\x00\x00"
    )
    assert len(header) == size
    rules_found = _assert_refused(_with_header(header, header))
    assert rules_found == {"AISEC-SC-001"}


def test_lzma_dictionary_is_not_allocated_from_the_header() -> None:
    """An LZMA coder declaring a 4 GiB dictionary for a few bytes decodes without allocating it."""
    lzma_coder = SEVEN_ZIP_CODERS["lzma"]
    huge = SevenZipCoder(lzma_coder.method, lzma_coder.props[:1] + b"\xff\xff\xff\xff", lzma_coder.pack)
    got, findings = members(seven_zip([("model.pkl", BENIGN)], huge))
    assert got == {"model.pkl": BENIGN} and findings == []


@pytest.mark.parametrize("method", ["lzma2", "lzma", "bzip2", "deflate"])
def test_decompression_bomb(method: str) -> None:
    data = seven_zip([("zeros.bin", bytes(8 << 20))], method)
    limits = ScanLimits(max_small_unpacked=1 << 20, max_ratio=50)
    assert "AISEC-SC-003" in _assert_refused(data, limits)


def test_member_count_limit() -> None:
    data = seven_zip([(f"m{i}.pkl", BENIGN) for i in range(20)], "lzma2")
    assert "AISEC-SC-003" in _assert_refused(data, ScanLimits(max_members=10))
