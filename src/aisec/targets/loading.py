"""Build a target from a plan's `target` section without executing anything from an untrusted file.

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

from aisec.errors import ModelLoadError
from aisec.targets.base import InputSpec, Target
from aisec.user_code import import_callable

if TYPE_CHECKING:
    from aisec.assess.plan import TargetSection


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
        from aisec.targets.onnx_target import OnnxTarget

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
