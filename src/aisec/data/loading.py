"""Data named by a plan: a built-in set or an .npz file with arrays `x` and `y` (never unpickled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData, as_labelled
from aisec.errors import DataError

if TYPE_CHECKING:
    from aisec.assess.plan import DataSection


def load_data(section: DataSection, *, seed: int) -> LabelledData:
    """The plan's data, subsampled with the plan's seed when `samples` is given."""
    if section.builtin is not None:
        split = load_builtin(section.builtin, seed=seed)
        data = split.test if section.split == "test" else split.train
    else:
        path = section.path
        assert path is not None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = {"x", "y"} - set(arrays.files)
                if missing:
                    raise DataError(f"{path}: missing array(s) {sorted(missing)}; an .npz needs `x` and `y`")
                data = as_labelled(arrays["x"], arrays["y"], name=path.name)
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"{path}: data file not found") from None
        except ValueError as e:  # includes object arrays, which would need pickle
            raise DataError(f"{path}: not a readable .npz of numeric arrays ({e})") from None
        except OSError as e:
            raise DataError(f"{path}: not a readable .npz file ({e})") from None
    return data.subset(section.samples, seed=seed) if section.samples else data
