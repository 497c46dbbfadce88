"""Stateful detection of query-based black-box attacks (Chen, Carlini & Wagner, "Stateful Detection of
Black-Box Adversarial Attacks", ACM SPAI 2020).

A query-based attack (Square, HopSkipJump, boundary or gradient-estimation attacks) sends many queries that
are close to each other: small moves around one image, binary searches, finite-difference probes. Natural
clients send images that are as far apart as natural images are. Per client, the detector keeps the
encodings of the last `buffer_size` queries in a ring buffer; for each new query it computes the mean L2
distance to its `k` nearest neighbours in the buffer and flags the query when that mean is below
`threshold`. After a detection the buffer is cleared, as in the paper, so a detection is counted again only
once the attacker has sent `k` more queries; `detections` counts them.

The threshold is the paper's: the `fpr`-quantile, over natural samples, of each sample's mean distance to
its k nearest other natural samples (`calibrate_threshold`), i.e. the rate at which a natural query lying
among natural data would be flagged (the authors' code takes fpr = 0.001 and averages the sample's zero
distance to itself with the k others; we leave it out, so that calibration and detection average the same
k distances). As there, a query is judged only once the buffer holds k queries.

The encoder. The paper trains a contrastive similarity encoder so that an attacker cannot hide the
closeness of its queries behind large image transformations (shifts, rotations, noise) that pixel distances
see but the model ignores. By default we ship the identity over flattened inputs: it needs no training,
no torch at serving time and no second model to secure, and the attacks measured below (whose queries lie
in a small ball around one image) are caught by it. It does not resist that transformation-hiding attacker;
any callable mapping a batch (n, ...) to encodings (n, m) can be passed as `encode`. (The authors' code
ships such a pixel-space L2 detector beside the trained one.)

Defaults, measured on the digits CNN (tests/test_stateful_detection.py; docs/robustness.md, "Monitoring query
streams"): k=50 (the authors' value) and buffer_size=1000. As a query is judged once the buffer holds k of the
client's queries, k bounds how early an attack is caught (query k + 1) and how often after a detection. Every
Square and HopSkipJump stream was caught at the first query judged for k of 20 and 50 (two queries later at
most for k of 5 and 10); natural clients were never flagged at any of these k. What k buys is tolerance of
benign repeats: with clients who resend an earlier image after 10 % of their queries, k = 10 flagged 2-4 of 10
clients and k = 20 one, while k = 50 flagged none (a repeat is one zero among the 50 distances averaged). A
buffer of 1000 holds 1000 x m float64 values per client (512 kB for 8x8 images); each query costs one (1000 x
m) matrix-vector product and a partial sort (about 16 us for m = 64; bench/guard.py monitors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aisec.core.errors import BadInputError

Encoder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class StatefulConfig:
    """threshold: flag a query whose mean distance to its k nearest buffered queries is below it (from
    `calibrate_threshold`); k: neighbours averaged; buffer_size: queries kept per client."""

    threshold: float
    k: int = 50
    buffer_size: int = 1000

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise BadInputError(
                f"stateful detection: threshold must be a positive number, got {self.threshold}"
            )
        if self.k < 1:
            raise BadInputError(f"stateful detection: k must be at least 1, got {self.k}")
        if self.buffer_size < self.k:
            raise BadInputError(
                f"stateful detection: buffer_size ({self.buffer_size}) must be at least k ({self.k})"
            )


def _encoded(rows: np.ndarray, encode: Encoder | None, what: str) -> np.ndarray:
    """rows as a (n, m) float64 matrix of encodings, or BadInputError naming `what`."""
    rows = np.asarray(rows)
    if rows.ndim < 1 or len(rows) == 0:
        raise BadInputError(f"{what}: expected a non-empty batch of queries, got shape {rows.shape}")
    out = np.asarray(encode(rows) if encode is not None else rows.reshape(len(rows), -1), dtype=np.float64)
    if out.ndim != 2 or len(out) != len(rows):
        raise BadInputError(f"{what}: the encoder returned shape {out.shape} for {len(rows)} queries")
    if not np.isfinite(out).all():
        raise BadInputError(f"{what}: queries or encodings contain NaN or infinite values")
    return out


def calibrate_threshold(
    benign: np.ndarray, k: int, fpr: float, encode: Encoder | None = None, *, chunk: int = 1024
) -> float:
    """The paper's threshold: the `fpr`-quantile of each benign sample's mean L2 distance to its k nearest
    other benign samples (distances in the encoder's space). Computed `chunk` rows at a time, so memory is
    chunk x len(benign)."""
    if not 0.0 < fpr < 1.0:
        raise BadInputError(f"stateful detection: fpr must be in (0, 1), got {fpr}")
    z = _encoded(benign, encode, "stateful detection calibration")
    if not 1 <= k < len(z):
        raise BadInputError(
            f"stateful detection: k must be in [1, {len(z) - 1}] for {len(z)} samples, got {k}"
        )
    sq = np.einsum("ij,ij->i", z, z)
    means = np.empty(len(z))
    for start in range(0, len(z), chunk):
        block = z[start : start + chunk]
        d2 = sq[start : start + chunk, None] - 2.0 * block @ z.T + sq[None, :]
        d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf  # not its own neighbour
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        means[start : start + chunk] = np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1)
    return float(np.quantile(means, fpr))


class StatefulDetector:
    """Chen et al.'s detector over one client's query stream (see the module docstring)."""

    def __init__(self, config: StatefulConfig, encode: Encoder | None = None) -> None:
        self.config = config
        self.encode = encode
        self.queries = 0
        self.detections = 0
        self.first_detection_at: int | None = None  # 1-based index of the first flagged query
        self._buffer: np.ndarray | None = None  # (buffer_size, m), allocated at the first query
        self._sq = np.zeros(config.buffer_size)  # squared norms of the buffered encodings
        self._filled = 0
        self._next = 0

    def observe(self, rows: np.ndarray) -> np.ndarray:
        """Judge a batch of queries in order, each against the buffer as it stood before it (earlier rows of
        the batch included); returns one flag per row."""
        z = _encoded(rows, self.encode, "stateful detection")
        if self._buffer is None:
            self._buffer = np.empty((self.config.buffer_size, z.shape[1]))
        elif z.shape[1] != self._buffer.shape[1]:
            raise BadInputError(
                f"stateful detection: encodings of size {z.shape[1]}, "
                f"the buffer holds size {self._buffer.shape[1]}"
            )
        k, size = self.config.k, self.config.buffer_size
        flags = np.zeros(len(z), dtype=bool)
        for i, (point, sq) in enumerate(zip(z, np.einsum("ij,ij->i", z, z), strict=True)):
            self.queries += 1
            if self._filled >= k:
                d2 = self._sq[: self._filled] - 2.0 * (self._buffer[: self._filled] @ point) + sq
                nearest = np.partition(d2, k - 1)[:k]
                if np.sqrt(np.maximum(nearest, 0.0)).mean() < self.config.threshold:
                    flags[i] = True
                    self.detections += 1
                    if self.first_detection_at is None:
                        self.first_detection_at = self.queries
                    self._filled = self._next = 0  # the paper clears the buffer after a detection
            self._buffer[self._next] = point
            self._sq[self._next] = sq
            self._next = (self._next + 1) % size
            self._filled = min(self._filled + 1, size)
        return flags
