"""Validate a data delivery against the data you trained on, from Python (docs/data-validation.md).

Run: .venv/bin/python examples/validate_data.py

A provider sends a new snapshot of a keyed data set: one feature has drifted, 1 % of the records were relabelled
and a few training records came back under new keys. `validate` finds each, and `validate_window` checks a later
window against a saved sketch of the reference without re-reading it.
"""

import tempfile
from pathlib import Path

import numpy as np

from aisec.defend.data_validation.records import records_from_arrays
from aisec.defend.data_validation.reference_sketch import build_sketch, load_sketch, save_sketch
from aisec.defend.data_validation.validate import validate, validate_window

generator = np.random.default_rng(0)
n, features = 10_000, 20
x = generator.standard_normal((n, features))
y = generator.integers(0, 5, n)
reference = records_from_arrays(x, y, keys=np.arange(n))

x_new, y_new = x.copy(), y.copy()
x_new[:, 4] += 0.25  # the provider changed a unit or a pipeline step
relabelled = generator.choice(n, 100, replace=False)
y_new[relabelled] = (y_new[relabelled] + 1) % 5
resent = np.r_[x_new, x[:30]]  # thirty training records again, under new keys
current = records_from_arrays(resent, np.r_[y_new, y[:30]], keys=np.arange(n + 30))

result = validate(reference, current)
print("drifted features:", result.drifted_features)
print(f"smallest mean shift found at this size: {result.smallest_detectable_shift:.3f} std")
print("records relabelled:", len(result.snapshot.label_changes), f"({result.label_change_rate:.1%})")
print("label test alone notices this pattern from:", result.label_change_detectable_at)
print("training records re-sent under new keys:", result.duplicates.exact_between)

with tempfile.TemporaryDirectory() as folder:
    sketch_path = Path(folder) / "reference.sketch"
    save_sketch(build_sketch(reference, generator=np.random.default_rng(0)), sketch_path)
    window = records_from_arrays(
        generator.standard_normal((2_000, features)), generator.integers(0, 5, 2_000)
    )
    checked = validate_window(load_sketch(sketch_path), window)
    print("a clean window drifted:", checked.drift_alarm)
