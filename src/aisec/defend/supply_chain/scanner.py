"""`aisec scan`: static analysis of model files, by format, recursing into containers.

A file is memory-mapped (tensor payloads are never read, except by the hash), its format recognised by
its bytes, and the format's scanner run under the scan's limits. Whatever goes wrong inside a scanner
(a parse error, a limit, a bug) becomes a finding that keeps the file from being reported safe. The
sha256 is computed on a second thread (hashlib releases the GIL), overlapping the analysis.

Many files can be scanned on an executor (aisec.core.executor: a pool of processes, Ray), in jobs of consecutive
files (`ScanJob`, `scan_job`); the report, and the order in which `on_file` sees the files, are those of the scan
in this process. A scan too small to repay starting workers (`worth_spreading`) runs here whatever the executor.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisec.core.errors import BadInputError
from aisec.defend.supply_chain.context import Budget, LimitExceeded, ScanContext, Unparseable
from aisec.defend.supply_chain.detect import extension_mismatch, sniff
from aisec.defend.supply_chain.formats import (
    archives,
    gguf,
    keras,
    numpy_files,
    onnx,
    pickle_scan,
    safetensors,
    sevenzip,
)
from aisec.defend.supply_chain.limits import GIB, MIB, ScanLimits
from aisec.defend.supply_chain.result import FileScan, ScanFinding, ScanReport

if TYPE_CHECKING:
    from aisec.core.executor import Executor

FormatScanner = Callable[[memoryview, ScanContext], "str | None"]


def _unsupported(what: str) -> FormatScanner:
    def scan(data: memoryview, ctx: ScanContext) -> None:
        ctx.add("AISEC-SC-002", f"{what}: not scanned")

    return scan


def _nothing(data: memoryview, ctx: ScanContext) -> None:
    """Formats no model loader executes anything from (plain text, images, empty files)."""


SCANNERS: dict[str, FormatScanner] = {
    "pickle": pickle_scan.scan_pickle,
    "zip": archives.scan_zip,
    "tar": archives.scan_tar,
    "compressed": archives.scan_compressed,
    "numpy": numpy_files.scan_npy,
    "safetensors": safetensors.scan_safetensors,
    "gguf": gguf.scan_gguf,
    "onnx": lambda data, ctx: onnx.scan_onnx(data, ctx, base_dir=ctx.base_dir),
    "json": keras.scan_json,
    "hdf5": keras.scan_hdf5,
    "7z": sevenzip.scan_7z,
    "unknown": _unsupported("the bytes match no known model, archive or text format"),
    "text": _nothing,
    "image": _nothing,
    "empty": _nothing,
}


def dispatch(data: memoryview, ctx: ScanContext) -> str:
    """Sniff `data`, run its format's scanner and check the name's extension; returns the format."""
    fmt = sniff(data)
    try:
        refined = SCANNERS[fmt](data, ctx)
        fmt = refined or fmt
    except Unparseable as error:
        ctx.add("AISEC-SC-001", f"{fmt}: {error}", error.offset)
    except LimitExceeded as error:
        ctx.add("AISEC-SC-003", str(error))
    except RecursionError:
        ctx.add("AISEC-SC-003", f"{fmt}: nested too deeply to analyse")
    except MemoryError:
        ctx.add("AISEC-SC-003", f"{fmt}: ran out of memory while analysing")
    except Exception as error:  # noqa: BLE001 - a scanner bug must never read as "safe"
        ctx.add("AISEC-SC-001", f"{fmt}: could not be analysed ({type(error).__name__}: {error})")
    mismatch = extension_mismatch(ctx.name, fmt) if ctx.name else None
    if mismatch:
        ctx.add(mismatch, f"named {Path(ctx.name).name!r} but its bytes are {fmt}")
    return fmt


def scan_bytes(
    data: bytes | memoryview, name: str = "", limits: ScanLimits | None = None
) -> tuple[str, list[ScanFinding]]:
    """Scan an in-memory file; returns (format, findings). `name` is used for extension checks."""
    findings: list[ScanFinding] = []
    ctx = ScanContext(
        location=name or "<bytes>",
        budget=Budget(limits or ScanLimits()),
        findings=findings,
        dispatch=dispatch,
        name=name,
    )
    fmt = dispatch(memoryview(data), ctx)
    return fmt, findings


def scan_file(
    path: str | os.PathLike[str],
    limits: ScanLimits | None = None,
    display: str | None = None,
    *,
    hash_content: bool = True,
) -> FileScan:
    """Scan one file on disk; raises BadInputError if it cannot be opened. `hash_content=False` skips the
    sha256 (reported as None): on this class of CPU the hash (about 1.2 GB/s) costs more than the analysis
    of a tensor-heavy file, so bulk triage (`aisec scan --no-hash`) may leave it out."""
    path = Path(path)
    started = time.perf_counter()
    label = display or str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return FileScan(
                    label, "empty", 0, hashlib.sha256().hexdigest(), (), time.perf_counter() - started
                )
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                fmt, findings, digest = _scan_mapped(
                    mapped, path, label, limits or ScanLimits(), hash_content
                )
    except OSError as error:
        raise BadInputError(f"cannot read {path}: {error.strerror or error}") from None
    return FileScan(label, fmt, size, digest, tuple(findings), time.perf_counter() - started)


def _scan_mapped(
    mapped: mmap.mmap, path: Path, label: str, limits: ScanLimits, hash_content: bool
) -> tuple[str, list[ScanFinding], str | None]:
    digest: dict[str, str | None] = {"sha256": None}
    hasher = threading.Thread(target=lambda: digest.update(sha256=_sha256(mapped)), daemon=True)
    if hash_content:
        hasher.start()
    findings: list[ScanFinding] = []
    view = memoryview(mapped)
    try:
        ctx = ScanContext(
            location=label,
            budget=Budget(limits),
            findings=findings,
            dispatch=dispatch,
            name=path.name,
            base_dir=path.parent,
        )
        fmt = dispatch(view, ctx)
    finally:
        if hash_content:
            hasher.join()
        view.release()
    return fmt, findings, digest["sha256"]


def _sha256(mapped: mmap.mmap) -> str:
    hasher = hashlib.sha256()
    view = memoryview(mapped)
    try:
        for start in range(0, len(view), 64 * MIB):
            hasher.update(view[start : start + 64 * MIB])
    finally:
        view.release()
    return hasher.hexdigest()


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, str]]:
    """Every regular file under the given files and folders (sorted, folders not followed through
    symbolic links), with the label it is reported under."""
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise BadInputError(f"no such file or folder: {root}")
        if root.is_file():
            yield root, str(root)
            continue
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder) / name
                if full.is_file():
                    yield full, str(full)


# When a scan goes to an executor's workers: from this many files, or bytes, on. Measured on 2 cores: a pool of
# two spawned workers starts in about 0.1-0.3 s (they import aisec's scanner, never torch), this process scans a
# small model file in 0.2 ms and hashes 1.5 GB/s. Small pickles, here against a pool of two (`bench/scale.py
# scan`, docs/benchmarks.md): 1,000 files 0.16 s against 0.19 s, 2,000 files 0.29 s against 0.28 s, 5,000 files
# 0.67 s against 0.59 s. A pre-commit hook or a model's folder never pays for a pool; a model hub does.
SPREAD_MIN_FILES = 2_000
SPREAD_MIN_BYTES = 1 * GIB
# A job holds consecutive files, up to this many or this many bytes (a bigger file alone): small files travel
# in batches, so that shipping a job (about 1 ms) costs little beside scanning it, and big files one by one,
# so that their hashes spread over the workers.
JOB_FILES = 64
JOB_BYTES = 256 * MIB


@dataclass(frozen=True)
class ScanJob:
    """Consecutive files to scan on an executor's worker, each with the label it is reported under, and the
    scan's options."""

    files: tuple[tuple[Path, str], ...]
    limits: ScanLimits
    hash_content: bool


def scan_job(job: ScanJob) -> tuple[FileScan, ...]:
    """`scan_file` of each of a job's files (top level, so that any executor can ship it)."""
    return tuple(
        scan_file(path, job.limits, display=label, hash_content=job.hash_content) for path, label in job.files
    )


def worth_spreading(sizes: Sequence[int]) -> bool:
    """Whether scanning files of these sizes on an executor's workers repays starting them (SPREAD_MIN_FILES,
    SPREAD_MIN_BYTES)."""
    return len(sizes) >= 2 and (len(sizes) >= SPREAD_MIN_FILES or sum(sizes) >= SPREAD_MIN_BYTES)


def _jobs(
    found: Sequence[tuple[Path, str]], sizes: Sequence[int], limits: ScanLimits, hash_content: bool
) -> list[ScanJob]:
    """The files in order, cut into jobs of at most JOB_FILES files or (but for a bigger file alone) JOB_BYTES."""
    jobs: list[ScanJob] = []
    batch: list[tuple[Path, str]] = []
    held = 0
    for item, size in zip(found, sizes, strict=True):
        if batch and (len(batch) == JOB_FILES or held + size > JOB_BYTES):
            jobs.append(ScanJob(tuple(batch), limits, hash_content))
            batch, held = [], 0
        batch.append(item)
        held += size
    if batch:
        jobs.append(ScanJob(tuple(batch), limits, hash_content))
    return jobs


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # the scan itself says what is wrong with the file
        return 0


def scan_paths(
    paths: Iterable[str | os.PathLike[str]],
    limits: ScanLimits | None = None,
    on_file: Callable[[FileScan], Any] | None = None,
    hash_content: bool = True,
    executor: Executor | None = None,
) -> ScanReport:
    """Scan every file under `paths`; `on_file` is called after each, in order (progress display). With an
    `executor` other than in-process, a scan that is `worth_spreading` runs on its workers, in jobs of
    consecutive files; the report is the same."""
    from aisec.core.version import __version__

    limits = limits or ScanLimits()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.perf_counter()
    if executor is None or executor.kind == "in_process":
        files = _scan_here(iter_files(paths), limits, hash_content, on_file)
    else:
        found = list(iter_files(paths))
        sizes = [_size(path) for path, _ in found]
        if worth_spreading(sizes):
            files = _scan_on(executor, _jobs(found, sizes, limits, hash_content), on_file)
        else:
            files = _scan_here(found, limits, hash_content, on_file)
    return ScanReport(files, __version__, started_at, time.perf_counter() - started, limits.as_dict())


def _scan_here(
    found: Iterable[tuple[Path, str]],
    limits: ScanLimits,
    hash_content: bool,
    on_file: Callable[[FileScan], Any] | None,
) -> tuple[FileScan, ...]:
    """The files scanned one after another in this process, `on_file` called after each."""
    files = []
    for path, label in found:
        result = scan_file(path, limits, display=label, hash_content=hash_content)
        files.append(result)
        if on_file is not None:
            on_file(result)
    return tuple(files)


def _scan_on(
    executor: Executor, jobs: list[ScanJob], on_file: Callable[[FileScan], Any] | None
) -> tuple[FileScan, ...]:
    """Every job's files scanned on `executor`, in order; `on_file` gets each file in that order, as soon as the
    jobs before its own are done."""
    finished: dict[int, tuple[FileScan, ...]] = {}
    shown = 0

    def on_result(index: int, scans: tuple[FileScan, ...]) -> None:
        nonlocal shown
        finished[index] = scans
        while shown in finished:
            for scan in finished.pop(shown):
                if on_file is not None:
                    on_file(scan)
            shown += 1

    return tuple(scan for scans in executor.map(scan_job, jobs, on_result=on_result) for scan in scans)
