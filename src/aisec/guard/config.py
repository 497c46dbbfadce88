"""The guard's YAML configuration, validated with pydantic; errors name the file, the line and the field.

```yaml
model: {kind: torchscript, path: model.pt, trusted: true, input: {shape: [1, 8, 8], num_classes: 10}}
keys: keys.json
limits: {requests_per_second: 20, burst: 40, rows_per_day: 100000}
output: {top_k: 3, decimals: 2}
monitor: {reference: natural.npz, prada: {}, stateful: {}, action: block}
audit_log: audit.db
audit_key: audit.key
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aisec.assessment.plan import HttpTargetSection, TargetSection, _first_error, _line_of
from aisec.core.errors import BadInputError

Action = Literal["log", "slow", "labels_only", "block"]
ACTIONS: tuple[Action, ...] = ("log", "slow", "labels_only", "block")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitsSection(_Section):
    """Per key: a rate limit in requests (GCRA: `burst` at once, then `requests_per_second`), a quota in rows
    per UTC day (a batch of 1,000 rows is 1,000 queries), and the largest request."""

    requests_per_second: float = Field(gt=0)
    burst: int = Field(1, ge=1)
    rows_per_day: int | None = Field(None, gt=0)
    max_rows_per_request: int = Field(1000, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)


class OutputSection(_Section):
    """What a key may see of the model's answer: the `top_k` classes' scores, rounded to `decimals`, or labels
    only."""

    top_k: int | None = Field(None, ge=1)
    decimals: int | None = Field(None, ge=0, le=15)
    labels_only: bool = False


class PradaSection(_Section):
    """PRADA (Juuti et al. 2019) over each client's stream (aisec.defend.robustness.prada)."""

    delta: float = Field(0.92, gt=0, lt=1)
    min_queries: int = Field(100, ge=3)
    window: int | None = Field(1000, ge=3)
    test_every: int = Field(10, ge=1)
    max_growing: int | None = Field(2000, ge=1)


class StatefulSection(_Section):
    """Stateful detection of query-based evasion (Chen, Carlini & Wagner 2020): a query too close to the
    client's recent queries. The threshold is given, or calibrated on `monitor.reference` at `fpr`."""

    k: int = Field(50, ge=1)
    buffer_size: int = Field(1000, ge=2)
    threshold: float | None = Field(None, gt=0)
    fpr: float = Field(0.001, gt=0, lt=0.5)


class CoverageSection(_Section):
    """Feature-space coverage of each client's queries (Kesarwani et al. 2018), fitted on `monitor.reference`."""

    cells: int = Field(50, ge=2)
    quantile: float = Field(0.99, gt=0.5, lt=1)
    min_queries: int = Field(100, ge=1)
    window: int = Field(200, ge=10)
    max_off_manifold: float = Field(0.5, gt=0, lt=1)


class MonitorSection(_Section):
    """Per-client monitoring of the query stream. The first alarm takes the client to `action`. With
    `escalate: true` it takes it to `first_action` instead, and each further alarm, and every `escalate_every`
    rows a flagged client goes on sending (None: alarms only), one step further along log -> slow -> labels_only
    -> block, up to `action`. A slowed client waits `slow_down_s` per 100 rows (at least once per request)."""

    reference: Path | None = Field(None, description="an .npz with `x`: natural inputs to calibrate on")
    prada: PradaSection | None = None
    stateful: StatefulSection | None = None
    coverage: CoverageSection | None = None
    action: Action = "block"
    escalate: bool = False
    first_action: Action = "slow"
    escalate_every: int | None = Field(50, ge=1)
    slow_down_s: float = Field(1.0, ge=0, le=60)

    @model_validator(mode="after")
    def _ladder(self) -> MonitorSection:
        if "first_action" in self.model_fields_set and ACTIONS.index(self.first_action) > ACTIONS.index(
            self.action
        ):
            raise ValueError(
                f"first_action {self.first_action!r} comes after action {self.action!r} on the ladder"
            )
        return self

    @model_validator(mode="after")
    def _calibration_data(self) -> MonitorSection:
        if self.prada is None and self.stateful is None and self.coverage is None:
            raise ValueError("name at least one monitor: prada, stateful or coverage")
        if self.reference is None:
            if self.coverage is not None:
                raise ValueError("monitor.coverage is fitted on natural data: give monitor.reference")
            if self.stateful is not None and self.stateful.threshold is None:
                raise ValueError(
                    "monitor.stateful needs a `threshold`, or monitor.reference (natural data to calibrate it on)"
                )
        return self


class ScreeningSection(_Section):
    """Input detectors of defend/robustness/detection (torch models) and an out-of-distribution score (the
    maximum softmax probability, Hendrycks & Gimpel 2017), each calibrated on `reference` at `fpr`. A flagged
    row is rejected (422) or only recorded (`action: flag`)."""

    reference: Path = Field(description="an .npz with `x` (and `y` for mahalanobis): clean natural inputs")
    input_detectors: tuple[Literal["feature_squeezing", "mahalanobis"], ...] = ()
    ood: bool = True
    fpr: float = Field(0.01, gt=0, lt=0.5)
    action: Literal["reject", "flag"] = "reject"


class RedisSection(_Section):
    """Where several workers share limits and monitor state. When Redis cannot be reached the guard fails
    closed (503) or falls back to per-process state, as `on_failure` says, and logs it."""

    url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    on_failure: Literal["fail_closed", "local"] = "fail_closed"
    prefix: str = "aisec:guard:"


class GuardConfig(_Section):
    """The whole configuration. `model` is a local model as in plans; `upstream` a served one (an HTTP target
    as in plans); give one."""

    model: TargetSection | None = None
    upstream: HttpTargetSection | None = None
    keys: Path
    limits: LimitsSection
    output: OutputSection = OutputSection()
    tiers: dict[str, OutputSection] = Field(default_factory=dict)
    screening: ScreeningSection | None = None
    monitor: MonitorSection | None = None
    audit_log: str | None = None
    audit_key: Path | None = None
    audit_checkpoint_every: int = Field(100, ge=1)
    redis: RedisSection | None = None

    @model_validator(mode="after")
    def _one_model(self) -> GuardConfig:
        if (self.model is None) == (self.upstream is None):
            raise ValueError("give exactly one of `model` (a local model) or `upstream` (a served one)")
        if (self.audit_log is None) != (self.audit_key is None):
            raise ValueError("`audit_log` and `audit_key` (the log's Ed25519 signing key) go together")
        if (
            self.screening is not None
            and self.screening.input_detectors
            and (self.model is None or self.model.kind not in ("torch", "torchscript"))
        ):
            raise ValueError("screening.input_detectors need a local torch model (they read its layers)")
        return self

    def output_for(self, tier: str) -> OutputSection:
        """The output a key of `tier` may see: its tier's section, else the default `output`."""
        return self.tiers.get(tier, self.output)


def load_config(path: str | Path) -> GuardConfig:
    """Read and validate a guard configuration; relative paths are resolved against its folder. BadInputError
    naming the file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the guard configuration: {e.strerror or e}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        where = getattr(e, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise BadInputError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise BadInputError(
            f"{path}: a guard configuration is a YAML mapping with `model`, `keys` and `limits`"
        )
    try:
        config = GuardConfig.model_validate(data)
    except ValidationError as e:
        loc, field, message = _first_error(e)
        raise BadInputError(f"{path}:{_line_of(node, loc)}: {field}: {message}") from None
    return resolved(config, path.resolve().parent)


def resolved(config: GuardConfig, base: Path) -> GuardConfig:
    """The configuration with its relative file paths taken from `base`."""

    def under(p: Path | None) -> Path | None:
        return None if p is None else base / p

    update: dict[str, Any] = {"keys": base / config.keys, "audit_key": under(config.audit_key)}
    if config.model is not None:
        update["model"] = config.model.model_copy(update={"path": base / config.model.path})
    if config.monitor is not None:
        update["monitor"] = config.monitor.model_copy(update={"reference": under(config.monitor.reference)})
    if config.screening is not None:
        update["screening"] = config.screening.model_copy(
            update={"reference": base / config.screening.reference}
        )
    if config.audit_log is not None and "://" not in config.audit_log:
        update["audit_log"] = str(base / config.audit_log)
    return config.model_copy(update=update)
