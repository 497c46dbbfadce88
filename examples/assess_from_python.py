"""Assess a model from Python: a scikit-learn classifier and a small torch CNN on the digits, with the keys of a
plan file, reports written as `aisec assess` writes them (docs/python.md).

    .venv/bin/python examples/assess_from_python.py [OUTPUT_FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import aisec
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.dataset import as_labelled
from aisec.demo.models import digits_cnn


def main(output: Path) -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")  # 8x8 images in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.3, random_state=0)

    # A scikit-learn classifier on flat features: the input spec is inferred (and the report says so).
    regression = LogisticRegression(max_iter=1000).fit(x_train.reshape(len(x_train), -1), y_train)
    plan = {"threat_model": {"budgets": [0.05, 0.1]}, "probes": {"evasion": {}},
            "policy": {"min_robust_accuracy": {0.05: 0.5}}}  # fmt: skip
    result = aisec.assess(regression, x_test[:200].reshape(200, -1), y_test[:200], plan=plan)
    print(f"logistic regression: policy {'held' if result.passed else 'broken'}")
    for finding in result.findings:
        print(f"  {finding.rule_id} {finding.severity.value:8} {finding.title}")
    print("  ", result.assessment.subject.input_spec_source)

    # A torch CNN, attacked through its scores only, with a membership probe that trains shadow models with
    # the same factory and recipe; the training set is given as arrays.
    x_train4, x_test4 = x_train[:, None], x_test[:, None]
    cnn = fit(
        build_model(digits_cnn, 0), as_labelled(x_train4, y_train, name="digits/train"), seed=0, epochs=10
    )
    plan = {
        "threat_model": {"knowledge": "scores", "budgets": [0.1]},
        "target": {"factory": digits_cnn, "input": {"shape": [1, 8, 8], "num_classes": 10}},
        "training": {"data": (x_train4, y_train), "recipe": fit, "recipe_args": {"epochs": 10}},
        "probes": {"extraction": {"query_budget": 300, "strategies": ["natural"]},
                   "membership": {"records": 100, "shadows": 4}},
    }  # fmt: skip
    result = aisec.assess(cnn, x_test4, y_test, plan=plan)
    paths = result.save(output)
    print(f"digits CNN: {len(result.findings)} findings; report {paths['html']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/python-example"))
