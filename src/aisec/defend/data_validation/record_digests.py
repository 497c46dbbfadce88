"""A 64-bit digest of each record's features, computed column by column in numpy so that a million records
of 200 features take 0.4 s (docs/benchmarks.md): what duplicate and leakage checks and the reference sketch compare.

Equal features give equal digests (numeric values as float64 with -0.0 made 0.0 and one NaN, categorical
values by the BLAKE2b of their UTF-8, image records by their bytes); different records collide with chance
about n^2 / 2^65, so callers confirm a match by comparing the records themselves. `Records.record_hashes` is
the cryptographic per-record hash for manifests; this one is for speed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from aisec.defend.data_validation.records import Records

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd (Knuth's multiplicative hashing)
_MISSING = np.uint64(0x6A09E667F3BCC909)


def row_digests(records: Records) -> np.ndarray:
    """One uint64 per record from its features (labels, keys and sources left out), in record order."""
    digest = np.zeros(len(records), dtype=np.uint64)
    for words in _feature_words(records):
        _mix(digest, words)
    return _finish(digest)


def _feature_words(records: Records) -> Iterator[np.ndarray]:
    """Each feature column as uint64 words, in name order so column order in the file does not matter."""
    if records.array is not None:
        flat = records.array.reshape(records.array.shape[0], -1)
        if flat.dtype.kind == "f":
            flat = _canonical_floats(flat)
        else:
            flat = flat.astype(np.int64)
        yield from flat.view(np.uint64).T
        return
    for column in sorted(records.columns, key=lambda c: c.name):
        if column.kind == "numeric":
            yield _canonical_floats(column.values).view(np.uint64)
        else:
            yield _string_words(column.values)


def _canonical_floats(values: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    out[np.isnan(out)] = np.nan
    return out


def _string_words(values: np.ndarray) -> np.ndarray:
    """Each distinct value's BLAKE2b (8 bytes), None as a fixed word."""
    uniques, inverse = np.unique(
        np.array(["\0" if v is None else "\1" + str(v) for v in values.tolist()]), return_inverse=True
    )
    table = np.array(
        [
            _MISSING
            if u == "\0"
            else np.frombuffer(hashlib.blake2b(u.encode(), digest_size=8).digest(), "<u8")[0]
            for u in uniques.tolist()
        ],
        dtype=np.uint64,
    )
    return table[inverse.reshape(-1)]


def _mix(digest: np.ndarray, words: np.ndarray) -> None:
    """digest = (rotl(digest, 5) ^ words) * multiplier, in place, wrapping mod 2^64 (FxHash's step)."""
    rotated = (digest << np.uint64(5)) | (digest >> np.uint64(59))
    np.bitwise_xor(rotated, words, out=digest)
    np.multiply(digest, _MULTIPLIER, out=digest)


def _finish(digest: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, so that every input bit reaches every output bit."""
    digest = digest ^ (digest >> np.uint64(30))
    digest *= np.uint64(0xBF58476D1CE4E5B9)
    digest ^= digest >> np.uint64(27)
    digest *= np.uint64(0x94D049BB133111EB)
    digest ^= digest >> np.uint64(31)
    return digest
