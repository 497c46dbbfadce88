"""The assessment as JSON: the complete machine-readable record, drawn from the same types as every report.

The document validates against `schema/assessment.schema.json` (fields documented in docs/report-schema.md).
Each finding carries the frameworks its rule maps to (`frameworks`: NCSA, BSI stages, MITRE ATLAS, OWASP ML).
Enums become their string values, tuples become lists, an Estimate becomes {value, lower, upper, n, method},
and a float that is not finite (NaN, +inf, -inf) becomes null, so that any strict JSON parser reads it. Fields
marked `metadata={"report": False}` (a saved model's bytes) are left out.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from importlib import resources
from numbers import Integral, Real
from typing import Any

from aisec.assessment.finding import Assessment, Finding
from aisec.report.frameworks import FRAMEWORKS, as_dict

SCHEMA_ID = "aisec.assessment/2"

# Properties computed from the fields, written beside them: a reader needs no aisec to know the verdict.
_DERIVED: dict[type, tuple[str, ...]] = {Assessment: ("passed",), Finding: ("breaks_policy",)}


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types: dataclasses as objects, enums as their values, non-finite floats as None.

    Anything with `tolist()` (a numpy array or scalar, a tensor) becomes lists and numbers; any other object
    becomes its `str()`, so that settings holding e.g. a Path still serialise.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value) if f.metadata.get("report", True)]
        names += _DERIVED.get(type(value), ())
        return {name: jsonable(getattr(value, name)) for name in names}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    return str(value)


def to_json_dict(assessment: Assessment) -> dict[str, Any]:
    """The assessment as a JSON-ready dict whose first key, "schema", names the format version. Each finding
    gains `frameworks`: its rule's place in the frameworks (`frameworks.as_dict`), null for a rule aisec does not
    know (a finding made by hand)."""
    document = {"schema": SCHEMA_ID, **jsonable(assessment)}
    for finding, entry in zip(assessment.findings, document["findings"], strict=True):
        refs = FRAMEWORKS.get(finding.rule_id)
        entry["frameworks"] = as_dict(refs) if refs is not None else None
    return document


def render_json(assessment: Assessment) -> str:
    """The JSON report as text (UTF-8, indented, strict: no NaN or Infinity literals)."""
    return json.dumps(to_json_dict(assessment), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every report.json validates against."""
    text = (resources.files("aisec.report") / "schema" / "assessment.schema.json").read_text("utf-8")
    return json.loads(text)
