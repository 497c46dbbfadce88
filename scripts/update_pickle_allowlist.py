"""Regenerate the classes the pickle scanner allows from scikit-learn, scipy.sparse and torch.nn.modules.

A class is listed when it is *defined* in one of those packages (its `__module__` is inside the package), so
a name a module merely imports from elsewhere (`multiprocessing.connection.Listener`, the `torch.nn.functional`
module as `F`) is never admitted by the package it passes through. Run after upgrading those libraries:

    .venv/bin/python scripts/update_pickle_allowlist.py
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import warnings
from pathlib import Path

PACKAGES = ("sklearn", "scipy.sparse", "torch.nn.modules")
# Sub-packages whose classes are helpers, test fixtures, data-set fetchers or I/O, not estimators or layers.
EXCLUDED = ("sklearn.utils._testing", "sklearn.externals", "sklearn.datasets", "sklearn.tests", "sklearn.conftest",
            "sklearn.callback", "sklearn.utils._show_versions", "sklearn.experimental", "scipy.sparse.linalg",
            "scipy.sparse.tests", "scipy.sparse.csgraph")  # fmt: skip
OUT = Path(__file__).parents[1] / "src/aisec/defend/supply_chain/formats/pickle_allowlist.json"


def module_names(package: str) -> list[str]:
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not info.name.startswith(EXCLUDED) and ".tests" not in info.name:
            names.append(info.name)
    return names


def main() -> None:
    warnings.simplefilter("ignore")
    classes: set[str] = set()
    versions = {}
    for package in PACKAGES:
        versions[package] = getattr(importlib.import_module(package.split(".")[0]), "__version__", "")
        for name in module_names(package):
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - optional dependencies missing: skip that module
                continue
            for _, obj in inspect.getmembers(module, inspect.isclass):
                home = getattr(obj, "__module__", "")
                if home.startswith(PACKAGES) and not home.startswith(EXCLUDED) and ".tests" not in home:
                    classes.add(f"{home}.{obj.__qualname__}")
    OUT.write_text(json.dumps({"generated_from": versions, "classes": sorted(classes)}, indent=0) + "\n")
    print(f"{len(classes)} classes -> {OUT}")


if __name__ == "__main__":
    main()
