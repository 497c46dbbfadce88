"""Dependence on single data sources, the NCSA's question "How do I make sure that I am not too dependent on this
single source?": each source's share of the training data, the model's accuracy on each source's held-out
records, and what leaving each source out of training does to the accuracy on the whole held-out set.

Leaving one group of training data out and retraining is the leave-one-out value of data valuation (Ghorbani and
Zou 2019, "Data Shapley", which uses it as the baseline), taken per source as in the "leave-one-dataset-out"
evaluations of domain generalisation. A source whose removal moves held-out accuracy outside the full model's
Wilson (1927) 95 % interval is critical: when accuracy falls, the model depends on it; when accuracy rises, its
records hurt the model, as mislabelled or poisoned data do. A source holding more than `max_share` of the
records dominates whatever the accuracies say, since one supplier then decides what the model learns.

Models are plain callables, so this module needs no torch: `Fit` trains on (x, y) with a seed and returns a
`Predict`, which maps features to int labels. Labels and predictions are compared by their `str`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.label_shift import Predict, label_strings, wilson_interval

Fit = Callable[[np.ndarray, np.ndarray, int], Predict]

_HELD_OUT_SHARE = 0.25


@dataclass(frozen=True)
class SourceFigures:
    """One source: its records and share of the training data, the full model's accuracy on its held-out
    records, and the accuracy on the whole held-out set of a model retrained without it (Wilson 95 %)."""

    source: str
    records: int
    share: float
    accuracy: float | None
    lower: float | None
    upper: float | None
    left_out_accuracy: float | None
    left_out_lower: float | None
    left_out_upper: float | None
    change: float | None
    beyond_interval: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "records": self.records,
            "share": self.share,
            "accuracy": self.accuracy,
            "lower": self.lower,
            "upper": self.upper,
            "left_out_accuracy": self.left_out_accuracy,
            "left_out_lower": self.left_out_lower,
            "left_out_upper": self.left_out_upper,
            "change": self.change,
            "beyond_interval": self.beyond_interval,
        }


@dataclass(frozen=True)
class SourceDependence:
    """Every source's figures (largest share first), the full model's held-out accuracy, the sources that
    dominate (share above `max_share`) and those whose leaving out moves accuracy beyond its 95 % interval."""

    sources: tuple[SourceFigures, ...]
    full_accuracy: float | None
    full_lower: float | None
    full_upper: float | None
    max_share: float
    dominant: tuple[str, ...]
    critical: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": [figures.to_dict() for figures in self.sources],
            "full_accuracy": self.full_accuracy,
            "full_lower": self.full_lower,
            "full_upper": self.full_upper,
            "max_share": self.max_share,
            "dominant": list(self.dominant),
            "critical": list(self.critical),
            "warnings": list(self.warnings),
        }


def source_dependence(
    x: np.ndarray,
    y: np.ndarray,
    sources: np.ndarray,
    *,
    test_x: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
    test_sources: np.ndarray | None = None,
    fit: Fit | None = None,
    predict: Predict | None = None,
    max_share: float = 0.5,
    seed: int = 0,
    generator: np.random.Generator | None = None,
) -> SourceDependence:
    """Shares of the training records (x, y) per source, always; with a model, accuracies on a test set.

    Without a test set, a source-stratified 25 % of the training records (drawn from `generator`, or from
    `seed` when none is given) is held out as one and the rest trained on. The full model is `predict` when
    given (already trained on all the data), else `fit(train_x, train_y, seed)`. Leaving a source out needs
    `fit`: it trains on the other sources' training records and is scored on the whole test set; a source whose
    removal leaves fewer than two classes is skipped with a warning. Per-source accuracy needs `test_sources`
    when a test set is given.
    """
    names = label_strings(sources)
    _check_inputs(x, y, names, test_x, test_y, test_sources, max_share)
    warnings: list[str] = []
    if test_x is None or test_y is None:
        held_out = _stratified_hold_out(
            names, generator if generator is not None else np.random.default_rng(seed)
        )
        train_x, train_y, train_names = x[~held_out], y[~held_out], names[~held_out]
        test_x, test_y, test_names = x[held_out], y[held_out], names[held_out]
        if predict is not None:
            warnings.append(
                "No test set was given, so the given model is scored on held-out records it was trained on; "
                "its accuracies are optimistic."
            )
    else:
        train_x, train_y, train_names = x, y, names
        test_names = None if test_sources is None else label_strings(test_sources)
    truth = label_strings(test_y)
    if (fit is not None or predict is not None) and len(truth) == 0:
        raise BadInputError("source dependence: the test set holds no records to score the model on")

    if predict is None and fit is not None:
        if len(set(label_strings(train_y).tolist())) < 2:
            raise BadInputError("source dependence: the training labels hold fewer than two classes")
        predict = fit(train_x, train_y, seed)
    if predict is None:
        warnings.append("No model was given (fit or predict), so only the sources' shares are reported.")
    elif fit is None:
        warnings.append(
            "Leaving each source out needs a way to retrain the model (fit); only shares and the full model's "
            "accuracies are reported."
        )
    full_hits = None if predict is None else _hits(predict, test_x, truth)
    full = _estimate(full_hits)

    labels, counts = np.unique(names, return_counts=True)
    figures: list[SourceFigures] = []
    critical_warnings: list[str] = []
    for source, count in sorted(
        zip(labels.tolist(), counts.tolist(), strict=True), key=lambda sc: (-sc[1], sc[0])
    ):
        own = None
        if full_hits is not None and test_names is not None and np.any(test_names == source):
            own = full_hits[test_names == source]
        left_out = None
        if fit is not None and full is not None:
            keep = train_names != source
            if len(set(label_strings(train_y[keep]).tolist())) < 2:
                warnings.append(
                    f"Source {source!r} was not left out: the other sources' training records hold fewer than "
                    "two classes."
                )
            else:
                left_out = _estimate(_hits(fit(train_x[keep], train_y[keep], seed), test_x, truth))
        figures.append(_figures(source, count, len(names), _estimate(own), left_out, full))
        if left_out is not None and full is not None and figures[-1].beyond_interval:
            critical_warnings.append(_critical_warning(source, left_out[0], full))

    dominant = tuple(f.source for f in figures if f.share > max_share)
    warnings += [
        f"Source {f.source!r} holds {f.share:.0%} of the training records, more than the {max_share:.0%} "
        "threshold: the model learns mostly what this one supplier provides."
        for f in figures
        if f.source in dominant
    ]
    return SourceDependence(
        sources=tuple(figures),
        full_accuracy=None if full is None else full[0],
        full_lower=None if full is None else full[1],
        full_upper=None if full is None else full[2],
        max_share=max_share,
        dominant=dominant,
        critical=tuple(f.source for f in figures if f.beyond_interval),
        warnings=tuple(warnings + critical_warnings),
    )


def _check_inputs(
    x: np.ndarray,
    y: np.ndarray,
    names: np.ndarray,
    test_x: np.ndarray | None,
    test_y: np.ndarray | None,
    test_sources: np.ndarray | None,
    max_share: float,
) -> None:
    if not len(x) == len(y) == len(names):
        raise BadInputError(
            f"source dependence: {len(x)} feature rows, {len(y)} labels and {len(names)} sources differ in length"
        )
    if len(x) == 0:
        raise BadInputError("source dependence: the training data holds no records")
    if not 0 < max_share < 1:
        raise BadInputError(f"source dependence: max_share must be in (0, 1), got {max_share}")
    if (test_x is None) != (test_y is None) or (test_sources is not None and test_x is None):
        raise BadInputError(
            "source dependence: a test set needs both test_x and test_y (test_sources optional)"
        )
    if test_x is not None and test_y is not None:
        if len(test_x) != len(test_y) or (test_sources is not None and len(test_sources) != len(test_x)):
            raise BadInputError(
                f"source dependence: the test set's {len(test_x)} feature rows, {len(test_y)} labels"
                + ("" if test_sources is None else f" and {len(test_sources)} sources")
                + " differ in length"
            )


def _stratified_hold_out(names: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask of a random 25 % (rounded) of each source's records."""
    held_out = np.zeros(len(names), dtype=bool)
    for source in np.unique(names):
        members = np.flatnonzero(names == source)
        held_out[rng.permutation(members)[: round(_HELD_OUT_SHARE * len(members))]] = True
    return held_out


def _hits(predict: Predict, x: np.ndarray, truth: np.ndarray) -> np.ndarray:
    predicted = np.asarray(predict(x))
    if predicted.shape != (len(x),):
        raise BadInputError(
            f"source dependence: the model returned shape {predicted.shape} for {len(x)} records, "
            f"expected ({len(x)},)"
        )
    return np.asarray(label_strings(predicted) == truth, dtype=bool)


def _estimate(hits: np.ndarray | None) -> tuple[float, float, float] | None:
    """Accuracy with its Wilson 95 % interval, or None without predictions."""
    if hits is None or len(hits) == 0:
        return None
    correct = int(hits.sum())
    return (correct / len(hits), *wilson_interval(correct, len(hits)))


def _figures(
    source: str,
    count: int,
    total: int,
    own: tuple[float, float, float] | None,
    left_out: tuple[float, float, float] | None,
    full: tuple[float, float, float] | None,
) -> SourceFigures:
    change = None if left_out is None or full is None else left_out[0] - full[0]
    beyond = left_out is not None and full is not None and not full[1] <= left_out[0] <= full[2]
    return SourceFigures(
        source=source,
        records=count,
        share=count / total,
        accuracy=None if own is None else own[0],
        lower=None if own is None else own[1],
        upper=None if own is None else own[2],
        left_out_accuracy=None if left_out is None else left_out[0],
        left_out_lower=None if left_out is None else left_out[1],
        left_out_upper=None if left_out is None else left_out[2],
        change=change,
        beyond_interval=beyond,
    )


def _critical_warning(source: str, left_out_accuracy: float, full: tuple[float, float, float]) -> str:
    raised = left_out_accuracy > full[0]
    return (
        f"Leaving source {source!r} out of training {'raises' if raised else 'lowers'} held-out accuracy from "
        f"{full[0]:.3f} to {left_out_accuracy:.3f}, outside the full model's 95 % interval "
        f"[{full[1]:.3f}, {full[2]:.3f}]: "
        + (
            "its records hurt the model, as mislabelled or poisoned data would."
            if raised
            else "the model depends on this source."
        )
    )
