"""The subject of an assessment as a plan names it: the target from its `target` section, built without
executing anything from an untrusted file, and the data from its `data` sections.

torch: the module comes from the user's own code (`factory`), the weights from a state dict read with
`torch.load(weights_only=True)` (or safetensors). onnx: onnxruntime, no custom-op libraries. sklearn pickles
and TorchScript archives can run code when loaded: TorchScript is refused unless the plan says `trusted: true`,
and an untrusted scikit-learn file is loaded only if the supply-chain scanner calls it safe, through an
unpickler that can import nothing outside the scanner's allow list.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aisec.core.errors import DataError, ModelLoadError
from aisec.core.user_code import import_callable
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData, as_labelled
from aisec.targets.base import InputSpec, Target

if TYPE_CHECKING:
    from aisec.assessment.plan import DataSection, TargetSection


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_target(section: TargetSection) -> tuple[Target, str]:
    """The target described by a plan, and the sha256 of its model file."""
    path = Path(section.path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    spec = InputSpec(
        shape=tuple(section.input.shape),
        num_classes=section.input.num_classes,
        lower=section.input.lower,
        upper=section.input.upper,
    )
    digest = file_sha256(path)
    if section.kind == "onnx":
        try:
            from aisec.targets.onnx_target import OnnxTarget
        except ImportError:
            raise ModelLoadError(
                f"{path}: ONNX targets need the onnx extra: pip install 'aisec[onnx]'"
            ) from None
        return OnnxTarget(path, spec), digest
    if section.kind == "torchscript" and not section.trusted:
        raise ModelLoadError(
            f"{path}: a torchscript file runs its own code when it is loaded; aisec refuses to load it unless the "
            "plan declares `trusted: true` (only for files you made or have verified)"
        )
    if section.kind == "sklearn":
        return _load_sklearn(path, spec, section.trusted), digest
    if section.kind == "torchscript":
        return _load_torchscript(path, spec, section.device), digest
    return _load_torch(path, spec, section.factory or "", section.device), digest


def _load_torch(path: Path, spec: InputSpec, factory: str, device: str) -> Target:
    import torch

    from aisec.targets.torch_target import TorchTarget

    module = import_callable(factory, "target.factory")()
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"target.factory {factory!r} returned {type(module).__name__}, not a torch nn.Module"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure of an untrusted file is the user's bad input, never a crash
        raise ModelLoadError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelLoadError(f"{path}: weights do not fit {factory}: {' '.join(first[:3])}") from None
    return TorchTarget(module, spec, device=device)


def _load_torchscript(path: Path, spec: InputSpec, device: str) -> Target:
    import torch

    from aisec.targets.torch_target import TorchTarget

    try:
        module = torch.jit.load(str(path), map_location="cpu")  # trusted: declared in the plan
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable TorchScript archive ({type(e).__name__})") from None
    return TorchTarget(module, spec, device=device)


def _load_sklearn(path: Path, spec: InputSpec, trusted: bool) -> Target:
    """A trusted file through joblib; any other through `aisec.load_model`, which scans it first and refuses
    it unless the scan says safe, then unpickles it with only the allow list's globals importable."""
    import joblib

    from aisec.defend.supply_chain.loading import load_model
    from aisec.targets.sklearn_models import sklearn_target

    if not trusted:
        return sklearn_target(load_model(path), spec)
    try:
        estimator = joblib.load(path)  # trusted: declared in the plan
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable scikit-learn pickle ({type(e).__name__})") from None
    return sklearn_target(estimator, spec)


def load_data(section: DataSection, *, seed: int) -> LabelledData:
    """The plan's data, subsampled with the plan's seed when `samples` is given."""
    if section.builtin is not None:
        split = load_builtin(section.builtin, seed=seed)
        data = split.test if section.split == "test" else split.train
    else:
        path = section.path
        assert path is not None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = {"x", "y"} - set(arrays.files)
                if missing:
                    raise DataError(f"{path}: missing array(s) {sorted(missing)}; an .npz needs `x` and `y`")
                data = as_labelled(arrays["x"], arrays["y"], name=path.name)
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"{path}: data file not found") from None
        except ValueError as e:  # includes object arrays, which would need pickle
            raise DataError(f"{path}: not a readable .npz of numeric arrays ({e})") from None
        except OSError as e:
            raise DataError(f"{path}: not a readable .npz file ({e})") from None
    return data.subset(section.samples, seed=seed) if section.samples else data
