"""Inspect a model file you did not build, with some clean data (`aisec inspect`, `aisec.inspect_file`).

In order: the file checks (`model_file.check_model_file`: the static scan, then the signature when a key is
given), which keep a file that fails them from being loaded; the model loaded by its kind (told from the
file's bytes unless given: `subject.detect_kind`); the input spec, given or inferred from the model and the
data (the report says how); then the inspection probe (`probes.inspection`: the behavioural backdoor scan, the
shortcut check, explanations). The user's input (kind, trust, factory, data shape, NaN, bounds, a model with
one output) is checked before the probe spends anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from aisec.assessment.finding import Assessment
from aisec.assessment.model_file import FileChecks
from aisec.assessment.plan import InspectionProbeSection, PolicySection, ProbesSection
from aisec.assessment.runner import behind_file_checks, run_assessment
from aisec.assessment.subject import detect_kind, load_model_object, target_of
from aisec.core.errors import BadInputError, DataError, ModelLoadError
from aisec.core.progress import NullProgress, Progress
from aisec.data.dataset import LabelledData, check_labels
from aisec.targets.base import Access, InputSpec, Target
from aisec.targets.from_object import infer_spec

KINDS = ("torch", "torchscript", "onnx", "sklearn")


def inspection_section(settings: Mapping[str, Any]) -> InspectionProbeSection:
    """`probes.inspection` from keyword settings (backdoor_scan, shortcuts, explanations, samples, signature,
    public_key); BadInputError "inspection.<field>: ..." when one is wrong."""
    try:
        return InspectionProbeSection.model_validate(dict(settings))
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise BadInputError(
            f"inspection{'.' + field if field else ''}: {first['msg'].removeprefix('Value error, ')}"
        ) from None


def inspect_model_file(
    path: str | Path,
    data: LabelledData,
    *,
    kind: str | None = None,
    factory: str | Callable[[], Any] | None = None,
    trusted: bool = False,
    spec: InputSpec | None = None,
    section: InspectionProbeSection | None = None,
    policy: PolicySection | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Assessment:
    """Inspect the model in `path` on clean `data` (see the module docstring): the file checks' findings come
    first; when they keep the model from being loaded, they are all the assessment holds. `kind` None tells
    it from the file's bytes; `factory` builds the module a torch state dict is loaded into; `trusted` admits a
    TorchScript archive (which runs its own code when loaded) and loads a scikit-learn pickle with joblib;
    `spec` None infers the input spec from the model and the data."""
    section = section or InspectionProbeSection()
    policy = policy or PolicySection()
    progress = progress or NullProgress()
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise BadInputError(f"kind {kind!r}: choose {', '.join(KINDS)} (or none, to tell it from the file)")
    _check_data(data, spec)

    def load_and_inspect(checks: FileChecks) -> Assessment:
        chosen = kind or detect_kind(path, checks.format)
        _check_kind(path, chosen, factory, trusted)
        model = load_model_object(chosen, path, factory, trusted)
        used, spec_source = (spec, "given") if spec is not None else _inferred_spec(chosen, model, path, data)
        if used.num_classes < 2:
            raise DataError(
                f"{path}: the model has {used.num_classes} output class; inspection needs a classifier with at "
                "least two"
            )
        target = target_of(chosen, model, used)
        _check_outputs(target, data)
        return run_assessment(
            target,
            data,
            ProbesSection.model_validate({"inspection": section}),
            policy=policy,
            seed=seed,
            name=f"inspection of {path.name}",
            model_source=str(path),
            model_sha256=checks.sha256,
            progress=progress,
            input_spec_source=spec_source,
        )

    return behind_file_checks(
        path,
        data,
        section,
        policy,
        seed=seed,
        name=f"inspection of {path.name}",
        spec=spec,
        spec_source="given" if spec is not None else "not inferred: the model was not loaded",
        threat_model=None,
        assess=load_and_inspect,
        progress=progress,
    )


def _check_kind(path: Path, kind: str, factory: object, trusted: bool) -> None:
    """What loading a model of `kind` needs from the caller: trust for TorchScript, a factory for a state dict
    and none for anything else."""
    if kind == "torchscript" and not trusted:
        raise ModelLoadError(
            f"{path}: a TorchScript archive runs its own code when loaded; pass --trusted (trusted=True) only "
            "for files you made or verified"
        )
    if kind != "torch" and factory is not None:
        raise BadInputError(
            f"{path}: a factory builds the module of a torch state dict; this is a {kind} model"
        )
    if kind == "torch" and factory is None:
        raise BadInputError(
            f"{path}: a torch state dict holds weights only; give the factory that builds its module "
            "(--factory package.module:function)"
        )


def _check_data(data: LabelledData, spec: InputSpec | None) -> None:
    """The data against the given spec (shape, NaN, bounds, labels); without one, NaN at least."""
    if spec is not None:
        spec.check(data.x, what=data.name)
        check_labels(data, spec.num_classes)
    elif not torch.isfinite(data.x).all():
        bad = int((~torch.isfinite(data.x)).flatten(1).any(1).sum())
        raise DataError(f"{data.name} contains NaN or infinite values in {bad} sample(s)")


def _inferred_spec(kind: str, model: Any, path: Path, data: LabelledData) -> tuple[InputSpec, str]:
    """`infer_spec` on the loaded model; an ONNX model is inferred from its path, which must say .onnx."""
    if kind == "onnx" and path.suffix.lower() != ".onnx":
        raise BadInputError(
            f"{path}: the input spec of an ONNX model is inferred from a file named .onnx; give it "
            "(--input-shape, --classes, --bounds) or rename the file"
        )
    return infer_spec(model, data.x, data.y)


def _check_outputs(target: Target, data: LabelledData) -> None:
    """The model's scores on two samples have one column per class of the spec (a model with one output, or
    another number of classes than given, fails here rather than inside a check). Queries are not counted."""
    if not target.access.allows(Access.SCORES):
        return
    sample = data.x[:2]
    try:
        scores = target.scores(sample.to(target.device))
    except Exception as e:  # the user's model failed on their own data: say so, with what it raised
        raise DataError(
            f"the model failed on two samples of {data.name}, shape {tuple(sample.shape)}: {e}"
        ) from None
    finally:
        target.queries.reset()
    if tuple(scores.shape) != (len(sample), target.spec.num_classes):
        raise DataError(
            f"the model returned shape {tuple(scores.shape)} for {len(sample)} samples; the input spec says "
            f"{target.spec.num_classes} classes"
        )
