"""What an assessment produces: findings with figures, their provenance and the policy verdict.

These types carry no torch objects, so the report writers (and the JSON schema in
`aisec/report/schema/assessment.schema.json`) depend on nothing heavier than the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from aisec.core.attack_class import AttackClass
from aisec.core.severity import Severity


@dataclass(frozen=True)
class Estimate:
    """A proportion estimated from n samples, with its confidence interval."""

    value: float
    lower: float
    upper: float
    n: int
    method: str = "Wilson score interval, 95%"


@dataclass(frozen=True)
class Metric:
    """One figure of a finding. `value` is a plain number or an Estimate with its interval.

    `id` is stable across releases, for programs: snake_case, with `@` and the parameter for a figure measured
    at one of several values of it (`robust_accuracy@0.05`); `name` is for people and may change. A verdict is
    a bool (`flagged`), a class index an int, a missing figure None.
    """

    id: str = field(kw_only=True)
    name: str
    value: bool | float | Estimate | None
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Chart:
    """Data for one plot; the HTML writer draws it (a probe never draws)."""

    id: str
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    log_x: bool = False
    log_y: bool = False
    kind: Literal["line", "bar"] = "line"  # bar: one bar per x value (e.g. feature importance)


@dataclass(frozen=True)
class Example:
    """An original input and what the attack made of it; images as nested lists (H, W) or (H, W, C) in [0, 1]."""

    caption: str
    original: list[Any]
    adversarial: list[Any]
    true_label: int
    original_prediction: int
    adversarial_prediction: int
    perturbation_norm: float
    budget: float | None


@dataclass(frozen=True)
class Picture:
    """One image with a caption and short facts (e.g. a reconstructed class beside its real examples);
    pixels as nested lists (H, W) or (H, W, C) in [0, 1]."""

    caption: str
    image: list[Any]
    facts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Gallery:
    title: str
    pictures: tuple[Picture, ...]


@dataclass(frozen=True)
class Table:
    """Figures in rows, one cell per column; column headings are unique."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        if len(set(self.columns)) < len(self.columns):
            raise ValueError(f"table {self.title!r}: column headings repeat: {self.columns}")

    def column(self, name: str) -> tuple[Any, ...]:
        """The cells of one column, in row order; KeyError naming the columns there are."""
        if name not in self.columns:
            raise KeyError(f"table {self.title!r} has no column {name!r}; it has {self.columns}")
        i = self.columns.index(name)
        return tuple(row[i] for row in self.rows)

    def records(self) -> list[dict[str, Any]]:
        """The rows as mappings from column heading to cell."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class PolicyCheck:
    """One threshold of the plan's policy applied to one figure."""

    rule: str
    threshold: float
    observed: float
    passed: bool
    description: str = ""


@dataclass(frozen=True)
class ModelFile:
    """A model the assessment trained (a defended model), so that the user can deploy what was measured: the
    report writer saves `content` as `models/<file_name>` beside the reports, which carry its name and sha256
    (not its bytes)."""

    file_name: str
    sha256: str
    description: str
    content: bytes = field(repr=False, compare=False, metadata={"report": False})


@dataclass(frozen=True)
class Provenance:
    """How every figure of a finding was obtained."""

    tool_version: str
    seed: int
    samples: int
    model_sha256: str | None
    data_sha256: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One conclusion of a probe: what was found, how bad it is, what to do, and the figures behind it.

    rule_id is stable across runs (e.g. AISEC-EVA-001) so that SARIF and JUnit consumers can track it.
    `reliable` is False when a check (e.g. gradient masking) says the figures cannot be trusted.
    """

    rule_id: str
    title: str
    attack_class: AttackClass
    severity: Severity
    message: str
    recommendation: str
    provenance: Provenance
    metrics: tuple[Metric, ...] = ()
    tables: tuple[Table, ...] = ()
    charts: tuple[Chart, ...] = ()
    examples: tuple[Example, ...] = ()
    galleries: tuple[Gallery, ...] = ()
    policy: tuple[PolicyCheck, ...] = ()
    models: tuple[ModelFile, ...] = ()
    reliable: bool = True
    # The id of the metric that sums this finding up, where the probe decides it (e.g. robust accuracy at the
    # budget the severity is judged at); None leaves it to the rule (`assessment.rules.headline_metric`).
    headline: str | None = None

    def __post_init__(self) -> None:
        ids = [m.id for m in self.metrics]
        if len(set(ids)) < len(ids):
            raise ValueError(f"{self.rule_id}: metric ids repeat: {ids}")
        if self.headline is not None and self.headline not in ids:
            raise ValueError(f"{self.rule_id}: headline {self.headline!r} is not one of its metrics {ids}")

    @property
    def breaks_policy(self) -> bool:
        return any(not check.passed for check in self.policy)

    def metric(self, metric_id: str) -> Metric:
        """The metric with this id; KeyError naming the ids there are."""
        for metric in self.metrics:
            if metric.id == metric_id:
                return metric
        raise KeyError(f"{self.rule_id} has no metric {metric_id!r}; it has {[m.id for m in self.metrics]}")


@dataclass(frozen=True)
class SubjectInfo:
    """The model and data an assessment was run on."""

    target_kind: str
    access: str
    input_shape: tuple[int, ...]
    num_classes: int
    model_source: str | None
    model_sha256: str | None
    data_name: str
    data_samples: int
    data_sha256: str
    input_spec_source: str = "plan"  # "plan", or how aisec.assess inferred the spec from the model and data


@dataclass(frozen=True)
class Assessment:
    """Everything a report writer needs; writers never run attacks."""

    name: str
    tool_version: str
    started_at: str  # ISO 8601, UTC
    duration_s: float
    subject: SubjectInfo
    threat_model: dict[str, Any]
    findings: tuple[Finding, ...]
    plan_path: str | None = None
    plan_sha256: str | None = None

    @property
    def passed(self) -> bool:
        """True when no finding breaks a policy threshold of the plan."""
        return not any(f.breaks_policy for f in self.findings)
