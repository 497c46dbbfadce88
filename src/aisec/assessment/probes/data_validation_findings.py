"""The data-validation findings (AISEC-DAT-001 to -005) from a `ValidationResult`, with the policy's verdicts:
what `aisec validate` and `probes.data_validation` report."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aisec.assessment.finding import Chart, Estimate, Finding, Metric, PolicyCheck, Provenance, Series, Table
from aisec.assessment.rules import DATA_DRIFT, DATA_SCHEMA, DUPLICATES, LABEL_CHANGES, SOURCE_DEPENDENCE
from aisec.core.severity import Severity

if TYPE_CHECKING:
    from aisec.assessment.plan import DataValidationPolicy
    from aisec.defend.data_validation.validate import ValidationResult

TABLE_ROWS = 50  # rows a report table lists; validation.json lists all


def validation_findings(
    result: ValidationResult, policy: DataValidationPolicy, provenance: Provenance
) -> list[Finding]:
    """One finding per check that applied, in rule order."""
    findings = [schema_finding(result, policy, provenance), drift_finding(result, policy, provenance)]
    if result.labels is not None or result.snapshot is not None or result.model is not None:
        findings.append(labels_finding(result, policy, provenance))
    if result.sources is not None:
        findings.append(sources_finding(result, policy, provenance))
    if result.duplicates is not None or result.leaked_records is not None:
        findings.append(duplicates_finding(result, policy, provenance))
    return findings


_CHART_CAP = 10.0  # an infinite effect (a feature constant in the reference that moved) drawn at this height


def _finite(value: float, digits: int | None = None) -> float | None:
    """`value` rounded, or None when it is NaN or infinite (JSON has neither; the table shows a blank)."""
    if not math.isfinite(value):
        return None
    return value if digits is None else round(value, digits)


def _check(
    rule: str, threshold: float, observed: float, description: str, *, at_most: bool = True
) -> PolicyCheck:
    passed = observed <= threshold if at_most else observed >= threshold
    return PolicyCheck(rule, threshold, observed, passed, description)


def _flag(rule: str, raised: bool, description: str) -> PolicyCheck:
    """A yes/no policy: fails when `raised`."""
    return PolicyCheck(rule, 0.0, float(raised), not raised, description)


def _severity(policy_checks: list[PolicyCheck], *, broken: Severity = Severity.MEDIUM) -> Severity:
    return broken if any(not c.passed for c in policy_checks) else Severity.INFO


def schema_finding(result: ValidationResult, policy: DataValidationPolicy, provenance: Provenance) -> Finding:
    schema = result.schema
    checks = [
        _check(
            "max_out_of_range_rate",
            policy.max_out_of_range_rate,
            schema.max_out_of_range_rate,
            "share of a column's values outside the reference's range",
        ),
        _check(
            "max_missing_increase",
            policy.max_missing_increase,
            schema.max_missing_increase,
            "rise of a column's share of missing values",
        ),
        _check(
            "max_unseen_category_rate",
            policy.max_unseen_category_rate,
            schema.max_unseen_rate,
            "share of a column's values in categories the reference never had",
        ),
    ]
    issues = schema.issues()
    rows = [
        (
            c.name,
            c.kind,
            round(c.reference_missing_rate, 4),
            round(c.current_missing_rate, 4),
            round(c.out_of_range_rate, 4),
            c.fractional,
            ", ".join(c.unseen),
        )
        for c in schema.columns
        if c.issues()
    ]
    message = (
        f"{len(issues)} departures from the reference's schema and ranges: " + "; ".join(issues[:5])
        if issues
        else f"All {len(schema.columns)} columns keep the reference's ranges, categories and missing values."
    )
    return Finding(
        rule_id=DATA_SCHEMA.id,
        title=DATA_SCHEMA.title,
        attack_class=DATA_SCHEMA.attack_class,
        severity=_severity(checks),
        message=message,
        recommendation=(
            "Ask the data's provider what changed before training or serving on it; values outside the "
            "reference's range are also what an input-manipulation attacker sends."
        ),
        provenance=provenance,
        metrics=(
            Metric(
                id="out_of_range_rate",
                name="Largest share of values out of range",
                value=schema.max_out_of_range_rate,
            ),
            Metric(
                id="missing_increase",
                name="Largest rise in missing values",
                value=schema.max_missing_increase,
            ),
            Metric(
                id="unseen_category_rate",
                name="Largest share of unseen categories",
                value=schema.max_unseen_rate,
            ),
            Metric(
                id="fractional_columns",
                name="Whole-number columns with fractions",
                value=float(len(schema.fractional_columns)),
            ),
            Metric(id="columns_checked", name="Columns checked", value=float(len(schema.columns))),
        ),
        tables=(
            Table(
                "Columns that depart from the reference",
                (
                    "column",
                    "kind",
                    "missing (reference)",
                    "missing (current)",
                    "out of range",
                    "fractions",
                    "unseen categories",
                ),
                tuple(rows[:TABLE_ROWS]),
            ),
        )
        if rows
        else (),
        policy=tuple(checks),
    )


def drift_finding(result: ValidationResult, policy: DataValidationPolicy, provenance: Provenance) -> Finding:
    drifted = [f for f in result.features if f.drifted]
    multivariate = result.multivariate
    checks = [
        _check(
            "max_drifted_features",
            float(policy.max_drifted_features),
            float(len(drifted)),
            "features that drifted",
        )
    ]
    if multivariate is not None and policy.fail_on_multivariate_drift:
        checks.append(
            _flag("fail_on_multivariate_drift", multivariate.drifted, "the data as a whole drifted")
        )
    ranked = sorted(result.features, key=lambda f: (not f.drifted, -f.effect))
    rows = tuple(
        (
            f.name,
            f.kind,
            f.test,
            _finite(f.statistic, 5),
            float(f"{f.p_value:.3g}"),
            float(f"{f.q_value:.3g}"),
            _finite(f.effect, 4),
            f.effect_name,
            f.drifted,
        )
        for f in ranked[:TABLE_ROWS]
    )
    metrics = [
        Metric(id="drifted_features", name="Features that drifted", value=float(len(drifted))),
        Metric(id="features_tested", name="Features tested", value=float(len(result.features))),
        Metric(
            id="smallest_detectable_shift",
            name="Smallest mean shift found at this sample size (80 % power)",
            value=result.smallest_detectable_shift,
            unit="reference std",
        ),
        Metric(
            id="largest_effect",
            name="Largest effect size",
            value=max((e for f in result.features if (e := _finite(f.effect)) is not None), default=0.0),
        ),
    ]
    tables = [
        Table(
            "Features, drifted first, then by effect size",
            ("feature", "kind", "test", "statistic", "p", "q (BH)", "effect", "effect measure", "drifted"),
            rows,
        )
    ]
    if multivariate is not None:
        metrics.append(
            Metric(id="multivariate_p", name="Two-sample tests' p (Bonferroni)", value=multivariate.p_value)
        )
        metrics += [
            Metric(id=f"{t.name}_statistic", name=f"{t.name} test statistic", value=t.statistic)
            for t in multivariate.tests
        ]
        tables.append(
            Table(
                "The data as a whole: two-sample tests",
                ("test", "statistic", "p", "permutations", "reference rows", "current rows", "reading"),
                tuple(
                    (
                        t.name,
                        round(t.statistic, 5),
                        t.p_value,
                        t.permutations,
                        t.reference_rows,
                        t.current_rows,
                        t.detail,
                    )
                    for t in multivariate.tests
                ),
            )
        )
    effects = [min(_finite(f.effect) or 0.0, _CHART_CAP) for f in result.features]
    charts = (
        (
            Chart(
                id="drift_effect",
                title="Drift effect size per feature (in file order; the table names the largest)",
                x_label="feature index",
                y_label="effect (Wasserstein / reference std, or Jensen-Shannon)",
                series=(Series("effect", tuple(float(i) for i in range(len(effects))), tuple(effects)),),
                kind="bar",
            ),
        )
        if effects
        else ()
    )
    whole = (
        ""
        if multivariate is None
        else (
            " The data as a whole "
            + ("drifted" if multivariate.drifted else "did not drift")
            + f" (two-sample tests, p = {multivariate.p_value:.3g})."
        )
    )
    names = ", ".join(f.name for f in drifted[:10]) + (" ..." if len(drifted) > 10 else "")
    message = (
        (
            f"{len(drifted)} of {len(result.features)} features drifted ({names})."
            if drifted
            else f"No feature of {len(result.features)} drifted."
        )
        + whole
        + (
            f" Shifts of {result.smallest_detectable_shift:.3g} reference standard deviations in a feature's mean "
            "are found at this sample size; smaller ones may pass unseen."
        )
    )
    return Finding(
        rule_id=DATA_DRIFT.id,
        title=DATA_DRIFT.title,
        attack_class=DATA_DRIFT.attack_class,
        severity=_severity(checks),
        message=message,
        recommendation=(
            "Find out why the drifted features moved (a new provider, a changed pipeline, a manipulated feed) "
            "and re-validate the model on data like the current before relying on it."
        ),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=tuple(tables),
        charts=charts,
        policy=tuple(checks),
    )


def labels_finding(result: ValidationResult, policy: DataValidationPolicy, provenance: Provenance) -> Finding:
    snapshot, labels, model = result.snapshot, result.labels, result.model
    checks: list[PolicyCheck] = []
    metrics: list[Metric] = []
    tables: list[Table] = []
    sentences: list[str] = []
    if snapshot is not None and result.label_change_rate is not None:
        rate = result.label_change_rate
        checks.append(
            _check(
                "max_label_change_rate",
                policy.max_label_change_rate,
                rate,
                "share of matched records relabelled",
            )
        )
        metrics += [
            Metric(id="label_change_rate", name="Matched records whose label changed", value=rate),
            Metric(id="label_changes", name="Labels changed", value=float(len(snapshot.label_changes))),
        ]
        sentences.append(
            f"{len(snapshot.label_changes)} records matched by {snapshot.matched_by} changed their label ({rate:.2%})."
        )
        if snapshot.label_changes:
            tables.append(
                Table(
                    "Labels changed, record by record",
                    ("record", "old label", "new label"),
                    tuple((c.key, str(c.old), str(c.new)) for c in snapshot.label_changes[:TABLE_ROWS]),
                )
            )
            tables.append(
                Table(
                    "Class transitions",
                    ("old label", "new label", "records"),
                    tuple(
                        (str(old), str(new), count)
                        for old, row in snapshot.transitions.items()
                        for new, count in row.items()
                    ),
                )
            )
            detectable = result.label_change_detectable_at
            metrics.append(
                Metric(
                    id="label_change_detectable_at",
                    name="Change rate the label-distribution test alone would have noticed",
                    value=detectable,
                    description="None: changes in this pattern keep the class balance, so counts never show them",
                )
            )
            sentences.append(
                "The label-distribution test alone would have noticed this pattern of changes only from "
                + (
                    f"{detectable:.2%} of records."
                    if detectable is not None
                    else "never: it keeps the class balance."
                )
            )
    if labels is not None:
        added, removed = list(labels.new_classes), list(labels.removed_classes)
        if policy.fail_on_class_change:
            checks.append(
                _flag("fail_on_class_change", bool(added or removed), "a class appeared or vanished")
            )
        if policy.fail_on_label_drift:
            checks.append(_flag("fail_on_label_drift", labels.drifted, "the labels' distribution drifted"))
        metrics += [
            Metric(id="label_drift_p", name="Label distribution test p", value=labels.p_value),
            Metric(
                id="label_js_distance",
                name="Label distribution Jensen-Shannon distance",
                value=labels.js_distance,
            ),
            Metric(id="classes_added", name="Classes that appeared", value=float(len(added))),
            Metric(id="classes_removed", name="Classes that vanished", value=float(len(removed))),
        ]
        classes = sorted(set(labels.reference_counts) | set(labels.current_counts))
        tables.append(
            Table(
                "Records per class",
                ("class", "reference", "current"),
                tuple(
                    (c, labels.reference_counts.get(c, 0), labels.current_counts.get(c, 0)) for c in classes
                ),
            )
        )
        if added or removed:
            sentences.append(f"Classes appeared: {added or 'none'}; vanished: {removed or 'none'}.")
        sentences.append(
            f"The labels' distribution {'drifted' if labels.drifted else 'did not drift'} (p = {labels.p_value:.3g})."
        )
    if model is not None:
        metrics.append(
            Metric(
                id="prediction_drift_p",
                name="Prediction distribution test p",
                value=model.prediction_drift.p_value,
            )
        )
        if model.accuracy is not None and model.lower is not None and model.upper is not None:
            n = sum(c.n for c in model.per_class)
            metrics.append(
                Metric(
                    id="current_accuracy",
                    name="Model accuracy on current data",
                    value=Estimate(model.accuracy, model.lower, model.upper, n),
                )
            )
            if policy.min_accuracy is not None:
                checks.append(
                    _check(
                        "min_accuracy",
                        policy.min_accuracy,
                        model.accuracy,
                        "model accuracy on current data",
                        at_most=False,
                    )
                )
            tables.append(
                Table(
                    "Model accuracy per class on current data",
                    ("class", "records", "correct", "accuracy", "95 % interval"),
                    tuple(
                        (c.label, c.n, c.correct, round(c.accuracy, 4), f"{c.lower:.3f}-{c.upper:.3f}")
                        for c in model.per_class
                    ),
                )
            )
            sentences.append(f"The model's accuracy on current data is {model.accuracy:.2%}.")
        sentences.append(
            f"Its predictions' distribution {'drifted' if model.prediction_drift.drifted else 'did not drift'}."
        )
    return Finding(
        rule_id=LABEL_CHANGES.id,
        title=LABEL_CHANGES.title,
        attack_class=LABEL_CHANGES.attack_class,
        severity=_severity(checks, broken=Severity.HIGH),
        message=" ".join(sentences) or "No labels to compare.",
        recommendation=(
            "Review every relabelled record with the provider before training on the new snapshot; relabelling "
            "is how a provider's change, or a poisoner, moves a model without a trace in the class counts."
        ),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=tuple(tables),
        policy=tuple(checks),
    )


def sources_finding(
    result: ValidationResult, policy: DataValidationPolicy, provenance: Provenance
) -> Finding:
    sources = result.sources
    assert sources is not None
    largest = max((s.share for s in sources.sources), default=0.0)
    checks = [_check("max_source_share", policy.max_source_share, largest, "largest share one source holds")]
    if policy.fail_on_critical_source:
        checks.append(
            _flag(
                "fail_on_critical_source",
                bool(sources.critical),
                "leaving one source out moves accuracy beyond its interval",
            )
        )
    metrics = [
        Metric(id="largest_source_share", name="Largest share of one source", value=largest),
        Metric(id="sources", name="Sources", value=float(len(sources.sources))),
        Metric(
            id="critical_sources",
            name="Sources whose removal moves accuracy",
            value=float(len(sources.critical)),
        ),
    ]
    if (
        sources.full_accuracy is not None
        and sources.full_lower is not None
        and sources.full_upper is not None
    ):
        metrics.append(
            Metric(id="full_accuracy", name="Accuracy with every source", value=sources.full_accuracy)
        )

    def cell(value: float | None) -> Any:
        return None if value is None else round(value, 4)

    rows = tuple(
        (
            s.source,
            s.records,
            round(s.share, 4),
            cell(s.accuracy),
            cell(s.left_out_accuracy),
            cell(s.change),
            s.beyond_interval,
        )
        for s in sources.sources
    )
    return Finding(
        rule_id=SOURCE_DEPENDENCE.id,
        title=SOURCE_DEPENDENCE.title,
        attack_class=SOURCE_DEPENDENCE.attack_class,
        severity=_severity(checks),
        message=" ".join(sources.warnings)
        or f"{len(sources.sources)} sources; none dominates or decides the model's accuracy.",
        recommendation=(
            "Do not let one provider decide your model: add data from others, or keep a check on the dominant "
            "source's deliveries (snapshot comparison, drift) before each retraining."
        ),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=(
            Table(
                "Sources",
                (
                    "source",
                    "records",
                    "share",
                    "accuracy on its records",
                    "accuracy without it",
                    "change",
                    "beyond interval",
                ),
                rows,
            ),
        ),
        policy=tuple(checks),
    )


def duplicates_finding(
    result: ValidationResult, policy: DataValidationPolicy, provenance: Provenance
) -> Finding:
    duplicates = result.duplicates
    rows = result.schema.current_rows
    if duplicates is not None:
        share = duplicates.leaked_share
        counts = (
            ("exact_between", "Exact copies of reference records"),
            ("near_between", "Near copies of reference records"),
            ("within_reference", "Duplicates within the reference"),
            ("within_current", "Duplicates within the current data"),
            ("conflicting_labels", "Copies with another label"),
        )
        metrics = [
            Metric(id="leaked_share", name="Current records that repeat a reference record", value=share)
        ]
        metrics += [Metric(id=key, name=name, value=float(getattr(duplicates, key))) for key, name in counts]
        tables: tuple[Table, ...] = (
            (
                Table(
                    "Examples of copies",
                    ("reference record", "current record", "distance (std)", "same label"),
                    tuple((p.reference, p.current, p.distance, p.same_label) for p in duplicates.examples),
                ),
            )
            if duplicates.examples
            else ()
        )
        message = (
            f"{duplicates.exact_between} current records are exact and {duplicates.near_between} near copies "
            f"(within {duplicates.near_tolerance:g} std, of {duplicates.near_checked} checked) of reference records; "
            f"{duplicates.conflicting_labels} of the exact copies carry another label. Within the sets: "
            f"{duplicates.within_reference} duplicates in the reference, {duplicates.within_current} in the current data."
        )
    else:
        leaked = result.leaked_records or 0
        share = leaked / rows if rows else 0.0
        metrics = [
            Metric(id="leaked_share", name="Current records that repeat a reference record", value=share)
        ]
        tables = ()
        message = f"{leaked} current records equal a reference record (by the sketch's record digests)."
    checks = [
        _check(
            "max_leaked_share",
            policy.max_leaked_share,
            share,
            "share of current records repeating the reference",
        )
    ]
    return Finding(
        rule_id=DUPLICATES.id,
        title=DUPLICATES.title,
        attack_class=DUPLICATES.attack_class,
        severity=_severity(checks),
        message=message,
        recommendation=(
            "Remove test records that repeat training records before measuring a model (they inflate its "
            "figures), and ask why a provider re-sends records, above all with other labels."
        ),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=tables,
        policy=tuple(checks),
    )


def with_monitoring_history(findings: list[Finding], history: list[dict[str, Any]]) -> list[Finding]:
    """The drift finding with the monitoring windows so far (`aisec data monitor`'s history, this window last):
    a chart of drifted features per window and a table of every window's verdict."""
    if not history:
        return findings
    windows = tuple(float(i) for i in range(1, len(history) + 1))
    chart = Chart(
        id="monitoring_drift",
        title="Monitoring: drifted features per window",
        x_label="window",
        y_label="features that drifted",
        series=(Series("drifted features", windows, tuple(float(h["drifted_features"]) for h in history)),),
    )
    table = Table(
        "Monitoring windows",
        ("window", "checked at", "file", "records", "drifted features", "multivariate p", "leaked", "passed"),
        tuple(
            (
                i,
                h["checked_at"],
                h["window"],
                h["records"],
                h["drifted_features"],
                h["multivariate_p"],
                h["leaked_records"],
                h["passed"],
            )
            for i, h in enumerate(history[-TABLE_ROWS:], start=max(1, len(history) - TABLE_ROWS + 1))
        ),
    )
    return [
        replace(f, charts=(chart, *f.charts), tables=(*f.tables, table)) if f.rule_id == DATA_DRIFT.id else f
        for f in findings
    ]
