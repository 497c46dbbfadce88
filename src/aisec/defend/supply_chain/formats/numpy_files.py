"""NumPy `.npy` files (and, through the zip scanner, the `.npy` members of `.npz`).

The header is a Python literal dict, read with `ast.literal_eval` as numpy itself reads it (never `eval`).
A numeric array's size must match the bytes that follow; an object array's data is a pickle (written by
`np.save` with allow_pickle), which is scanned like any other pickle. Format: numpy/lib/format.py.
"""

from __future__ import annotations

import ast
import math
import struct
from typing import Any

from aisec.defend.supply_chain.context import ScanContext, Unparseable
from aisec.defend.supply_chain.formats.pickle_scan import scan_pickle

MAGIC = b"\x93NUMPY"


def scan_npy(data: memoryview, ctx: ScanContext) -> None:
    """Header checks; the pickle of an object array; the data size of a numeric one."""
    if len(data) < 10:
        raise Unparseable("npy file shorter than its preamble")
    major, minor = data[6], data[7]
    if minor != 0:
        raise Unparseable(f"npy format version {major}.{minor} is not known (numpy reads 1.0, 2.0 and 3.0)")
    if major == 1:
        (header_len,), start = struct.unpack_from("<H", data, 8), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise Unparseable("npy file shorter than its preamble")
        (header_len,), start = struct.unpack_from("<I", data, 8), 12
    else:
        raise Unparseable(f"npy format version {major} is not known")
    if header_len > ctx.limits.max_header_bytes or start + header_len > len(data):
        raise Unparseable(f"npy header length {header_len} exceeds the file or the limit")
    try:
        text = str(data[start : start + header_len], "utf-8" if major == 3 else "latin-1")
        header = ast.literal_eval(text)  # literals only, as numpy itself parses the header; never eval
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as error:
        raise Unparseable(f"npy header is not a Python literal: {error}", start) from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise Unparseable("npy header must be a dict with exactly descr, fortran_order and shape", start)
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise Unparseable(f"npy shape {shape!r} is not a tuple of non-negative ints", start)
    body = start + header_len
    dtype = _dtype(header["descr"], start)
    if dtype.hasobject:
        ctx.add("AISEC-SC-301", f"object array of shape {shape}; its pickle was scanned", body)
        scan_pickle(data[body:], ctx.child("pickle", ctx.name))
        return
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - body < expected:
        raise Unparseable(f"npy data truncated: {len(data) - body} of {expected} bytes", body)
    if len(data) - body > expected:
        ctx.add("AISEC-SC-006", f"{len(data) - body - expected} bytes follow the array data", body + expected)


def _dtype(descr: object, offset: int) -> Any:
    """The dtype numpy.load builds from the header's descr (numpy's own reader of this literal: a string
    such as "<f8" or "i4,O", or a list of fields), so its size and whether it holds objects are exact."""
    import numpy as np

    try:
        # numpy's stubs declare only the list form; its reader takes any descr literal ("<f8" too)
        return np.lib.format.descr_to_dtype(descr)  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError, IndexError, SyntaxError) as error:
        raise Unparseable(f"npy descr {descr!r} is not a dtype numpy reads: {error}", offset) from None
