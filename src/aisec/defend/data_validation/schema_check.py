"""Schema and range checks of current data against a reference sketch: a schema that does not match is bad
input (the data cannot be compared); values outside the reference's range, missing values the reference did
not have, fractions in whole-number columns and categories the reference never had are findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.image_summary import tabular_view
from aisec.defend.data_validation.records import Records
from aisec.defend.data_validation.reference_sketch import (
    CategoricalSketch,
    NumericSketch,
    ReferenceSketch,
    category_counts,
)

_LISTED_CATEGORIES = 10


@dataclass(frozen=True)
class ColumnCheck:
    """One column of the current data against the reference. Rates are shares of the current records
    (`out_of_range_rate` and `unseen_rate` of its non-missing values)."""

    name: str
    kind: str
    reference_missing_rate: float
    current_missing_rate: float
    out_of_range_rate: float = 0.0
    below: int = 0
    above: int = 0
    fractional: int = 0  # values with a fraction in a column the reference holds whole numbers only
    unseen_rate: float = 0.0
    unseen: tuple[str, ...] = ()  # at most ten of the categories the reference never had

    @property
    def missing_increase(self) -> float:
        return max(0.0, self.current_missing_rate - self.reference_missing_rate)

    def issues(self) -> list[str]:
        """One sentence per departure from the reference, for people."""
        lines = []
        if self.missing_increase > 0:
            lines.append(
                f"'{self.name}': {self.current_missing_rate:.1%} missing (reference {self.reference_missing_rate:.1%})"
            )
        if self.below or self.above:
            lines.append(
                f"'{self.name}': {self.out_of_range_rate:.2%} of values outside the reference's range "
                f"({self.below} below, {self.above} above)"
            )
        if self.fractional:
            lines.append(
                f"'{self.name}': {self.fractional} values with a fraction; the reference has whole numbers"
            )
        if self.unseen:
            lines.append(
                f"'{self.name}': {self.unseen_rate:.2%} of values in categories the reference never had "
                f"({', '.join(self.unseen)})"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "reference_missing_rate": self.reference_missing_rate,
            "current_missing_rate": self.current_missing_rate,
            "out_of_range_rate": self.out_of_range_rate,
            "below": self.below,
            "above": self.above,
            "fractional": self.fractional,
            "unseen_rate": self.unseen_rate,
            "unseen": list(self.unseen),
        }


@dataclass(frozen=True)
class SchemaCheck:
    reference_rows: int
    current_rows: int
    columns: tuple[ColumnCheck, ...]

    @property
    def max_out_of_range_rate(self) -> float:
        return max((c.out_of_range_rate for c in self.columns), default=0.0)

    @property
    def max_missing_increase(self) -> float:
        return max((c.missing_increase for c in self.columns), default=0.0)

    @property
    def max_unseen_rate(self) -> float:
        return max((c.unseen_rate for c in self.columns), default=0.0)

    @property
    def fractional_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.fractional]

    def issues(self) -> list[str]:
        return [line for column in self.columns for line in column.issues()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "columns": [c.to_dict() for c in self.columns],
            "issues": self.issues(),
        }


def require_same_schema(sketch: ReferenceSketch, current: Records) -> None:
    """BadInputError naming the current file and the first column whose presence or kind differs from the
    reference's, an image array of another record shape or dtype, or labels of another kind."""
    reference = sketch.schema
    schema = current.schema()
    where = f"{current.path}"
    if (reference["array"] is None) != (schema["array"] is None):
        has = "image arrays" if schema["array"] is not None else "table columns"
        raise BadInputError(f"{where}: holds {has}, the reference {sketch.source} does not")
    if reference["array"] is not None and reference["array"] != schema["array"]:
        raise BadInputError(
            f"{where}: image records of shape {tuple(schema['array']['record_shape'])} {schema['array']['dtype']}, "
            f"the reference's are {tuple(reference['array']['record_shape'])} {reference['array']['dtype']}"
        )
    reference_columns = {c["name"]: c["kind"] for c in reference["columns"]}
    current_columns = {c.name: c.kind for c in current.columns}
    for name, kind in reference_columns.items():
        if name not in current_columns:
            raise BadInputError(f"{where}: no column '{name}' (the reference {sketch.source} has it)")
        if current_columns[name] != kind:
            raise BadInputError(
                f"{where}: column '{name}' is {current_columns[name]}, in the reference {sketch.source} {kind}"
            )
    for name in current_columns:
        if name not in reference_columns:
            raise BadInputError(f"{where}: column '{name}' is not in the reference {sketch.source}")
    if reference["label"] is not None and schema["label"] is not None:
        if reference["label"]["kind"] != schema["label"]["kind"]:
            raise BadInputError(
                f"{where}: label column '{schema['label']['column']}' holds {schema['label']['kind']} labels, "
                f"the reference's are {reference['label']['kind']}"
            )


def check_schema(sketch: ReferenceSketch, current: Records, *, view: Records | None = None) -> SchemaCheck:
    """Each column of `current` (images: their summary columns, `image_summary.tabular_view`, which the
    caller may pass as `view`) against the reference sketch, after `require_same_schema`."""
    require_same_schema(sketch, current)
    view = tabular_view(current) if view is None else view
    values = {c.name: c.values for c in view.columns}
    rows = len(view)
    checks = [_numeric_check(s, values[s.name], rows) for s in sketch.numeric]
    checks += [_categorical_check(s, values[s.name], rows) for s in sketch.categorical]
    return SchemaCheck(reference_rows=sketch.rows, current_rows=rows, columns=tuple(checks))


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def _numeric_check(reference: NumericSketch, values: np.ndarray, rows: int) -> ColumnCheck:
    present = values[~np.isnan(values)]
    below = int(np.count_nonzero(present < reference.minimum)) if reference.n else 0
    above = int(np.count_nonzero(present > reference.maximum)) if reference.n else 0
    fractional = int(np.count_nonzero(present != np.round(present))) if reference.integral else 0
    return ColumnCheck(
        name=reference.name,
        kind="numeric",
        reference_missing_rate=_share(reference.missing, reference.n + reference.missing),
        current_missing_rate=_share(rows - present.size, rows),
        out_of_range_rate=_share(below + above, present.size),
        below=below,
        above=above,
        fractional=fractional,
    )


def _categorical_check(reference: CategoricalSketch, values: np.ndarray, rows: int) -> ColumnCheck:
    counts = category_counts(values)
    present = sum(counts.values())
    unseen = {category: n for category, n in counts.items() if category not in reference.counts}
    listed = sorted(unseen, key=lambda c: (-unseen[c], c))[:_LISTED_CATEGORIES]
    return ColumnCheck(
        name=reference.name,
        kind="categorical",
        reference_missing_rate=_share(reference.missing, reference.n + reference.missing),
        current_missing_rate=_share(rows - present, rows),
        unseen_rate=_share(sum(unseen.values()), present),
        unseen=tuple(listed),
    )
