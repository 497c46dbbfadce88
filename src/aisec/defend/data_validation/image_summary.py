"""Image records as a few numeric columns that drift tests can compare one by one (brightness, contrast,
extremes, each channel's mean), since testing every pixel on its own says little and costs much."""

from __future__ import annotations

import numpy as np

from aisec.defend.data_validation.records import Column, Records

_MAX_CHANNELS = 4


def tabular_view(records: Records) -> Records:
    """`records` unchanged when tabular; for an image array, numeric columns `mean`, `std`, `min`, `max` of each
    image and `channel<k>_mean` per channel when the array is (n, C, H, W) or (n, H, W, C) with C <= 4
    (channels first when both could be). Labels, keys and sources are kept."""
    if records.array is None:
        return records
    images = records.array.astype(np.float64, copy=False)
    flat = images.reshape(images.shape[0], -1)
    columns = [
        Column("mean", "numeric", flat.mean(axis=1)),
        Column("std", "numeric", flat.std(axis=1)),
        Column("min", "numeric", flat.min(axis=1)),
        Column("max", "numeric", flat.max(axis=1)),
    ]
    if images.ndim == 4:
        axis = 1 if images.shape[1] <= _MAX_CHANNELS else 3 if images.shape[3] <= _MAX_CHANNELS else None
        if axis is not None and images.shape[axis] > 1:
            means = images.mean(axis=(2, 3) if axis == 1 else (1, 2))
            columns += [Column(f"channel{k}_mean", "numeric", means[:, k]) for k in range(means.shape[1])]
    return Records(
        path=records.path,
        columns=tuple(columns),
        array=None,
        labels=records.labels,
        keys=records.keys,
        sources=records.sources,
        label_column=records.label_column,
        key_column=records.key_column,
        source_column=records.source_column,
    )
