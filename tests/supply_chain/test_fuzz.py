"""Fuzzing the scanner with mutated real files (hypothesis; `make fuzz` runs the atheris harness longer).

Properties, on every mutation of every seed file:
* the scan returns (no exception escapes) within the time limit;
* no format scanner fails with an unexpected exception (the dispatcher would turn it into an
  "could not be analysed (TypeError ...)" finding: a scanner bug that the fuzzer must surface);
* "safe" only for what the format's reference parser also reads: CPython's unpickler (restricted to the
  allow list) for pickles, numpy for .npy, the safetensors library for .safetensors.
"""

from __future__ import annotations

import gzip
import io
import pickle
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisec.defend.supply_chain import Verdict, scan_bytes
from aisec.defend.supply_chain.loading import _RestrictedUnpickler
from aisec.defend.supply_chain.result import verdict_of

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from corpus import seven_zip  # noqa: E402


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _safetensors() -> bytes:
    from safetensors.numpy import save

    return save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, dtype=np.int64)})


def _torch_like_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(OrderedDict(w=[1.0, 2.0]), protocol=2))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _onnx() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    return helper.make_model(graph).SerializeToString()


SEEDS: dict[str, bytes] = {
    "pickle-p0": pickle.dumps(OrderedDict(a=[1, 2.5, "x"], b=(None, True)), protocol=0),
    "pickle-p2": pickle.dumps({"w": np.arange(4.0), "n": "layer"}, protocol=2),
    "pickle-p4": pickle.dumps({"w": np.arange(4.0), "s": {1, 2}, "b": b"\x00\x01"}, protocol=4),
    "pickle-p5": pickle.dumps([np.eye(2, dtype=np.float32), {"k": 1}], protocol=5),
    "npy": _npy(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "safetensors": _safetensors(),
    "zip": _torch_like_zip(),
    "gzip-pickle": gzip.compress(pickle.dumps({"w": [1, 2, 3]}, protocol=4)),
    "onnx": _onnx(),
    "7z": (HERE / "data" / "7z" / "lzma2.7z").read_bytes(),  # written by 7-Zip: LZMA2, solid, packed header
    "7z-lzma-copy": seven_zip(
        [("model.pkl", pickle.dumps(OrderedDict(w=[1.0]), protocol=4)), ("a.txt", b"text " * 40)], "lzma"
    ),
}
_REFERENCE = ("pickle", "npy", "safetensors")  # the seeds with a reference parser for the "safe" property


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    n = len(seed)
    flip = st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(
        lambda t: seed[: t[0]] + bytes([t[1]]) + seed[t[0] + 1 :]
    )
    cut = st.integers(0, n - 1).map(lambda i: seed[:i])
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(
        lambda t: seed[: t[0]] + t[1] + seed[t[0] :]
    )
    delete = st.tuples(st.integers(0, n - 1), st.integers(1, 8)).map(
        lambda t: seed[: t[0]] + seed[t[0] + t[1] :]
    )
    return st.one_of(flip, cut, insert, delete)  # fmt: skip


def _reference_reads(kind: str, data: bytes) -> bool:
    """Whether the format's reference parser reads `data` through (for files the scanner calls safe).
    For pickles, errors raised by the objects being rebuilt (a wrong argument to OrderedDict, an unknown
    codec) mean the stream itself parsed; only the unpickler's own parse errors count as a refusal."""
    try:
        if kind.startswith("pickle"):
            stream = io.BytesIO(data)
            _RestrictedUnpickler(stream).load()
            return stream.tell() == len(data)  # the scanner reports trailing bytes
        if kind == "npy":
            np.load(io.BytesIO(data), allow_pickle=False)
            return True
        from safetensors.numpy import load

        load(data)
        return True
    except (pickle.UnpicklingError, EOFError) as error:
        return kind.startswith("pickle") and not _is_parse_error(str(error))
    except (
        TypeError,
        AttributeError,
        LookupError,
        ValueError,
        OverflowError,
        SystemError,
        RuntimeError,
    ) as error:
        return kind.startswith("pickle") and "allow list" not in str(error)
    except Exception:  # noqa: BLE001 - any other failure: the reference did not read it
        return False


_PARSE_ERRORS = ("truncated", "invalid load key", "exhausted", "frame", "memo", "MARK", "stack", "opcode",
                 "protocol", "ran out of input")  # fmt: skip


def _is_parse_error(message: str) -> bool:
    return not message or any(word.lower() in message.lower() for word in _PARSE_ERRORS)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # numpy on mutated dtypes
@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_mutated_files(kind: str) -> None:
    seed = SEEDS[kind]
    assert scan_bytes(seed, kind)[1] == [], "the unmutated seed must scan clean"

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_mutations(seed))
    def check(data: bytes) -> None:
        started = time.perf_counter()
        fmt, findings = scan_bytes(data, "")
        assert time.perf_counter() - started < 5
        bugs = [f.message for f in findings if "could not be analysed (" in f.message]
        assert not bugs, bugs
        # Text (and empty) files are safe whatever they were cut from: no loader runs anything from them
        # (a protocol-0 pickle prefix that imports or calls is recognised as a pickle, not as text).
        if (
            verdict_of(findings) is Verdict.SAFE
            and fmt not in ("text", "empty")
            and kind.startswith(_REFERENCE)
        ):
            assert _reference_reads(kind, data), f"called safe, but the reference parser refuses: {data!r}"

    check()
