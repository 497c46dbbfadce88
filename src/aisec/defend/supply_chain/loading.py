"""`aisec.load_model`: scan a model file, refuse it unless the scan says safe, then load it with the
safest mechanism its format has.

| format | loaded with |
|---|---|
| safetensors | `safetensors.numpy.load_file` (dict of numpy arrays) |
| PyTorch zip / legacy | `torch.load(weights_only=True, map_location="cpu")` |
| pickle, joblib | an unpickler whose `find_class` admits only the scanner's allow list (defence in depth: a global the static scan missed still cannot be imported) |
| .npy / .npz | `numpy.load(allow_pickle=False)` |
| ONNX | `onnx.load` (external data only from the model's folder, which the scan checked) |

TorchScript, Keras, HDF5 and GGUF are refused: their loaders run code or native parsers this package
does not wrap; load them yourself after reading the scan.
"""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path
from typing import Any

from aisec.core.errors import ModelLoadError
from aisec.defend.supply_chain.formats import pickle_policy
from aisec.defend.supply_chain.formats.pickle_policy import Risk
from aisec.defend.supply_chain.formats.pickle_vm import Global
from aisec.defend.supply_chain.result import FileScan, Verdict
from aisec.defend.supply_chain.scanner import scan_file


def load_model(path: str | os.PathLike[str]) -> Any:
    """Scan `path` and load it if, and only if, the scan's verdict is safe (see the module docstring).

    Raises ModelLoadError naming the findings when the file is not safe or its format is not loadable.
    """
    path = Path(path)
    scan = scan_file(path)
    if scan.verdict is not Verdict.SAFE:
        raise ModelLoadError(
            f"{path} was not loaded: the scan's verdict is {scan.verdict.value}: {_summary(scan)}"
        )
    fmt = scan.format
    if fmt == "safetensors":
        return _load_safetensors(path)
    if fmt in ("pytorch-zip", "pytorch-legacy"):
        import torch

        return torch.load(path, weights_only=True, map_location="cpu")
    if fmt in ("pickle", "joblib") or fmt.endswith("(joblib)") or fmt.endswith("(pickle)"):
        return _load_restricted_pickle(path)
    if fmt in ("numpy", "npz"):
        import numpy as np

        with np.load(path, allow_pickle=False) as loaded:
            return dict(loaded) if fmt == "npz" else loaded
    if fmt == "onnx":
        import onnx

        return onnx.load(str(path))
    raise ModelLoadError(
        f"{path}: aisec.load_model does not load {fmt} files (it loads safetensors, PyTorch, pickle, joblib, "
        "NumPy and ONNX models)"
    )


def _summary(scan: FileScan, limit: int = 3) -> str:
    worst = sorted(scan.findings, key=lambda f: -f.severity.rank)[:limit]
    text = "; ".join(f"{f.rule_id} {f.message} (at {f.location})" for f in worst)
    more = len(scan.findings) - len(worst)
    return text + (f"; and {more} more" if more > 0 else "")


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ModelLoadError(
            "loading safetensors needs the safetensors package: pip install safetensors"
        ) from None
    return load_file(str(path))


def _restricted_find_class(module: str, name: str) -> Any:
    if pickle_policy.classify(Global(module, name, -1)) is not Risk.ALLOWED:
        raise pickle.UnpicklingError(f"global {module}.{name} is not on aisec's allow list")
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        _restricted_find_class(module, name)
        return super().find_class(module, name)


def _load_restricted_pickle(path: Path) -> Any:
    """joblib dumps go through joblib's own unpickler (it reads arrays inline), restricted the same way."""
    try:
        import joblib.numpy_pickle as joblib_pickle
    except ImportError:
        joblib_pickle = None
    try:
        if joblib_pickle is not None:
            return _load_joblib_restricted(path, joblib_pickle)
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle).load()  # scanned safe; find_class admits the allow list only
    except pickle.UnpicklingError as error:
        raise ModelLoadError(f"{path}: {error}") from None


def _load_joblib_restricted(path: Path, joblib_pickle: Any) -> Any:
    """joblib's reader (decompression, inline arrays) with the allow list on find_class. It goes through
    joblib's internal `_validate_fileobject_and_memmap`, the step `joblib.load` takes before unpickling."""

    class RestrictedNumpyUnpickler(joblib_pickle.NumpyUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            _restricted_find_class(module, name)
            return super().find_class(module, name)

    with (
        open(path, "rb") as handle,
        joblib_pickle._validate_fileobject_and_memmap(handle, str(path), None) as opened,
    ):
        fileobj = opened[0]
        if isinstance(fileobj, str):  # joblib < 0.10 layout: arrays in companion files
            raise ModelLoadError(f"{path}: joblib files from before joblib 0.10 are not supported")
        takes_byte_order = (
            "ensure_native_byte_order" in inspect.signature(joblib_pickle.NumpyUnpickler).parameters
        )
        args = (str(path), fileobj, True) if takes_byte_order else (str(path), fileobj)
        return RestrictedNumpyUnpickler(*args).load()  # scanned safe; find_class admits the allow list only
