"""Load corpus samples the way a victim would: `python payload_check.py MANIFEST.json FAMILY`.

Run by test_corpus.py in a subprocess per loader family, with its working directory, HOME and TMPDIR inside a
throwaway directory. MANIFEST is a JSON list of {"path": ..., "loader": ...}; the samples of FAMILY are loaded
one after the other, each under a time limit, whatever they raise. The outcome of each load ("ok" or the
exception) is written as JSON to MANIFEST + ".FAMILY.out"; the test then looks at the marker files.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import signal
import struct
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

PER_SAMPLE_SECONDS = 30


class _TimedOut(BaseException):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _TimedOut(f"still loading after {PER_SAMPLE_SECONDS} s")


# Loaders ------------------------------------------------------------------------------------------------


def load_pickle(path: str) -> None:
    with open(path, "rb") as file:
        pickle.load(file)


def _all_pickles(data: bytes) -> None:
    """Unpickle every pickle of a stream, as code that reads records until EOF does."""
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        pickle.load(stream)


def load_pickle_stream(path: str) -> None:
    _all_pickles(Path(path).read_bytes())


def load_torch(path: str) -> None:
    import torch

    torch.load(path, weights_only=False, map_location="cpu")


def load_torch_jit(path: str) -> None:
    import torch

    torch.jit.load(path, map_location="cpu")


def load_joblib(path: str) -> None:
    import joblib

    joblib.load(path)


def load_numpy(path: str) -> None:
    import numpy as np

    loaded = np.load(path, allow_pickle=True)
    if hasattr(loaded, "files"):  # an .npz unpickles a member when it is read
        with loaded:
            for key in loaded.files:
                loaded[key]


def _walk(data: bytes) -> None:
    """Unpack archives and compressed streams down to their files, and unpickle each file."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                _walk(archive.read(info))
    elif data[:6] == b"7z\xbc\xaf\x27\x1c":
        import py7zr

        with tempfile.TemporaryDirectory() as scratch, py7zr.SevenZipFile(io.BytesIO(data)) as archive:
            archive.extractall(path=scratch)
            for file in sorted(Path(scratch).rglob("*")):
                if file.is_file():
                    _walk(file.read_bytes())
    elif data[:2] == b"\x1f\x8b":
        _walk(gzip.decompress(data))
    elif data[:3] == b"BZh":
        _walk(bz2.decompress(data))
    elif data[:6] == b"\xfd7zXZ\x00":
        _walk(lzma.decompress(data))
    elif len(data) > 262 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    _walk(archive.extractfile(member).read())  # type: ignore[union-attr]
    else:
        _all_pickles(data)


def load_archive(path: str) -> None:
    _walk(Path(path).read_bytes())


def load_keras(path: str) -> None:
    import keras

    keras.saving.load_model(path, safe_mode=False)


def gguf_strings(path: str) -> dict[str, str]:
    """The string metadata of a GGUF file (a reader written from the spec, as an inference server has)."""
    data = Path(path).read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError("not GGUF")
    _version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
    offset, found = 24, {}
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string() -> str:
        nonlocal offset
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8 + length
        return data[offset - length : offset].decode()

    def skip(kind: int) -> None:
        nonlocal offset
        if kind == 8:
            string()
        elif kind == 9:
            item, length = struct.unpack_from("<IQ", data, offset)
            offset += 12
            for _ in range(length):
                skip(item)
        else:
            offset += sizes[kind]

    for _ in range(count):
        key = string()
        (kind,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if kind == 8:
            found[key] = string()
        else:
            skip(kind)
    return found


def load_gguf_jinja(path: str) -> None:
    """Render every chat template with a plain jinja2.Environment, as llama-cpp-python < 0.2.72 did."""
    import jinja2

    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    for key, template in gguf_strings(path).items():
        if key.startswith("tokenizer.chat_template"):
            jinja2.Environment(loader=jinja2.BaseLoader()).from_string(template).render(
                messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
            )


def load_onnx(path: str) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(path))


def load_safetensors(path: str) -> None:
    from safetensors.numpy import load_file

    load_file(path)


LOADERS = {
    "pickle": load_pickle,
    "pickle-stream": load_pickle_stream,
    "torch": load_torch,
    "torch-jit": load_torch_jit,
    "joblib": load_joblib,
    "numpy": load_numpy,
    "archive": load_archive,
    "keras": load_keras,
    "gguf-jinja": load_gguf_jinja,
    "onnx": load_onnx,
    "safetensors": load_safetensors,
}


def main(manifest: str, family: str) -> int:
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _on_alarm)
    samples = [s for s in json.loads(Path(manifest).read_text()) if s["loader"] == family]
    outcome: dict[str, str] = {}
    for sample in samples:
        signal.alarm(PER_SAMPLE_SECONDS)
        try:
            LOADERS[family](sample["path"])
            outcome[sample["path"]] = "ok"
        except BaseException as error:  # noqa: BLE001 - a payload may raise anything, SystemExit included
            outcome[sample["path"]] = f"{type(error).__name__}: {str(error)[:300]}"
        finally:
            signal.alarm(0)
        sys.settrace(None)  # a debugger or tracer payload may leave one behind
        sys.setprofile(None)
    Path(f"{manifest}.{family}.out").write_text(json.dumps(outcome, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
