"""Which figures of a finding say what a control costs: accuracy given up, time, latency.

A control is reported with its cost beside its benefit (NCSA principle 4; docs/report-schema.md). The model
card (`aisec.report.model_card`) reads the cost from an `Assessment`, the ML-BOM (`aisec.defend.supply_chain.bom`)
from the JSON report; both ask these functions, by metric id and unit and by table column heading, which figures
are costs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Metric ids that are a cost without saying "cost": the share of clean inputs NULL labelling refuses.
COST_METRIC_IDS = frozenset({"clean_null_rate"})
TIME_UNITS = frozenset({"s", "ms", "seconds", "milliseconds"})
_TIME_WORDS = frozenset({"latency", "seconds", "time"})
# Table columns that hold a cost: repairs' "cost", hardened models' "training time (x plain)" and "latency (x
# undefended)", certification's "seconds".
_COST_HEADINGS = re.compile(r"^(cost|seconds|training time\b.*|latency\b.*)$")
# Columns that name what a row of a control's table is about, in the order they describe it.
LABEL_COLUMNS = (
    "model",
    "defence",
    "transformation",
    "detector",
    "attack",
    "trigger",
    "poison rate",
    "repair",
)


def is_cost_metric(metric_id: str, unit: str) -> bool:
    """True for a figure that measures what a control costs: an id ending in `_cost`, a time unit, or an id
    naming latency, seconds or time (`training_time@pgd`)."""
    words = set(re.split(r"[_@]", metric_id))
    return (
        metric_id.endswith("_cost")
        or metric_id in COST_METRIC_IDS
        or unit in TIME_UNITS
        or bool(words & _TIME_WORDS)
    )


def is_cost_column(heading: str) -> bool:
    """True for a table column that holds a control's cost."""
    return bool(_COST_HEADINGS.match(heading))


def table_costs(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[tuple[str, str, Any]]:
    """(row label, column heading, cell) for every cost cell of a table that holds a figure; the label joins the
    row's `LABEL_COLUMNS` cells (the first column's when it has none). Empty cells ("", "—", None) are left out,
    e.g. the undefended model's training-time ratio."""
    costs = [i for i, heading in enumerate(columns) if is_cost_column(heading)]
    if not costs:
        return []
    labels = [i for i, heading in enumerate(columns) if heading in LABEL_COLUMNS] or [0]
    found = []
    for row in rows:
        label = ", ".join(
            f"{columns[i]} {row[i]}" if isinstance(row[i], (int, float)) else str(row[i]) for i in labels
        )
        found += [(label, columns[i], row[i]) for i in costs if row[i] not in (None, "", "—", "-")]
    return found
