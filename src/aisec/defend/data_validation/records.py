"""Reading a data set file (.npz, CSV or Parquet) into `Records`: feature columns or an image array, labels,
record keys and sources, with a content hash per record that matches records across snapshots and formats."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aisec.core.errors import BadInputError

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PARQUET_MAGIC = b"PAR1"
_EXTENSIONS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_FORMAT_NAMES = {"npz": ".npz (a zip archive)", "csv": "CSV text", "parquet": "Parquet"}
_HASH_VERSION = b"aisec.record-hash/1\0"


@dataclass(frozen=True)
class Column:
    """One tabular feature: numeric values are float64 with NaN for missing, categorical ones an object array
    of str with None for missing."""

    name: str
    kind: Literal["numeric", "categorical"]
    values: np.ndarray


@dataclass(frozen=True)
class Records:
    """A data set read from one file. Tabular data has `columns` (an .npz `x` of shape (n, d) gives numeric
    columns x0..x{d-1}); image data has `array` (an .npz `x` with more than two dimensions) and no columns.
    `labels` are int64 or a str object array, `keys` and `sources` str object arrays; each is None when absent."""

    path: str
    columns: tuple[Column, ...]
    array: np.ndarray | None
    labels: np.ndarray | None
    keys: np.ndarray | None
    sources: np.ndarray | None
    label_column: str | None
    key_column: str | None
    source_column: str | None

    def __len__(self) -> int:
        if self.array is not None:
            return int(self.array.shape[0])
        if self.columns:
            return int(self.columns[0].values.shape[0])
        for extra in (self.labels, self.keys, self.sources):
            if extra is not None:
                return int(extra.shape[0])
        return 0

    def schema(self) -> dict[str, Any]:
        """The shape of the data, JSON-ready: each column's name, kind and dtype; the image array's per-record
        shape and dtype; the label column and the labels' kind (int or str); the key and source columns."""
        return {
            "columns": [
                {"name": c.name, "kind": c.kind, "dtype": "float64" if c.kind == "numeric" else "str"}
                for c in self.columns
            ],
            "array": None
            if self.array is None
            else {"record_shape": list(self.array.shape[1:]), "dtype": str(self.array.dtype)},
            "label": None
            if self.labels is None
            else {"column": self.label_column, "kind": "str" if self.labels.dtype == object else "int"},
            "key_column": self.key_column,
            "source_column": self.source_column,
        }

    def record_hashes(self, *, with_label: bool = False) -> list[str]:
        """SHA-256 (hex) of each record's canonical feature bytes: numeric columns as little-endian float64
        (-0.0 as 0.0, one NaN for every missing value), categorical values as length-prefixed UTF-8, columns
        in name order, so a record hashes the same whatever file format or column order carried it; image
        records as their little-endian bytes with dtype and shape. Labels, keys and sources are left out unless
        `with_label`, when the label is hashed after the features (the manifest's per-record hash)."""
        base = hashlib.sha256(_HASH_VERSION)
        parts: list[list[bytes]] = []
        if self.array is not None:
            matrix = _canonical_array(self.array)
            base.update(f"array {matrix.dtype.str} {list(self.array.shape[1:])}\0".encode())
        else:
            ordered = sorted(self.columns, key=lambda c: c.name)
            numeric = [c for c in ordered if c.kind == "numeric"]
            categorical = [c for c in ordered if c.kind == "categorical"]
            base.update(
                (
                    "columns " + "\0".join(f"{c.kind[0]}:{c.name}" for c in numeric + categorical) + "\0"
                ).encode()
            )
            matrix = _canonical_array(
                np.stack([c.values for c in numeric], axis=1) if numeric else np.zeros((len(self), 0))
            )
            parts = [_encode_strings(c.values) for c in categorical]
        if with_label and self.labels is not None:
            parts.append(_encode_labels(self.labels))
        width = matrix.shape[1] * matrix.dtype.itemsize if matrix.ndim == 2 else 0
        buffer = memoryview(matrix.tobytes())
        hashes = []
        for row in range(len(self)):
            digest = base.copy()
            digest.update(buffer[row * width : (row + 1) * width])
            for encoded in parts:
                digest.update(encoded[row])
            hashes.append(digest.hexdigest())
        return hashes


def _canonical_array(array: np.ndarray) -> np.ndarray:
    """`array` as a C-contiguous little-endian (n, k) array; floats as float64 with -0.0 made 0.0 and every NaN
    the same NaN, so equal values have equal bytes."""
    flat = array.reshape(array.shape[0], -1)
    if flat.dtype.kind == "f":
        flat = flat.astype(np.float64) + 0.0  # -0.0 + 0.0 == +0.0
        flat[np.isnan(flat)] = np.nan
    elif flat.dtype.kind == "b":
        flat = flat.astype(np.uint8)
    return np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("<"))


def _encode_strings(values: np.ndarray) -> list[bytes]:
    """Each value as b'\\x00' (missing) or b'\\x01' + 8-byte length + UTF-8, each distinct value encoded once."""
    cache: dict[Any, bytes] = {}
    encoded = []
    for value in values.tolist():
        item = cache.get(value)
        if item is None:
            if value is None:
                item = b"\x00"
            else:
                text = str(value).encode("utf-8")
                item = b"\x01" + len(text).to_bytes(8, "little") + text
            cache[value] = item
        encoded.append(item)
    return encoded


def _encode_labels(labels: np.ndarray) -> list[bytes]:
    if labels.dtype == object:
        return [b"label:" + item for item in _encode_strings(labels)]
    return [b"label:\x02" + value for value in np.ascontiguousarray(labels, dtype="<i8").view("S8").tolist()]


def read_records(
    path: str | os.PathLike[str],
    *,
    label: str | None = "label",
    key: str | None = None,
    source: str | None = None,
) -> Records:
    """Read a data set file. The format comes from the bytes (zip magic for .npz, PAR1 for Parquet, UTF-8
    text for CSV) and must agree with the extension. An .npz holds arrays `x`, optional `y`, `ids` and `source`
    (read with allow_pickle=False; `label`, `key` and `source` name columns of CSV and Parquet files only).
    Every problem is a BadInputError with one line naming the file and column."""
    path = Path(path)
    fmt = _detect_format(path)
    if fmt == "npz":
        return _read_npz(path)
    if fmt == "csv":
        header, table = _read_csv(path)
    else:
        header, table = _read_parquet(path)
    return _tabular_records(path, header, table, label=label, key=key, source=source)


def records_from_arrays(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    names: list[str] | None = None,
    keys: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    path: str = "<memory>",
) -> Records:
    """Records from arrays a Python user holds: `x` of shape (n, d) gives numeric columns (named `names`, else
    x0..x{d-1}), more dimensions an image array; `y` int or str labels; `keys` unique and `sources` any values,
    both kept as str. The same checks as a file: lengths agree, keys unique, no missing label."""
    x = np.asarray(x)
    n = x.shape[0]
    for role, extra in (("y", y), ("keys", keys), ("sources", sources)):
        if extra is not None and len(extra) != n:
            raise BadInputError(f"{path}: {role} has {len(extra)} entries, x has {n} records")
    labels = None
    if y is not None:
        y = np.asarray(y)
        labels = y.astype(np.int64) if y.dtype.kind in "iub" else _strings(y)
        _check_complete(Path(path), "y", labels, "label")
    key_array = None if keys is None else _strings(np.asarray(keys))
    if key_array is not None:
        _check_unique_keys(Path(path), "keys", key_array)
    source_array = None if sources is None else _strings(np.asarray(sources))
    columns: tuple[Column, ...] = ()
    array = None
    if x.ndim == 2:
        names = names or [f"x{i}" for i in range(x.shape[1])]
        if len(names) != x.shape[1] or len(set(names)) != len(names):
            raise BadInputError(f"{path}: {len(names)} distinct column names needed for {x.shape[1]} columns")
        columns = tuple(
            Column(name, "numeric", np.ascontiguousarray(x[:, i], dtype=np.float64))
            for i, name in enumerate(names)
        )
    else:
        array = x
    return Records(
        path=path,
        columns=columns,
        array=array,
        labels=labels,
        keys=key_array,
        sources=source_array,
        label_column=None if y is None else "y",
        key_column=None if keys is None else "ids",
        source_column=None if sources is None else "source",
    )


def _detect_format(path: Path) -> str:
    expected = _EXTENSIONS.get(path.suffix.lower())
    if expected is None:
        raise BadInputError(f"{path}: unsupported extension {path.suffix!r}; expected .npz, .csv or .parquet")
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(size - 4, 0))
            tail = handle.read(4)
    except OSError as error:
        raise BadInputError(f"cannot read {path}: {error.strerror or error}") from None
    if size == 0:
        raise BadInputError(f"{path}: empty file")
    if head[:4] in _ZIP_MAGIC:
        actual = "npz"
    elif head[:4] == _PARQUET_MAGIC and tail == _PARQUET_MAGIC:
        actual = "parquet"
    elif _looks_like_text(head):
        actual = "csv"
    else:
        actual = "unknown"
    if actual != expected:
        found = "binary data of an unknown format" if actual == "unknown" else _FORMAT_NAMES[actual]
        raise BadInputError(
            f"{path}: the extension says {_FORMAT_NAMES[expected]} but the file holds {found}"
        )
    return actual


def _looks_like_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of the sample is still text
        return error.start >= len(head) - 3
    return True


def _read_npz(path: Path) -> Records:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise BadInputError(f"{path}: not a readable .npz archive ({error})") from None
    if "x" not in arrays:
        raise BadInputError(f"{path}: missing array 'x' (has {', '.join(sorted(arrays)) or 'none'})")
    x = arrays["x"]
    if x.dtype.kind not in "biuf":
        raise BadInputError(f"{path}: array 'x' has dtype {x.dtype}; expected numbers")
    if x.ndim < 2:
        raise BadInputError(f"{path}: array 'x' has shape {x.shape}; expected (records, features) or images")
    n = x.shape[0]
    if n == 0:
        raise BadInputError(f"{path}: array 'x' holds no records")
    for name in ("y", "ids", "source"):
        if name in arrays and arrays[name].shape != (n,):
            raise BadInputError(
                f"{path}: array '{name}' has shape {arrays[name].shape} but 'x' has {n} records"
            )
    labels = _npz_labels(path, arrays["y"]) if "y" in arrays else None
    keys = _strings(arrays["ids"]) if "ids" in arrays else None
    if keys is not None:
        _check_unique_keys(path, "ids", keys)
    columns: tuple[Column, ...] = ()
    array = None
    if x.ndim == 2:
        values = x.astype(np.float64)
        columns = tuple(
            Column(f"x{j}", "numeric", np.ascontiguousarray(values[:, j])) for j in range(x.shape[1])
        )
    else:
        array = x
    return Records(
        path=str(path),
        columns=columns,
        array=array,
        labels=labels,
        keys=keys,
        sources=_strings(arrays["source"]) if "source" in arrays else None,
        label_column="y" if labels is not None else None,
        key_column="ids" if keys is not None else None,
        source_column="source" if "source" in arrays else None,
    )


def _npz_labels(path: Path, y: np.ndarray) -> np.ndarray:
    if y.dtype.kind in "US":
        return _strings(y)
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        missing = int(np.isnan(y).sum())
        if missing:
            raise BadInputError(f"{path}: label array 'y' has {missing} missing values (NaN)")
        if np.all(y == np.round(y)):
            return y.astype(np.int64)
    raise BadInputError(f"{path}: label array 'y' has dtype {y.dtype}; expected integers or strings")


def _strings(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape[0], dtype=object)
    out[:] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist()]
    return out


def _check_unique_keys(path: Path, column: str, keys: np.ndarray) -> None:
    if len(set(keys.tolist())) == len(keys):
        return
    counts = Counter(keys.tolist())
    duplicated = [k for k, c in counts.items() if c > 1]
    raise BadInputError(
        f"{path}: key column '{column}' has {len(duplicated)} duplicated keys "
        f"({sum(counts[k] for k in duplicated)} records), e.g. {duplicated[0]!r}"
    )


# A tabular table is column name -> (kind, values); kind "text" columns are str object arrays with None for
# an empty CSV cell, still to be classified as numeric or categorical.
_Table = dict[str, tuple[str, np.ndarray]]


def _read_csv(path: Path) -> tuple[list[str], _Table]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not UTF-8 text at byte {error.start}") from None
    except OSError as error:
        raise BadInputError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as error:
        raise BadInputError(f"{path}: malformed CSV ({error})") from None
    if not rows:
        raise BadInputError(f"{path}: empty file (no header row)")
    header = [name.strip() for name in rows[0]]
    _check_header(path, header)
    body = rows[1:]
    if not body:
        raise BadInputError(f"{path}: no records (only a header row)")
    width = len(header)
    for number, row in enumerate(body, start=2):
        if len(row) != width:
            raise BadInputError(
                f"{path}: row {number} has {len(row)} cells but the header has {width} columns"
            )
    table: _Table = {}
    for j, name in enumerate(header):
        cells = np.empty(len(body), dtype=object)
        cells[:] = [row[j] if row[j].strip() else None for row in body]
        table[name] = ("text", cells)
    return header, table


def _check_header(path: Path, header: list[str]) -> None:
    if any(not name for name in header):
        raise BadInputError(f"{path}: the header has an empty column name (column {header.index('') + 1})")
    duplicated = [name for name, count in Counter(header).items() if count > 1]
    if duplicated:
        raise BadInputError(f"{path}: column '{duplicated[0]}' appears more than once in the header")


def _read_parquet(path: Path) -> tuple[list[str], _Table]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError("reading Parquet needs pyarrow: pip install 'aisec[data]'") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise BadInputError(f"{path}: not a readable Parquet file ({error})") from None
    header = list(table.column_names)
    _check_header(path, header)
    if table.num_rows == 0:
        raise BadInputError(f"{path}: no records")
    out: _Table = {}
    for name in header:
        column = table.column(name)
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
            kind = kind.value_type
        if pa.types.is_integer(kind) and column.null_count == 0:
            out[name] = ("int", column.to_numpy().astype(np.int64))
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            out[name] = ("numeric", np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False)))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            values = np.empty(table.num_rows, dtype=object)
            values[:] = column.to_pylist()
            out[name] = ("categorical", values)
        else:
            raise BadInputError(
                f"{path}: column '{name}' has Parquet type {kind}; expected numbers or strings"
            )
    return header, out


def _tabular_records(
    path: Path, header: list[str], table: _Table, *, label: str | None, key: str | None, source: str | None
) -> Records:
    for role, name in (("label", label), ("key", key), ("source", source)):
        if name is not None and name not in table:
            raise BadInputError(f"{path}: no {role} column '{name}' (columns: {', '.join(header)})")
    named = [n for n in (label, key, source) if n is not None]
    if len(set(named)) != len(named):
        raise BadInputError(f"{path}: the label, key and source columns must differ (got {', '.join(named)})")
    labels = _tabular_labels(path, label, table[label]) if label is not None else None
    keys = None
    if key is not None:
        keys = _identifiers(path, key, table[key], role="key")
        _check_unique_keys(path, key, keys)
    sources = _identifiers(path, source, table[source], role="source") if source is not None else None
    columns = []
    for name in header:
        if name in named:
            continue
        kind, values = table[name]
        columns.append(_feature_column(name, kind, values))
    return Records(
        path=str(path),
        columns=tuple(columns),
        array=None,
        labels=labels,
        keys=keys,
        sources=sources,
        label_column=label,
        key_column=key,
        source_column=source,
    )


def _as_float(values: np.ndarray) -> np.ndarray | None:
    """The object array of str/None as float64 (None as NaN), or None when a non-empty cell is not a number."""
    present = np.array([v is not None for v in values.tolist()], dtype=bool)
    out = np.full(values.shape[0], np.nan)
    try:
        out[present] = np.asarray(values[present].astype(str), dtype=np.float64)
    except ValueError:
        return None
    return out


def _feature_column(name: str, kind: str, values: np.ndarray) -> Column:
    if kind in ("numeric", "int"):
        return Column(name, "numeric", values.astype(np.float64))
    if kind == "text":
        numbers = _as_float(values)
        if numbers is not None:
            return Column(name, "numeric", numbers)
    return Column(name, "categorical", values)


def _missing_rows(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.flatnonzero(np.array([v is None for v in values.tolist()], dtype=bool))
    if values.dtype.kind == "f":
        return np.flatnonzero(np.isnan(values))
    return np.zeros(0, dtype=np.int64)


def _check_complete(path: Path, name: str, values: np.ndarray, role: str) -> None:
    missing = _missing_rows(values)
    if missing.size:
        raise BadInputError(
            f"{path}: {role} column '{name}' has {missing.size} missing values (first in record {int(missing[0]) + 1})"
        )


def _tabular_labels(path: Path, name: str, column: tuple[str, np.ndarray]) -> np.ndarray:
    """Labels as int64 when every one is an integer, else as str."""
    kind, values = column
    _check_complete(path, name, values, "label")
    if kind == "int":
        return values
    if kind == "numeric":
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
        raise BadInputError(f"{path}: label column '{name}' holds non-integer numbers; expected classes")
    try:
        return np.array([int(v) for v in values.tolist()], dtype=np.int64)
    except (ValueError, TypeError):
        return _strings(values)


def _identifiers(path: Path, name: str, column: tuple[str, np.ndarray], *, role: str) -> np.ndarray:
    kind, values = column
    _check_complete(path, name, values, role)
    if kind == "numeric" and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    return _strings(values)
