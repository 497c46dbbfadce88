"""An assessment as an MLflow run (docs/scale.md): parameters (seed, threat model, probes and their settings,
executor, versions, model and data digests), metrics (every finding's figures under stable names, findings by
severity), tags (verdict, rule ids, highest severity, plan digest) and the reports and model card as artefacts.

Metric names are `<rule id>.<metric id>`, the n-th finding of a rule (n >= 2) prefixed `<rule id>_<n>`; an
`@` in a metric id reads `_at_` and any other character MLflow refuses in a name reads `_`; an Estimate gives its
value and its interval's bounds (`.lower`, `.upper`), a verdict (bool) 1 or 0; a missing or non-finite figure is
not logged (as in the JSON report). `AISEC-EVA-001.robust_accuracy@0.05` is logged as
`AISEC-EVA-001.robust_accuracy_at_0.05`, `.lower` and `.upper`. The same plan gives the same names in every run.
Parameters are flattened (`threat_model.budgets`, `probes.evasion.masking_checks`), their values text or JSON
(`[0.05, 0.1]`, `true`); a setting left unset (None) is not logged. A name too long for MLflow is cut with a
digest of the whole kept, a value too long is cut and ends `[truncated]`; a name met twice gets `_2`, `_3`, ...

MLflow is imported only here, through its client with an explicit tracking URI: no process-wide MLflow state is
set. MLflow (3.2 and later) sends usage telemetry by default; its documented switch `MLFLOW_DISABLE_TELEMETRY`,
read as mlflow is imported and again at each call it would report, is set while this module imports and calls
MLflow, unless the user set it (os.environ changes for that time: another thread's MLflow calls then report
nothing either).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisec.assessment.finding import Assessment, Estimate
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.report.writer import FORMAT_FILES

if TYPE_CHECKING:
    from aisec.assessment.plan import Plan

# MLflow's limits (mlflow.utils.validation): key length, value lengths, entities per log_batch call
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
TAGS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
ARTEFACTS = "reports"  # the run's folder of the reports and model card
SQLITE_ARTEFACTS = "mlartifacts"  # a new experiment's artefacts in a SQLite store: this folder beside it
TELEMETRY_SWITCH = "MLFLOW_DISABLE_TELEMETRY"
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.\- ]")
_TRUNCATED = " [truncated]"


def log_assessment(
    assessment: Assessment,
    paths: Mapping[str, Path],
    plan: Plan | None,
    *,
    uri: str,
    experiment: str = "aisec",
) -> str:
    """Log `assessment` as a run of `experiment` (created if missing) at MLflow tracking `uri`, with the files of
    `paths` (format -> file, as `write_reports` returns them; the model card's `model_card.json` beside its
    `model_card.md` too) under `reports/`, and return the run's id. `plan` gives the probes' and executor's
    settings and the seed (None: the seed of the findings' provenance, no probe or executor parameters).

    The run ends FINISHED, or FAILED when logging fails part way (BadInputError naming the run and the URI).
    BadInputError, before any run is created, when mlflow is not installed, a report file is missing, or MLflow
    cannot open `uri` (MLflow 3.17 refuses a folder unless `MLFLOW_ALLOW_FILE_STORE=true`: use sqlite:///...).
    A new experiment in a SQLite store keeps its artefacts in `mlartifacts/` beside the database (MLflow's own
    default is `./mlruns` in the working directory).
    """
    if not uri.strip():
        raise BadInputError("MLflow tracking URI: empty; give a tracking URI such as sqlite:///mlflow.db")
    if not experiment.strip():
        raise BadInputError("MLflow experiment: empty name")
    files = _artefacts(paths)
    params = _params(assessment, plan)
    metrics = _metrics(assessment)
    tags = _tags(assessment)
    start, end = _times(assessment)
    with _without_telemetry():
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ModuleNotFoundError as e:
            if (e.name or "mlflow").partition(".")[0] != "mlflow":
                raise
            raise BadInputError("MLflow tracking needs mlflow: pip install 'aisec[mlflow]'") from None
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, uri, experiment)
            run = client.create_run(experiment_id, start_time=start, run_name=assessment.name)
            run_id: str = run.info.run_id
        except BadInputError:
            raise
        except Exception as e:
            raise BadInputError(f"MLflow tracking URI {uri!r}: MLflow cannot open it: {e}") from e
        try:
            stamp = end if end is not None else int(time.time() * 1000)
            for chunk in _chunks(params, PARAMS_PER_BATCH):
                client.log_batch(run_id, params=[Param(key, value) for key, value in chunk])
            for chunk in _chunks(tags, TAGS_PER_BATCH):
                client.log_batch(run_id, tags=[RunTag(key, value) for key, value in chunk])
            for chunk in _chunks(metrics, METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0) for key, value in chunk])
            for file in files:
                client.log_artifact(run_id, str(file), artifact_path=ARTEFACTS)
            client.set_terminated(run_id, status="FINISHED", end_time=end)
        except BaseException as e:
            status = "FAILED" if isinstance(e, Exception) else "KILLED"
            try:
                client.set_terminated(run_id, status=status)
            except Exception:  # the store that failed may fail again; the first error is the one to report
                pass
            if not isinstance(e, Exception):
                raise
            raise BadInputError(
                f"MLflow run {run_id} in experiment {experiment!r} at {uri!r}: logging failed part way "
                f"({type(e).__name__}: {e}); the run is marked FAILED"
            ) from e
    return run_id


@contextmanager
def _without_telemetry() -> Iterator[None]:
    """MLFLOW_DISABLE_TELEMETRY=true for the duration (mlflow's import and calls), unless the user set it."""
    if TELEMETRY_SWITCH in os.environ:
        yield
        return
    os.environ[TELEMETRY_SWITCH] = "true"
    try:
        yield
    finally:
        os.environ.pop(TELEMETRY_SWITCH, None)


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The id of experiment `name`, created if missing (by another process meanwhile: that one)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, artifact_location=_artefact_location(uri)))
        except Exception:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise BadInputError(
            f"MLflow experiment {name!r} at {uri!r} is deleted: restore it (mlflow experiments restore) or "
            "choose another experiment"
        )
    return str(found.experiment_id)


def _artefact_location(uri: str) -> str | None:
    """A file-backed SQLite store's artefact folder, beside the database; None (MLflow's default) otherwise."""
    prefix = "sqlite:///"
    database = uri[len(prefix) :].partition("?")[0] if uri.startswith(prefix) else ""
    if not database or database == ":memory:":
        return None
    return (Path(database).resolve().parent / SQLITE_ARTEFACTS).as_uri()


def _artefacts(paths: Mapping[str, Path]) -> list[Path]:
    """The files of `paths` with the other files of their format beside them (the model card's JSON)."""
    files: list[Path] = []
    for fmt, given in paths.items():
        path = Path(given)
        if not path.is_file():
            raise BadInputError(f"{fmt} report {path}: not a file; nothing was logged to MLflow")
        companions = [path.parent / name for name in FORMAT_FILES.get(fmt, ()) if name != path.name]
        files += [path, *(file for file in companions if file.is_file())]
    return list(dict.fromkeys(files))


def _params(assessment: Assessment, plan: Plan | None) -> list[tuple[str, str]]:
    subject = assessment.subject
    seeds = {f.provenance.seed for f in assessment.findings}
    seed = plan.seed if plan is not None else (seeds.pop() if len(seeds) == 1 else None)
    params: list[tuple[str, Any]] = [("seed", seed)]
    params += _flattened(("threat_model",), assessment.threat_model)
    if plan is not None:
        enabled = plan.probes.enabled()
        params.append(("probes", ",".join(spec.name for spec, _ in enabled)))
        for spec, section in enabled:
            params += _flattened(("probes", spec.name), section.model_dump(mode="json"))
        params += [("executor.kind", plan.executor.kind), ("executor.threads", plan.executor.threads)]
    params += [
        ("aisec.version", assessment.tool_version),
        ("model.sha256", subject.model_sha256),
        ("data.sha256", subject.data_sha256),
    ]
    named = ((_name(key), _clip(_text(value), MAX_PARAM_VALUE)) for key, value in params if value is not None)
    return _unique(named)


def _flattened(prefix: tuple[str, ...], value: Any) -> list[tuple[str, Any]]:
    """A mapping's leaves as (`prefix.key.subkey`, value); lists and scalars are leaves."""
    if not isinstance(value, Mapping):
        return [(".".join(_part(p) for p in prefix), value)]
    return [leaf for key, item in value.items() for leaf in _flattened((*prefix, str(key)), item)]


def _metrics(assessment: Assessment) -> list[tuple[str, float]]:
    metrics: list[tuple[str, float]] = [("findings", float(len(assessment.findings)))]
    for severity in Severity:
        count = sum(f.severity is severity for f in assessment.findings)
        metrics.append((f"severity.{severity.value}", float(count)))
    metrics.append(("duration_s", float(assessment.duration_s)))
    seen: dict[str, int] = {}
    for finding in assessment.findings:
        seen[finding.rule_id] = seen.get(finding.rule_id, 0) + 1
        n = seen[finding.rule_id]
        rule = _part(finding.rule_id if n == 1 else f"{finding.rule_id}_{n}")
        for metric in finding.metrics:
            key = f"{rule}.{_part(metric.id)}"
            value = metric.value
            if isinstance(value, Estimate):
                figures = [(key, value.value), (f"{key}.lower", value.lower), (f"{key}.upper", value.upper)]
            elif isinstance(value, bool):
                figures = [(key, float(value))]
            elif isinstance(value, (int, float)):
                figures = [(key, value)]
            else:  # None: a figure the probe could not measure
                figures = []
            metrics += [(name, float(v)) for name, v in figures if math.isfinite(v)]
    return _unique((_name(key), value) for key, value in metrics)


def _tags(assessment: Assessment) -> list[tuple[str, str]]:
    findings = assessment.findings
    highest = max((f.severity for f in findings), key=lambda s: s.rank, default=None)
    tags = [
        ("mlflow.runName", assessment.name),
        ("aisec.verdict", "passed" if assessment.passed else "failed"),
        ("aisec.rules", ",".join(sorted({f.rule_id for f in findings}))),
        ("aisec.highest_severity", highest.value if highest is not None else "none"),
        ("aisec.version", assessment.tool_version),
    ]
    if assessment.plan_sha256 is not None:
        tags.append(("aisec.plan_sha256", assessment.plan_sha256))
    return [(key, _clip(value, MAX_TAG_VALUE)) for key, value in tags]


def _times(assessment: Assessment) -> tuple[int | None, int | None]:
    """The assessment's start and end in ms since the epoch (None, None when `started_at` does not parse)."""
    try:
        started = datetime.fromisoformat(assessment.started_at)
    except ValueError:
        return None, None
    start = int(started.timestamp() * 1000)
    return start, start + int(round(assessment.duration_s * 1000))


def _part(text: str) -> str:
    """One part of a name in the characters MLflow takes everywhere: `@` as `_at_`, any other as `_`."""
    return _NOT_IN_A_NAME.sub("_", text.replace("@", "_at_"))


def _name(key: str) -> str:
    """A key within MLflow's length, a long one cut with its digest kept so that names stay distinct; never
    starting with `.` (MLflow refuses a name that reads as a relative path)."""
    key = key.lstrip(".") or "_"
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{key[: MAX_KEY - len(digest) - 1]}-{digest}"


def _unique(items: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The items in order, a key seen before given the first free suffix `_2`, `_3`, ..."""
    seen: set[str] = set()
    out = []
    for key, value in items:
        unique, n = key, 1
        while unique in seen:
            n += 1
            unique = _name(f"{key}_{n}")
        seen.add(unique)
        out.append((unique, value))
    return out


def _text(value: Any) -> str:
    """A parameter's value: text as it is, anything else as JSON (lists, numbers, booleans, null)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
