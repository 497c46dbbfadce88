"""The subject of an assessment as a plan names it: the target from its `target` section, built without
executing anything from an untrusted file, and the data from its `data` sections.

torch: the module comes from the user's own code (`factory`), the weights from a state dict read with
`torch.load(weights_only=True)` (or safetensors). onnx: onnxruntime, no custom-op libraries. sklearn pickles
and TorchScript archives can run code when loaded: TorchScript is refused unless the plan says `trusted: true`,
and an untrusted scikit-learn file is loaded only if the supply-chain scanner calls it safe, through an
unpickler that can import nothing outside the scanner's allow list. `load_model_object` and `detect_kind` serve
`aisec inspect` too, which loads what users download: the kind told from the file's bytes, the input spec
given or inferred from the model and data. A served model (`kind: http`) is an HttpTarget: no file, no hash,
its headers' `${NAME}` references read from the environment when it is built.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aisec.assessment.plan import DataSection, HttpTargetSection, TargetSection
from aisec.core.errors import BadInputError, DataError, ModelLoadError
from aisec.core.hashing import file_sha256
from aisec.core.user_code import import_callable
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData, as_labelled
from aisec.targets.base import InputSpec, Target

if TYPE_CHECKING:
    from aisec.targets.http_target import HttpTarget


def load_target(section: TargetSection | HttpTargetSection) -> tuple[Target, str | None]:
    """The target described by a plan, and the sha256 of its model file (None for a served model: no file)."""
    if isinstance(section, HttpTargetSection):
        return http_target(section), None
    path = Path(section.path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    return plan_target(section), file_sha256(path)


def plan_target(section: TargetSection) -> Target:
    """The target described by a plan (its file hashed by the caller, or already by the scanner)."""
    model = load_model_object(section.kind, Path(section.path), section.factory, section.trusted)
    return target_of(section.kind, model, plan_spec(section), device=section.device)


def http_target(section: HttpTargetSection) -> HttpTarget:
    """The HTTP target a plan describes, its headers' `${NAME}` references read from the environment."""
    if importlib.util.find_spec("httpx") is None:
        raise ModelLoadError(f"{section.url}: HTTP targets need httpx: pip install 'aisec[guard]'")
    from aisec.targets.http_target import HttpTarget

    return HttpTarget(
        section.url,
        plan_spec(section),
        returns=section.returns,
        score_kind=section.score_kind,
        headers={name: _expanded(value, f"target.headers.{name}") for name, value in section.headers.items()},
        input_field=section.request.field,
        scores_field=section.response.scores,
        labels_field=section.response.labels,
        batch_size=section.batch_size,
        timeout_s=section.timeout_s,
        retries=section.retries,
    )


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expanded(value: str, field: str) -> str:
    """`value` with each `${NAME}` replaced by the environment variable NAME; BadInputError naming an unset one."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise BadInputError(
                f"{field}: environment variable {name} is not set (a plan names secrets as ${{{name}}}; the "
                "environment holds them)"
            )
        return os.environ[name]

    return _ENV_REFERENCE.sub(lookup, value)


def plan_spec(section: TargetSection | HttpTargetSection) -> InputSpec:
    """The input spec a plan's `target.input` gives."""
    given = section.input
    return InputSpec(tuple(given.shape), given.num_classes, given.lower, given.upper)


def load_model_object(kind: str, path: Path, factory: str | Callable[[], Any] | None, trusted: bool) -> Any:
    """The model in `path` as an object a target is built over (`target_of`, or
    `aisec.targets.from_object.target_for` with an inferred spec): for "torch" the module `factory` builds with
    the file's state dict loaded into it; for "torchscript" the scripted module (only when `trusted`); for
    "onnx" the path itself (onnxruntime reads it when the target is made); for "sklearn" the estimator, through
    the scanner and the allow-list unpickler unless `trusted`. A `factory` given as `package.module:function`
    is imported as the plan field `target.factory`."""
    if kind == "onnx":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            raise ModelLoadError(f"{path}: ONNX targets need the onnx extra: pip install 'aisec[onnx]'")
        return path
    if kind == "torchscript" and not trusted:
        raise ModelLoadError(
            f"{path}: a torchscript file runs its own code when it is loaded; aisec refuses to load it unless the "
            "plan declares `trusted: true` (only for files you made or have verified)"
        )
    if kind == "sklearn":
        return _load_sklearn(path, trusted)
    if kind == "torchscript":
        return _load_torchscript(path)
    if kind != "torch":
        raise ModelLoadError(
            f"{path}: unknown model kind {kind!r}; choose torch, torchscript, onnx or sklearn"
        )
    if factory is None:
        raise ModelLoadError(
            f"{path}: a torch state dict needs a factory, the function that builds its module"
        )
    return _load_torch(path, factory)


def target_of(kind: str, model: Any, spec: InputSpec, *, device: str | None = None) -> Target:
    """The target over a model `load_model_object(kind, ...)` returned: OnnxTarget for "onnx" (whatever the
    file is named), `sklearn_target` for "sklearn", TorchTarget for the torch kinds."""
    if kind == "onnx":
        from aisec.targets.onnx_target import OnnxTarget

        return OnnxTarget(model, spec)
    if kind == "sklearn":
        from aisec.targets.sklearn_models import sklearn_target

        return sklearn_target(model, spec)
    from aisec.targets.torch_target import TorchTarget

    return TorchTarget(model, spec, device=device)


def detect_kind(path: Path, fmt: str | None = None) -> str:
    """The model kind ("torch", "torchscript", "onnx" or "sklearn") of the file at `path`, from the format
    the supply-chain scanner recognises in its bytes (`fmt`, when the file has been scanned already): a
    PyTorch zip or legacy checkpoint and safetensors hold a state dict ("torch"); a PyTorch zip with a `code/`
    folder beside its `constants.pkl` is a TorchScript archive; a pickle or joblib file, compressed or not, is
    taken for a scikit-learn estimator. ModelLoadError naming the format for any other file."""
    if fmt is None:
        from aisec.defend.supply_chain.scanner import scan_file

        fmt = scan_file(path, hash_content=False).format
    inner = fmt.rsplit("(", 1)[-1].rstrip(")")  # a compressed stream's content: "zlib(joblib)" -> "joblib"
    kind = _KINDS.get(inner)
    if kind is None:
        raise ModelLoadError(
            f"{path}: its bytes are {fmt}, not a model file aisec loads (a torch state dict, a TorchScript "
            "archive, an ONNX model or a scikit-learn pickle); name the kind if it is one of them"
        )
    return kind


_KINDS = {
    "pytorch-zip": "torch",
    "pytorch-legacy": "torch",
    "safetensors": "torch",
    "torchscript": "torchscript",
    "onnx": "onnx",
    "pickle": "sklearn",
    "joblib": "sklearn",
}


def _load_torch(path: Path, factory: str | Callable[[], Any]) -> Any:
    import torch

    build = import_callable(factory, "target.factory") if isinstance(factory, str) else factory
    module = build()
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"target.factory {_name(factory)!r} returned {type(module).__name__}, not a torch nn.Module"
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
        raise ModelLoadError(f"{path}: weights do not fit {_name(factory)}: {' '.join(first[:3])}") from None
    return module


def _name(factory: str | Callable[[], Any]) -> str:
    return factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))


def _load_torchscript(path: Path) -> Any:
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")  # trusted: declared by the caller
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable TorchScript archive ({type(e).__name__})") from None


def _load_sklearn(path: Path, trusted: bool) -> Any:
    """A trusted file through joblib; any other through `aisec.load_model`, which scans it first and refuses
    it unless the scan says safe, then unpickles it with only the allow list's globals importable."""
    import joblib

    from aisec.defend.supply_chain.loading import load_model

    if not trusted:
        return load_model(path)
    try:
        return joblib.load(path)  # trusted: declared by the caller
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable scikit-learn pickle ({type(e).__name__})") from None


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
