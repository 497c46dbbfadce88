"""Validation of current data against a reference (`aisec validate`, the plan's `probes.data_validation`):
schema and ranges, per-feature and multivariate drift, labels and the model on them, exact label changes,
duplicates and leakage, and dependence on one source. `validate` has both data sets; `validate_window` checks a
window of incoming data against a saved reference sketch, without the reference (monitoring)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.duplicates import DuplicateReport, count_in_digests, find_duplicates
from aisec.defend.data_validation.feature_drift import (
    DriftConfig,
    FeatureDrift,
    feature_drift,
    smallest_detectable_shift,
)
from aisec.defend.data_validation.image_summary import tabular_view
from aisec.defend.data_validation.label_shift import (
    LabelDrift,
    ModelOnCurrent,
    Predict,
    detectable_change_rate,
    label_drift,
    model_on_current,
)
from aisec.defend.data_validation.multivariate_drift import MultivariateDrift, multivariate_drift
from aisec.defend.data_validation.records import Records
from aisec.defend.data_validation.reference_sketch import (
    DEFAULT_BINS,
    SAMPLE_ROWS,
    ReferenceSketch,
    build_sketch,
)
from aisec.defend.data_validation.schema_check import SchemaCheck, check_schema
from aisec.defend.data_validation.snapshot_diff import SnapshotDiff, diff_snapshots
from aisec.defend.data_validation.source_dependence import Fit, SourceDependence, source_dependence


@dataclass(frozen=True)
class ValidationConfig:
    """What to run and at which levels. The data set's false-alarm budget for drift is 0.05: `drift.fdr` for
    the per-feature tests (Benjamini-Hochberg), `multivariate_alpha` for the two-sample tests."""

    drift: DriftConfig = field(default_factory=DriftConfig)
    multivariate: bool = True
    multivariate_alpha: float = 0.01
    label_alpha: float = 0.01
    duplicates: bool = True
    near_tolerance: float = 1e-3
    max_source_share: float = 0.5
    bins: int = DEFAULT_BINS
    sample_rows: int = SAMPLE_ROWS
    seed: int = 0


@dataclass(frozen=True)
class ValidationResult:
    """Every check's result; None where a check did not apply (no labels, no keys, no model, no sources)."""

    reference: str
    current: str
    schema: SchemaCheck
    features: tuple[FeatureDrift, ...]
    smallest_detectable_shift: float
    multivariate: MultivariateDrift | None
    labels: LabelDrift | None
    snapshot: SnapshotDiff | None
    label_change_detectable_at: float | None
    model: ModelOnCurrent | None
    duplicates: DuplicateReport | None
    leaked_records: int | None  # windows: current records equal to a reference record, by digest
    sources: SourceDependence | None
    timings: dict[str, float]

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def drift_alarm(self) -> bool:
        """Whether the data set drifted: a feature, or the data as a whole."""
        return bool(self.drifted_features) or (self.multivariate is not None and self.multivariate.drifted)

    @property
    def label_change_rate(self) -> float | None:
        """Relabelled records as a share of the records both snapshots hold."""
        if self.snapshot is None or self.snapshot.old_count == 0:
            return None
        matched = self.snapshot.new_count - len(self.snapshot.added)
        return len(self.snapshot.label_changes) / matched if matched else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, every check's figures."""
        return {
            "reference": self.reference,
            "current": self.current,
            "drift_alarm": self.drift_alarm,
            "drifted_features": self.drifted_features,
            "schema": self.schema.to_dict(),
            "features": [f.to_dict() for f in self.features],
            "smallest_detectable_shift": self.smallest_detectable_shift,
            "multivariate": None if self.multivariate is None else self.multivariate.to_dict(),
            "labels": None if self.labels is None else self.labels.to_dict(),
            "snapshot": None if self.snapshot is None else self.snapshot.to_dict(),
            "label_change_rate": self.label_change_rate,
            "label_change_detectable_at": self.label_change_detectable_at,
            "model": None if self.model is None else self.model.to_dict(),
            "duplicates": None if self.duplicates is None else self.duplicates.to_dict(),
            "leaked_records": self.leaked_records,
            "sources": None if self.sources is None else self.sources.to_dict(),
            "timings": dict(self.timings),
        }


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 4)


def validate(
    reference: Records,
    current: Records,
    config: ValidationConfig = ValidationConfig(),
    *,
    predict: Predict | None = None,
    fit: Fit | None = None,
) -> ValidationResult:
    """Validate `current` against `reference`: the window checks (`validate_window`) on a sketch of the
    reference, then what needs both data sets whole: the exact snapshot comparison (by key when both have
    keys, else by content when both have labels), duplicates and leakage, and source dependence when the
    reference names each record's source (`fit` retrains without each source; `predict` is the model)."""
    generator = np.random.default_rng(config.seed)
    clock = _Stopwatch()
    with clock.stage("sketch"):
        sketch = build_sketch(
            reference, bins=config.bins, sample_rows=config.sample_rows, generator=generator
        )
    inputs = _ModelInputs(current, reference)
    window = _window_checks(sketch, current, config, generator, predict, clock, inputs)
    snapshot = None
    detectable = None
    if _comparable_records(reference, current):
        with clock.stage("snapshot_diff"):
            snapshot = diff_snapshots(reference, current)
        if snapshot.label_changes and sketch.labels is not None:
            transitions = {
                (str(old), str(new)): count
                for old, row in snapshot.transitions.items()
                for new, count in row.items()
            }
            detectable = detectable_change_rate(
                sketch.labels, transitions, len(snapshot.label_changes), alpha=config.label_alpha
            )
    duplicates = None
    if config.duplicates:
        with clock.stage("duplicates"):
            duplicates = find_duplicates(
                reference,
                current,
                near_tolerance=config.near_tolerance,
                generator=generator,
                reference_digests=sketch.digests,
            )
    sources = None
    if reference.sources is not None:
        with clock.stage("sources"):
            sources = _source_dependence(reference, current, config, predict, fit, inputs)
    return ValidationResult(
        reference=reference.path,
        current=current.path,
        schema=window.schema,
        features=window.features,
        smallest_detectable_shift=window.smallest_detectable_shift,
        multivariate=window.multivariate,
        labels=window.labels,
        snapshot=snapshot,
        label_change_detectable_at=detectable,
        model=window.model,
        duplicates=duplicates,
        leaked_records=None,
        sources=sources,
        timings=clock.timings,
    )


def validate_window(
    sketch: ReferenceSketch,
    current: Records,
    config: ValidationConfig = ValidationConfig(),
    *,
    predict: Predict | None = None,
) -> ValidationResult:
    """Check a window of incoming data against a saved reference sketch: schema, per-feature and multivariate
    drift, labels, the model's predictions (tabular data) and records equal to a reference record."""
    generator = np.random.default_rng(config.seed)
    clock = _Stopwatch()
    result = _window_checks(sketch, current, config, generator, predict, clock, _ModelInputs(current))
    with clock.stage("leakage"):
        leaked = count_in_digests(sketch.digests, current)
    return replace(result, leaked_records=leaked, timings=clock.timings)


def _window_checks(
    sketch: ReferenceSketch,
    current: Records,
    config: ValidationConfig,
    generator: np.random.Generator,
    predict: Predict | None,
    clock: _Stopwatch,
    inputs: _ModelInputs,
) -> ValidationResult:
    with clock.stage("schema"):
        view = tabular_view(current)  # images summarised once for every check below
        schema = check_schema(sketch, current, view=view)
    with clock.stage("feature_drift"):
        features = feature_drift(sketch, view, config.drift)
    multivariate = None
    if config.multivariate and sketch.numeric:
        with clock.stage("multivariate_drift"):
            multivariate = multivariate_drift(
                sketch.sample,
                _numeric_sample(sketch, view, config.sample_rows, generator),
                generator=generator,
                alpha=config.multivariate_alpha,
            )
    labels = None
    if sketch.labels is not None and current.labels is not None:
        with clock.stage("labels"):
            labels = label_drift(sketch.labels, current.labels, alpha=config.label_alpha)
    model = None
    if predict is not None:
        with clock.stage("model"):
            model = _model_figures(sketch, predict, config, inputs)
    return ValidationResult(
        reference=sketch.source,
        current=current.path,
        schema=schema,
        features=features,
        smallest_detectable_shift=smallest_detectable_shift(
            sketch.rows, len(current), max(1, len(features)), config.drift
        ),
        multivariate=multivariate,
        labels=labels,
        snapshot=None,
        label_change_detectable_at=None,
        model=model,
        duplicates=None,
        leaked_records=None,
        sources=None,
        timings=clock.timings,
    )


def _numeric_sample(
    sketch: ReferenceSketch, view: Records, rows: int, generator: np.random.Generator
) -> np.ndarray:
    """At most `rows` records of `view` (the current data as columns; seeded, without replacement), numeric
    columns in the sketch's order."""
    by_name = {c.name: c.values for c in view.columns}
    chosen = np.sort(generator.choice(len(view), size=min(rows, len(view)), replace=False))
    return np.stack([by_name[s.name][chosen] for s in sketch.numeric], axis=1)


def model_inputs(records: Records) -> np.ndarray:
    """What a model reads of `records`: the image array, or the numeric columns in file order as float32;
    BadInputError when a feature column is categorical."""
    if records.array is not None:
        return records.array.astype(np.float32, copy=False)
    for column in records.columns:
        if column.kind != "numeric":
            raise BadInputError(
                f"{records.path}: column '{column.name}' is categorical; a model needs numeric features"
            )
    return np.stack([c.values for c in records.columns], axis=1).astype(np.float32)


@dataclass
class _ModelInputs:
    """What a model reads of the current data and the reference (when there is one), converted once however
    many checks use it."""

    current: Records
    reference: Records | None = None

    @cached_property
    def current_x(self) -> np.ndarray:
        return model_inputs(self.current)

    @cached_property
    def reference_x(self) -> np.ndarray:
        assert self.reference is not None
        return model_inputs(self.reference)


def _model_figures(
    sketch: ReferenceSketch, predict: Predict, config: ValidationConfig, inputs: _ModelInputs
) -> ModelOnCurrent:
    """Predictions on the reference (whole, or the sketch's sample for tabular windows) against predictions
    on the current data, and accuracy per class where the current data is labelled."""
    current = inputs.current
    if inputs.reference is not None:
        reference_x, reference_y = inputs.reference_x, inputs.reference.labels
    elif sketch.schema["array"] is None:
        order = [c["name"] for c in sketch.schema["columns"]]
        by_name = {s.name: k for k, s in enumerate(sketch.numeric)}
        reference_x = sketch.sample[:, [by_name[name] for name in order]].astype(np.float32)
        reference_y = sketch.sample_labels
    else:
        raise BadInputError(
            f"{current.path}: the reference sketch of image data keeps no images, so the model's predictions "
            "cannot be compared; validate against the reference itself"
        )
    return model_on_current(
        predict,
        reference_x,
        inputs.current_x,
        reference_y=reference_y,
        current_y=current.labels,
        alpha=config.label_alpha,
    )


def _comparable_records(reference: Records, current: Records) -> bool:
    """Records can be matched exactly: by key when both have keys, by content when both have labels."""
    both_keyed = reference.keys is not None and current.keys is not None
    return both_keyed or (reference.labels is not None and current.labels is not None)


def _source_dependence(
    reference: Records,
    current: Records,
    config: ValidationConfig,
    predict: Predict | None,
    fit: Fit | None,
    inputs: _ModelInputs,
) -> SourceDependence:
    """The reference is the training data with sources; the current data, when labelled, is the test set.
    With `fit`, the full model is retrained by the same recipe as the models that leave a source out (not the
    given model, whose training may differ), so a change in accuracy is the source's doing."""
    assert reference.sources is not None
    modelled = reference.labels is not None and (predict is not None or fit is not None)
    x = inputs.reference_x if modelled else np.zeros((len(reference), 1), dtype=np.float32)
    y = reference.labels if reference.labels is not None else np.zeros(len(reference), dtype=np.int64)
    labelled_test = modelled and current.labels is not None
    return source_dependence(
        x,
        y,
        reference.sources,
        test_x=inputs.current_x if labelled_test else None,
        test_y=current.labels if labelled_test else None,
        test_sources=current.sources if labelled_test else None,
        fit=fit if modelled else None,
        predict=predict if modelled and fit is None else None,
        max_share=config.max_source_share,
        seed=config.seed,
    )
