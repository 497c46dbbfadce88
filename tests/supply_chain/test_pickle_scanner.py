"""The pickle analysis and the containers around it: techniques, loader-faithful zip reading, limits."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import joblib
import numpy as np
import pytest

from aisec.defend.supply_chain import ScanLimits, Verdict, scan_bytes, scan_file
from aisec.defend.supply_chain.result import verdict_of


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


EVIL = pickle.dumps(_System(), protocol=2)


def rules(data: bytes, name: str = "model.pkl", limits: ScanLimits | None = None) -> set[str]:
    return {f.rule_id for f in scan_bytes(data, name, limits)[1]}


def verdict(data: bytes, name: str = "model.pkl", limits: ScanLimits | None = None) -> Verdict:
    return verdict_of(scan_bytes(data, name, limits)[1])


def short_unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


@pytest.mark.parametrize("protocol", range(6))
def test_every_protocol_is_caught(protocol: int) -> None:
    assert "AISEC-SC-201" in rules(pickle.dumps(_System(), protocol=protocol))


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        (b"c__builtin__\neval\n(S'1'\ntR.", "AISEC-SC-201"),  # protocol 0 rename __builtin__ -> builtins
        (b"ccommands\ngetoutput\n(S'true'\ntR.", "AISEC-SC-201"),  # commands -> subprocess
        (b"\x80\x04" + short_unicode("random") + short_unicode("_os.system") + b"\x93" + short_unicode("true")
         + b"\x85R.", "AISEC-SC-201"),  # protocol 4 attribute walk reaches os.system
        (b"\x80\x04" + short_unicode("_codecs") + short_unicode("encode") + b"\x93" + short_unicode("bf")
         + short_unicode("rot13") + b"\x86R" + short_unicode("system") + b"\x93" + short_unicode("true")
         + b"\x85R.", "AISEC-SC-201"),  # module name computed at load time: rot13("bf") == "os"
        (b"\x80\x02\x82\x01)R.", "AISEC-SC-204"),  # EXT1: a global from the copyreg registry
        (b"(cos\nsystem\nS'true'\no.", "AISEC-SC-201"),  # OBJ instead of REDUCE
        (b"(S'true'\nios\nsystem\n.", "AISEC-SC-201"),  # INST
        (b"\x80\x02ccollections\nOrderedDict\n}(S'x'\ncos\nsystem\nub.", "AISEC-SC-206"),  # BUILD on a class
    ],
    ids=["builtin-rename", "commands-rename", "dotted-name", "rot13-name", "ext1", "obj", "inst", "build-global"],
)  # fmt: skip
def test_techniques(payload: bytes, rule: str) -> None:
    assert rule in rules(payload)
    assert verdict(payload) is Verdict.UNSAFE


def test_global_reused_through_the_memo_is_resolved() -> None:
    # the module and name strings are memoised once and fetched with BINGET for STACK_GLOBAL
    payload = (b"\x80\x04" + short_unicode("os") + b"\x94" + short_unicode("system") + b"\x94"
               + b"h\x00h\x01\x93" + short_unicode("true") + b"\x85R.")  # fmt: skip
    assert "AISEC-SC-201" in rules(payload)


def test_nested_pickle_payload_is_scanned_and_located() -> None:
    class Nested:
        def __reduce__(self):
            return (pickle.loads, (EVIL,))

    fmt, findings = scan_bytes(pickle.dumps(Nested(), protocol=4), "m.pkl")
    inner = [f for f in findings if "!payload@" in f.location]
    assert any(f.rule_id == "AISEC-SC-205" for f in findings)
    assert inner and inner[0].rule_id == "AISEC-SC-201" and ".system" in inner[0].message


def test_payload_after_stop_is_found() -> None:
    found = rules(pickle.dumps({"weights": [1.0]}) + EVIL)
    assert {"AISEC-SC-006", "AISEC-SC-201"} <= found


@pytest.mark.parametrize("cut", [1, 5, 20, len(EVIL) - 1])
def test_truncated_pickle_is_never_safe(cut: int) -> None:
    benign = pickle.dumps(OrderedDict(a=np.arange(3)), protocol=4)
    assert verdict(benign[: len(benign) - cut]) is not Verdict.SAFE


def test_benign_objects_are_safe() -> None:
    from datetime import datetime

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.random.default_rng(0).normal(size=(60, 4)), np.arange(60) % 3
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3, random_state=0)).fit(x, y)
    objects = [model, {"a": np.float32(1.5), "b": {1, 2}, "c": b"xyz", "d": datetime(2024, 1, 1)}, np.eye(3)]
    for obj in objects:
        for protocol in range(2, 6):
            fmt, findings = scan_bytes(pickle.dumps(obj, protocol=protocol), "m.pkl")
            assert findings == [], (type(obj), protocol, findings)


def test_joblib_walks_inline_arrays_and_finds_a_payload_behind_them(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    joblib.dump({"w": np.arange(1000.0), "o": np.array([1, "x"], dtype=object)}, path)
    clean = path.read_bytes()
    assert scan_bytes(clean, "m.joblib") == ("joblib", [])
    assert "AISEC-SC-201" in rules(clean + EVIL, "m.joblib")


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz", "lzma"])
def test_compressed_joblib(tmp_path: Path, compress: str) -> None:
    path = tmp_path / "m.joblib"
    joblib.dump({"w": np.arange(100.0)}, path, compress=compress)
    assert scan_file(path).verdict is Verdict.SAFE
    evil = tmp_path / "evil.joblib"
    joblib.dump(_System(), evil, compress=compress)
    assert scan_file(evil).verdict is Verdict.UNSAFE


def _zip(members: list[tuple[str, bytes]], **info) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


def test_duplicate_zip_members_are_both_scanned() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        data = _zip([("archive/data.pkl", EVIL), ("archive/data.pkl", pickle.dumps({}))])
    assert {"AISEC-SC-103", "AISEC-SC-201"} <= rules(data, "model.pt")


def test_zip_member_with_bad_crc_and_encrypted_flag_is_read_like_pytorch() -> None:
    data = bytearray(_zip([("archive/data.pkl", EVIL)]))
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 16, 0xDEADBEEF)  # CRC in the central directory
    struct.pack_into("<H", data, central + 8, 1)  # "encrypted"
    struct.pack_into("<H", data, 6, 1)
    assert {"AISEC-SC-104", "AISEC-SC-201"} <= rules(bytes(data), "model.pt")


def test_archive_path_traversal_and_links() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../../escape.pkl")
        info.size = len(EVIL)
        archive.addfile(info, io.BytesIO(EVIL))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    assert {"AISEC-SC-101", "AISEC-SC-102", "AISEC-SC-201"} <= rules(buffer.getvalue(), "m.tar")


def test_nested_containers() -> None:
    inner = _zip([("archive/data.pkl", EVIL)])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("model.pt")
        info.size = len(inner)
        archive.addfile(info, io.BytesIO(inner))
    fmt, findings = scan_bytes(gzip.compress(buffer.getvalue()), "bundle.tar.gz")
    assert fmt == "gzip(tar)"
    assert any(f.rule_id == "AISEC-SC-201" and "model.pt!archive/data.pkl" in f.location for f in findings)


def test_zip_bomb_and_deep_nesting_end_in_a_limit_finding() -> None:
    bomb = zlib.compress(b"\0" * (80 << 20), 9)  # 80 MB of zeros in ~80 kB
    assert rules(bomb, "m.joblib") == {"AISEC-SC-003"}
    nested = EVIL
    for _ in range(12):
        nested = gzip.compress(nested)
    assert "AISEC-SC-003" in rules(nested, "m.gz")
    assert verdict(nested, "m.gz") is not Verdict.SAFE


def test_limits_on_opcodes() -> None:
    data = pickle.dumps(list(range(5000)), protocol=2)
    assert rules(data, limits=ScanLimits(max_pickle_opcodes=100)) == {"AISEC-SC-003"}


def test_lying_extensions() -> None:
    assert {"AISEC-SC-005"} <= rules(pickle.dumps({"w": 1}), "model.safetensors")
    assert verdict(pickle.dumps({"w": 1}), "model.npy") is Verdict.UNSAFE
    assert rules(pickle.dumps({"w": 1}), "model.pt") == set()  # raw pickles named .pt are legitimate


def test_unknown_bytes_are_never_safe() -> None:
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert verdict(b"\x07" + noise, "model.bin") is Verdict.ERROR


def test_npy_object_array_payload() -> None:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = header + " " * (63 - len(header)) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + EVIL
    assert {"AISEC-SC-301", "AISEC-SC-201"} <= rules(data, "x.npy")


def test_pickle_in_an_hdf5_user_block_is_found(tmp_path: Path) -> None:
    """A polyglot: pickle.load runs the protocol-0 pickle in the user block, h5py reads the HDF5 after it."""
    import h5py

    path = tmp_path / "model.h5"
    with h5py.File(path, "w", userblock_size=512) as handle:
        handle.attrs["model_config"] = "{}"
    payload = b"cos\nsystem\n(S'true'\ntR."
    with open(path, "r+b") as handle:
        handle.write(payload)
    assert "AISEC-SC-201" in {f.rule_id for f in scan_file(path).findings}
