"""Built-in data sets, shipped with scikit-learn so that nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.core.errors import DataError
from aisec.data.dataset import LabelledData

BUILTIN = ("digits", "breast_cancer")


@dataclass(frozen=True)
class Split:
    train: LabelledData
    test: LabelledData


def load_builtin(name: str, *, seed: int = 0, test_fraction: float = 0.3) -> Split:
    """A seeded, stratified train/test split of a built-in set.

    digits: 1,797 8x8 grey images as (n, 1, 8, 8) floats in [0, 1], 10 classes.
    breast_cancer: 569 records of 30 features min-max scaled to [0, 1] on the training split, 2 classes.
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name == "digits":
        raw = datasets.load_digits()
        x = torch.tensor(raw.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    elif name == "breast_cancer":
        raw = datasets.load_breast_cancer()
        x = torch.tensor(raw.data, dtype=torch.float32)
    else:
        raise DataError(f"unknown built-in data set {name!r}; choose one of {', '.join(BUILTIN)}")
    y = torch.tensor(raw.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    x_train, x_test = x[idx_train], x[idx_test]
    if name == "breast_cancer":
        lo, hi = x_train.min(0).values, x_train.max(0).values
        x_train = (x_train - lo) / (hi - lo)
        x_test = ((x_test - lo) / (hi - lo)).clamp(0, 1)
    return Split(
        LabelledData(x_train, y[idx_train], f"{name}/train"),
        LabelledData(x_test, y[idx_test], f"{name}/test"),
    )
