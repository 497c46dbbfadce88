"""Regression tests for scanner bypasses found by red-teaming: files a real loader executes while the scan
says "safe".

Each bypass has two tests: `test_loader_runs_*` proves, in a subprocess inside a temporary folder, that the
real loader runs the payload (it creates a marker file; harmless), and `test_scan_flags_*` asserts the
scanner's verdict is not safe.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from aisec.defend.supply_chain import Verdict, scan_bytes
from aisec.defend.supply_chain.result import verdict_of

MARKER = "PWNED"
# builtins.open('PWNED', 'w'): creates the marker file in the loader's working directory.
PAYLOAD = b"cbuiltins\nopen\n(S'" + MARKER.encode() + b"'\nS'w'\ntR."

_LOADERS = {
    "pickle": "import pickle\nwith open(P, 'rb') as f: pickle.load(f)",
    "numpy": "import numpy\nnumpy.load(P, allow_pickle=True)",
    "torch": "import torch\ntorch.load(P, weights_only=False, map_location='cpu')",
    "joblib": "import joblib\njoblib.load(P)",
    "zipfile": "import pickle, zipfile\npickle.loads(zipfile.ZipFile(P).read('model.pkl'))",
}


def executes(data: bytes, loader: str, name: str, tmp_path: Path) -> bool:
    """Whether loading `data` (saved as `name`) with `loader` creates the marker file; whatever it raises."""
    path = tmp_path / name
    path.write_bytes(data)
    code = f"P = {str(path)!r}\n" + _LOADERS[loader]
    env = dict(os.environ, HOME=str(tmp_path), TMPDIR=str(tmp_path))
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path, env=env, capture_output=True, timeout=300
    )
    return (tmp_path / MARKER).exists()


def verdict(data: bytes, name: str) -> Verdict:
    return verdict_of(scan_bytes(data, name)[1])


# Builders ------------------------------------------------------------------------------------------------


def int_hex_pickle() -> bytes:
    """A protocol-0 pickle that starts with INT '0x0': CPython's C unpickler parses INT/LONG arguments with
    base 0 (strtol / PyLong_FromString(s, NULL, 0)), the simulator with int(line), base 10. The sniff's
    trial parse fails before the import, so the file is classified as plain text and not analysed."""
    return b"I0x0\n0" + PAYLOAD


def long_hex_pickle() -> bytes:
    return b"L0x0\n0" + PAYLOAD


def many_opcodes_pickle() -> bytes:
    """More than the sniff's 1,000,000-opcode trial budget before the import: the sniff gives up (text)."""
    return b"N0" * 500_001 + PAYLOAD


def many_marks_pickle() -> bytes:
    """More than max_pickle_stack (100,000) marks before the import: LimitExceeded in the sniff (text)."""
    return b"(" * 100_001 + b"1" * 100_001 + PAYLOAD


def gif_frame_pickle() -> bytes:
    """'GIF89a' is a BINFLOAT opcode; a FRAME that ends inside the next opcode makes the simulator raise
    (CPython's C unpickler does not enforce frame bounds), so the sniff falls through to "image"."""
    return (
        b"GIF89a\x00\x00\x00"  # BINFLOAT
        + b"0"  # POP
        + b"\x95"
        + struct.pack("<Q", 3)  # FRAME of 3 bytes ...
        + b"\x8c\x05PW"  # ... that ends inside this SHORT_BINUNICODE
        + b"NED0"
        + PAYLOAD
    )


def torch_v7_tar() -> bytes:
    """torch.load's legacy tar format (tarfile, any header format) with a first member named 'GIF89a': no
    'ustar' magic at offset 257, so the sniff says "image"; torch.load unpickles the 'storages' member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in (("GIF89a", b""), ("storages", PAYLOAD)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), 0
            tar.addfile(info, io.BytesIO(content))
    raw = bytearray(buf.getvalue())
    offset = 0
    while offset + 512 <= len(raw) and any(raw[offset : offset + 512]):
        header = raw[offset : offset + 512]
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        header[257:265] = b"\0" * 8  # no "ustar" magic: a V7 header, which tarfile reads all the same
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        raw[offset : offset + 512] = header
        offset += 512 + (size + 511) // 512 * 512
    return bytes(raw)


def torch_zip_text_pickle() -> bytes:
    """A torch.save-style zip whose data.pkl is the INT-hex pickle: the member is sniffed as text."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", int_hex_pickle())
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return buf.getvalue()


def gif_zip_polyglot() -> bytes:
    """A GIF header followed by a zip: the sniff says "image"; zipfile finds the archive from its end."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("model.pkl", b"\x80\x02" + PAYLOAD)
    return b"GIF89a" + b"\x00" * 64 + buf.getvalue()


def joblib_itemsize_mismatch(descr: str = "int8", dtype_state: bytes = b"") -> bytes:
    """A NumpyArrayWrapper whose dtype is numpy.dtype('int8'): the scanner sizes the inline array from the
    digits of the descr ('int8' -> 8 bytes per item), joblib from dtype.itemsize (1). joblib resumes
    unpickling 7 * k bytes before the scanner does; the payload sits in that gap."""
    raw = descr.encode()
    dtype = b"cnumpy\ndtype\nX" + struct.pack("<I", len(raw)) + raw + b"\x89\x88\x87R" + dtype_state
    k = 16
    head = (
        b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}("
        b"X\x08\x00\x00\x00subclasscnumpy\nndarray\n"
        b"X\x05\x00\x00\x00shapeJ" + struct.pack("<i", k) + b"\x85"
        b"X\x05\x00\x00\x00orderX\x01\x00\x00\x00C"
        b"X\x05\x00\x00\x00dtype" + dtype + b"X\x0a\x00\x00\x00allow_mmap\x89"
        b"X\x1b\x00\x00\x00numpy_array_alignment_bytesN"
        b"ub"
    )
    hidden = b"0" + PAYLOAD  # POP the array joblib pushed, then the payload
    return head + b"\x00" * k + hidden + b"A" * (8 * k - k - len(hidden)) + b"."


def joblib_state_elsize_mismatch() -> bytes:
    """Same, with dtype 'i1' and a BUILD state claiming elsize 8: numpy ignores elsize for builtin types."""
    return joblib_itemsize_mismatch("i1", b"(K\x03X\x01\x00\x00\x00|NNNK\x08K\x01K\x00tb")


def npy_comma_descr(descr: str = "i4,O") -> bytes:
    """An .npy whose descr is 'i4,O': numpy builds a structured dtype with an object field and unpickles
    the data; the scanner reads the prefix 'i4' as a plain 4-byte numeric dtype."""
    body = b"\x80\x02" + PAYLOAD
    body += b"N" * (-len(body) % 4)
    header = repr({"descr": descr, "fortran_order": False, "shape": (len(body) // 4,)}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


SOCKET_GADGET = (
    # sklearn.callback._transport.Listener is multiprocessing.connection.Listener (allowed by the
    # sklearn class-name rule): binds a socket (here an AF_UNIX one, a file named PWNED) at load time.
    b"\x80\x02csklearn.callback._transport\nListener\nX\x05\x00\x00\x00PWNEDX\x07\x00\x00\x00AF_UNIX\x86R."
)


# (id, builder, loader, file name, needs) ------------------------------------------------------------------

CASES = [
    ("int-hex-text-pickle", int_hex_pickle, "pickle", "model.pkl", None),
    ("int-hex-text-pickle-numpy", int_hex_pickle, "numpy", "model.npy.pkl", None),
    ("int-hex-text-pickle-torch", int_hex_pickle, "torch", "model.pt", "torch"),
    ("long-hex-text-pickle", long_hex_pickle, "pickle", "model.pkl", None),
    ("opcode-budget-text-pickle", many_opcodes_pickle, "pickle", "model.pkl", None),
    ("mark-limit-text-pickle", many_marks_pickle, "pickle", "model.pkl", None),
    ("gif-frame-pickle", gif_frame_pickle, "pickle", "model.pkl", None),
    ("torch-legacy-v7-tar", torch_v7_tar, "torch", "model.pt", "torch"),
    ("torch-zip-text-data-pkl", torch_zip_text_pickle, "torch", "model.pt", "torch"),
    ("gif-zip-polyglot", gif_zip_polyglot, "zipfile", "model.zip", None),
    ("joblib-descr-digits", joblib_itemsize_mismatch, "joblib", "model.joblib", "joblib"),
    ("joblib-state-elsize", joblib_state_elsize_mismatch, "joblib", "model.joblib", "joblib"),
    ("npy-comma-descr", npy_comma_descr, "numpy", "array.npy", None),
]


@pytest.mark.parametrize(
    ("builder", "loader", "name", "needs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_loader_runs_payload(builder, loader, name, needs, tmp_path):
    """Sanity: the real loader executes each sample (otherwise the scan test below proves nothing)."""
    if needs:
        pytest.importorskip(needs)
    assert executes(builder(), loader, name, tmp_path)


@pytest.mark.parametrize(("builder", "name"), [(c[1], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_scan_flags(builder, name):
    assert verdict(builder(), name) is not Verdict.SAFE


def test_loader_opens_socket_through_allowed_sklearn_name(tmp_path):
    pytest.importorskip("sklearn.callback._transport")
    path = tmp_path / "model.pkl"
    path.write_bytes(SOCKET_GADGET)
    code = (
        "import os, pickle\n"
        f"obj = pickle.load(open({str(path)!r}, 'rb'))\n"
        "print(os.path.exists('PWNED'), type(obj).__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    ).stdout
    assert out.startswith("True multiprocessing.connection"), out


def test_scan_flags_socket_through_allowed_sklearn_name():
    assert verdict(SOCKET_GADGET, "model.pkl") is not Verdict.SAFE
