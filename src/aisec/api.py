"""`aisec.assess`: red-team a model from Python (a notebook, a script, a test) with the keys of a plan file.

    import aisec
    result = aisec.assess(model, x, y, plan={"threat_model": {"budgets": [0.05, 0.1]}, "probes": {"evasion": {}}})
    result.passed, result.findings          # the Assessment
    result.save("out/")                     # the four reports, as `aisec assess` writes them
    result                                  # in Jupyter: the HTML report

The plan takes every key of a plan file (docs/plan.md) but `data` (that is `x`, `y`) and, under `target`,
`kind`, `path` and `trusted` (the model is the object passed). `target.input` gives the input spec; without it
the spec is inferred and the report says how. `training.data` may be the training set itself, `(x, y)` or
`LabelledData`, and `target.factory` and `training.recipe` functions. Bad input raises the errors `aisec
assess` exits 2 on, with the same messages (plan errors name the field as "plan: probes.evasion: ...").

`aisec.inspect(model, x, y)` is `assess` with `probes.inspection` (a model you did not build: backdoor scan,
shortcut check, explanations) and `policy.fail_on: medium` unless the plan says otherwise;
`aisec.inspect_file(path, x, y, ...)` is `aisec inspect`: the model file is scanned (and its signature
verified) before it is loaded, and never loaded when it fails.
"""

from __future__ import annotations

import hashlib
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aisec.assessment.finding import Assessment, Finding
from aisec.assessment.plan import ObjectPlan, validate_plan
from aisec.assessment.runner import run_plan_on, task_runner
from aisec.core.errors import BadInputError, PlanError
from aisec.core.progress import Progress
from aisec.core.severity import Severity
from aisec.data.dataset import LabelledData, as_labelled
from aisec.report import FILE_NAMES
from aisec.targets.base import InputSpec
from aisec.targets.from_object import infer_spec, model_kind, target_for

DEFAULT_PLAN: Mapping[str, Any] = {"probes": {"evasion": {}}}
DEFAULT_FAIL_ON = "medium"  # aisec.inspect and aisec.inspect_file, as `aisec inspect --fail-on`
_NOT_IN_A_PYTHON_PLAN = {
    "data": "aisec.assess assesses x and y; leave `data` out",
    "target.kind": "the model is the object passed to aisec.assess; leave `kind` out",
    "target.path": "the model is the object passed to aisec.assess; leave `path` out",
    "target.trusted": "the model is the object passed to aisec.assess, which loads no file; leave `trusted` out",
}


@dataclass(frozen=True)
class AssessmentResult:
    """What `aisec.assess` returns: the Assessment, its reports on demand, and its HTML in Jupyter."""

    assessment: Assessment

    @property
    def passed(self) -> bool:
        """True when no finding breaks a policy threshold of the plan."""
        return self.assessment.passed

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.assessment.findings

    def finding(self, rule_id: str) -> Finding:
        """The first finding of rule `rule_id` (e.g. AISEC-EVA-001); KeyError when there is none."""
        for finding in self.findings:
            if finding.rule_id == rule_id:
                return finding
        raise KeyError(
            f"no finding {rule_id}; the assessment has {sorted({f.rule_id for f in self.findings})}"
        )

    def save(self, folder: str | Path, formats: Sequence[str] = tuple(FILE_NAMES)) -> dict[str, Path]:
        """Write the reports (json, html, sarif, junit) into `folder`, all or none, as `aisec assess` does."""
        from aisec.report.writer import write_reports

        return write_reports(self.assessment, Path(folder), tuple(formats))

    def log_to_mlflow(self, uri: str, experiment: str = "aisec") -> str:
        """Log the assessment as a run of `experiment` (created if missing) at MLflow tracking `uri` (e.g.
        sqlite:///mlflow.db, http://...) and return the run's id, as `aisec assess --mlflow` does
        (aisec.report.mlflow_run): its reports and model card, written into a temporary folder that is removed
        after, are the run's artefacts. The result keeps no plan, so the run has the seed and threat model but
        no probe or executor parameters. Needs mlflow: pip install 'aisec[mlflow]'."""
        import tempfile

        from aisec.report.mlflow_run import log_assessment

        with tempfile.TemporaryDirectory(prefix="aisec-mlflow-") as folder:
            paths = self.save(folder)
            return log_assessment(self.assessment, paths, None, uri=uri, experiment=experiment)

    def _repr_html_(self) -> str:
        """The HTML report, in a frame so that its styles stay out of the notebook's."""
        from aisec.report.html import render_html

        page = html.escape(render_html(self.assessment), quote=True)
        return (
            f'<iframe srcdoc="{page}" style="width:100%;height:48em;border:0" title="aisec report"></iframe>'
        )


def assess(
    model: Any,
    x: Any,
    y: Any,
    plan: Mapping[str, Any] | None = None,
    *,
    progress: Progress | None = None,
    task_cache: str | os.PathLike[str] | None = None,
) -> AssessmentResult:
    """Assess `model` on inputs `x` and labels `y` (numpy arrays or tensors) as `plan` says (default: the
    evasion probe with the default threat model). `model` is a torch module (white box), a fitted
    scikit-learn classifier, the path of an .onnx file, a callable returning class scores for a float32 numpy
    batch, or an aisec Target. The plan's `executor` runs the independent jobs; with `task_cache` (a folder)
    their results are kept there and a rerun reads them back (docs/scale.md)."""
    settings = _settings(plan if plan is not None else DEFAULT_PLAN, model_kind(model))
    data = as_labelled(x, y, name="x, y")
    validated = validate_plan(settings)
    spec, spec_source = _spec(validated, model, data)
    target = target_for(model, spec, device=validated.target.device)
    tasks = task_runner(validated, Path(task_cache) if task_cache is not None else None, progress)
    try:
        assessment = run_plan_on(
            target,
            data,
            validated,
            model_source=f"{type(model).__name__} passed to aisec.assess",
            model_sha256=_model_sha256(model),
            progress=progress,
            input_spec_source=spec_source,
            tasks=tasks,
        )
    finally:
        tasks.close()
    return AssessmentResult(assessment)


def inspect(
    model: Any,
    x: Any,
    y: Any,
    *,
    plan: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> AssessmentResult:
    """Inspect a model you did not build, held in memory, on clean inputs `x` and labels `y`: `assess` with
    `probes.inspection` added to the plan's probes (its keys there configure it) and `policy.fail_on` medium
    unless the plan gives it. `model` is anything `assess` takes. A model file is inspected by
    `inspect_file`, which checks the file before loading it."""
    given = _mapping(plan if plan is not None else {})
    probes = given.get("probes") or {}
    policy = given.get("policy") or {}
    for key, value in (("probes", probes), ("policy", policy)):
        if not isinstance(value, Mapping):
            raise PlanError(f"plan: {key}: a mapping, got {type(value).__name__}")
    inspection = probes.get("inspection") or {}
    for key in ("signature", "public_key"):
        if isinstance(inspection, Mapping) and key in inspection:
            raise PlanError(
                f"plan: probes.inspection.{key}: aisec.inspect checks no file (the model is the object passed); "
                "use aisec.inspect_file"
            )
    settings = {
        **given,
        "probes": {**probes, "inspection": inspection},
        "policy": {"fail_on": DEFAULT_FAIL_ON, **policy},
    }
    return assess(model, x, y, settings, progress=progress)


def inspect_file(
    path: str | Path,
    x: Any,
    y: Any,
    *,
    kind: str | None = None,
    factory: str | Callable[[], Any] | None = None,
    trusted: bool = False,
    signature: str | Path | None = None,
    public_key: str | Path | None = None,
    spec: InputSpec | None = None,
    inspection: Mapping[str, Any] | None = None,
    fail_on: str | None = DEFAULT_FAIL_ON,
    seed: int = 0,
    progress: Progress | None = None,
) -> AssessmentResult:
    """Inspect the model file at `path` as `aisec inspect` does: the static scan and, with `public_key`, the
    signature (default `<path>.sig`) before anything is loaded; then the model, loaded by `kind` ("torch",
    "torchscript", "onnx", "sklearn"; default: told from the file's bytes), with `factory` (a function or
    `package.module:function`) building the module of a torch state dict and `trusted` admitting TorchScript;
    the input spec `spec`, or inferred from the model and `x`; and the checks of `inspection` (the keys of
    `probes.inspection`: backdoor_scan, shortcuts, explanations, samples). `fail_on` None fails only a model
    the file checks kept from being loaded."""
    from aisec.assessment.inspect_file import inspect_model_file, inspection_section
    from aisec.assessment.plan import PolicySection

    section = inspection_section({**(inspection or {}), "signature": signature, "public_key": public_key})
    policy = PolicySection(fail_on=_severity(fail_on))
    assessment = inspect_model_file(
        path,
        as_labelled(x, y, name="x, y"),
        kind=kind,
        factory=factory,
        trusted=trusted,
        spec=spec,
        section=section,
        policy=policy,
        seed=seed,
        progress=progress,
    )
    return AssessmentResult(assessment)


def _severity(fail_on: str | None) -> Severity | None:
    try:
        return None if fail_on is None else Severity(fail_on)
    except ValueError:
        raise BadInputError(
            f"fail_on {fail_on!r}: choose {', '.join(s.value for s in Severity)} (or None)"
        ) from None


def _settings(plan: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The plan as `validate_plan` takes it: keys that name a file refused, `target.kind` set from the model,
    a training set given as arrays made `LabelledData`."""
    _mapping(plan)
    target = plan.get("target") or {}
    if not isinstance(target, Mapping):
        raise PlanError("plan: target: a mapping with `input`, `device` or `factory`")
    present = {"data"} & set(plan) | {f"target.{key}" for key in target} & set(_NOT_IN_A_PYTHON_PLAN)
    if present:
        field = sorted(present)[0]
        raise PlanError(f"plan: {field}: {_NOT_IN_A_PYTHON_PLAN[field]}")
    settings = {**plan, "target": {**target, "kind": kind}}
    training = plan.get("training")
    if isinstance(training, Mapping) and _is_data(training.get("data")):
        given = training["data"]
        data = given if isinstance(given, LabelledData) else as_labelled(*given, name="training data")
        settings["training"] = {**training, "data": data}
    return settings


def _mapping(plan: Any) -> Mapping[str, Any]:
    if not isinstance(plan, Mapping):
        raise PlanError(f"plan: a plan is a mapping with the keys of a plan file, got {type(plan).__name__}")
    return plan


def _is_data(value: Any) -> bool:
    """A training set given in Python: LabelledData or an (x, y) pair (a plan file's section is a mapping)."""
    return isinstance(value, LabelledData) or (isinstance(value, (tuple, list)) and len(value) == 2)


def _spec(plan: ObjectPlan, model: Any, data: LabelledData) -> tuple[InputSpec, str]:
    given = plan.target.input
    if given is None:
        return infer_spec(model, data.x, data.y)
    spec = InputSpec(tuple(given.shape), given.num_classes, given.lower, given.upper)
    return spec, "plan"


def _model_sha256(model: Any) -> str | None:
    """SHA-256 of a torch module's state dict (names, shapes, dtypes and values in order) or of an ONNX
    file; None for other models, whose content aisec cannot see."""
    import torch

    kind = model_kind(model)
    if kind == "onnx":
        return hashlib.sha256(Path(model).read_bytes()).hexdigest()
    if kind != "torch":
        return None
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
