"""`aisec scan` on an executor: a pool of processes gives the report, the progress and the JSON of the scan in
this process; a scan too small to repay a pool runs here (and imports no torch); bad executor choices are one
line of error, exit 2, on the fast path and through typer alike."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aisec.cli import app, supply_chain
from aisec.cli import scan as fast
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor
from aisec.defend.supply_chain import scanner
from aisec.defend.supply_chain.limits import MIB, ScanLimits
from aisec.defend.supply_chain.result import FileScan

SEVEN_ZIP = Path(__file__).parent / "supply_chain/data/7z"
runner = CliRunner()


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """About twenty files of every verdict, in nested folders: the 7z fixtures of tests/supply_chain/data and the
    pickles, arrays, archives and text the scan CLI's tests write."""
    root = tmp_path / "models"
    (root / "archives").mkdir(parents=True)
    (root / "plain").mkdir()
    for name in sorted(p.name for p in SEVEN_ZIP.glob("*.7z"))[:10]:
        shutil.copy(SEVEN_ZIP / name, root / "archives" / name)
    plain = root / "plain"
    (plain / "weights.pkl").write_bytes(pickle.dumps({"w": np.arange(4.0)}, protocol=4))
    (plain / "evil.pt").write_bytes(pickle.dumps(_System(), protocol=2))
    (plain / "odd.pkl").write_bytes(pickle.dumps(Path, protocol=4) + b"tail")
    np.save(plain / "bias.npy", np.zeros(3))
    (plain / "README.md").write_text("# a model\n")
    (plain / "empty.bin").write_bytes(b"")
    (plain / "config.json").write_text(json.dumps({"layers": 3}))
    with zipfile.ZipFile(plain / "checkpoint.zip", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_System(), protocol=2))
    with tarfile.open(plain / "bundle.tar.gz", "w:gz") as archive:
        data = pickle.dumps([1, 2, 3])
        info = tarfile.TarInfo("model/list.pkl")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (plain / "state.pkl.gz").write_bytes(gzip.compress(pickle.dumps({"b": 1})))
    return root


class _Counting(LocalProcessExecutor):
    """A pool that counts the jobs it was given."""

    jobs = 0

    def map(self, fn, jobs, *, on_result=None):
        self.jobs += len(jobs)
        return super().map(fn, jobs, on_result=on_result)


def _same(scans: tuple[FileScan, ...]) -> list[FileScan]:
    """The scans without their durations, which differ from run to run."""
    return [dataclasses.replace(scan, duration_s=0.0) for scan in scans]


def test_a_pool_scans_as_this_process_does(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same files, formats, hashes, findings and verdicts in the same order, and `on_file` sees them in that
    order, though jobs of three files finish in any order on two workers."""
    monkeypatch.setattr(scanner, "SPREAD_MIN_FILES", 2)
    monkeypatch.setattr(scanner, "JOB_FILES", 3)
    here: list[FileScan] = []
    there: list[FileScan] = []
    pool = _Counting(2)
    expected = scanner.scan_paths([mixed], on_file=here.append, executor=InProcessExecutor())
    report = scanner.scan_paths([mixed], on_file=there.append, executor=pool)
    assert len(report.files) == 20 and pool.jobs == 7
    assert {scan.verdict.value for scan in report.files} >= {"safe", "unsafe", "suspicious", "error"}
    assert _same(report.files) == _same(expected.files) == _same(tuple(here)) == _same(tuple(there))
    assert report.verdict is expected.verdict and report.limits == expected.limits


def test_small_scans_and_in_process_executors_stay_here(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Refuses(LocalProcessExecutor):
        def map(self, *args, **kwargs):
            raise AssertionError("a small scan started a pool")

    assert not scanner.worth_spreading([MIB] * 20) and not scanner.worth_spreading([8 * 2**30])
    assert scanner.worth_spreading([2**30] * 4) and scanner.worth_spreading([1] * scanner.SPREAD_MIN_FILES)
    expected = scanner.scan_paths([mixed])
    assert _same(scanner.scan_paths([mixed], executor=Refuses(2)).files) == _same(expected.files)
    monkeypatch.setattr(scanner, "SPREAD_MIN_FILES", 2)
    assert _same(scanner.scan_paths([mixed], executor=InProcessExecutor()).files) == _same(expected.files)


def test_jobs_hold_consecutive_files_and_big_files_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner, "JOB_FILES", 3)
    found = [(Path(f"f{i}"), f"f{i}") for i in range(8)]
    sizes = [1, 1, scanner.JOB_BYTES, 1, 1, 1, 1, 1]
    jobs = scanner._jobs(found, sizes, ScanLimits(), True)
    assert [[label for _, label in job.files] for job in jobs] == [
        ["f0", "f1"], ["f2"], ["f3", "f4", "f5"], ["f6", "f7"]
    ]  # fmt: skip
    assert pickle.loads(pickle.dumps(jobs[0])) == jobs[0]


def _normalise(text: str) -> str:
    """Durations and start times differ from run to run."""
    return re.sub(r'\d+\.\d+|"started_at": "[^"]*"', "X", text)


def test_the_cli_on_a_pool_prints_and_writes_what_it_does_here(
    mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanner, "SPREAD_MIN_FILES", 2)
    monkeypatch.setattr(scanner, "JOB_FILES", 4)
    spread = []
    scan_on = scanner._scan_on
    monkeypatch.setattr(
        scanner,
        "_scan_on",
        lambda executor, jobs, on_file: spread.append(executor.kind) or scan_on(executor, jobs, on_file),
    )
    env = {"COLUMNS": "300"}
    here = runner.invoke(app, ["scan", str(mixed), "--json", str(tmp_path / "here.json")], env=env)
    pool = runner.invoke(
        app,
        ["scan", str(mixed), "--json", str(tmp_path / "pool.json"), "--executor", "pool", "--workers", "2"],
        env=env,
    )
    assert here.exit_code == pool.exit_code == 1, pool.output
    assert spread == ["pool"]
    assert _normalise(pool.output) == _normalise(here.output)
    assert _normalise((tmp_path / "pool.json").read_text()) == _normalise(
        (tmp_path / "here.json").read_text()
    )
    assert json.loads((tmp_path / "pool.json").read_text())["summary"]["unsafe"] >= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "threads"], "error: --executor: unknown executor 'threads': in_process, pool or ray"),
        (["--workers", "3"], "error: --executor: the in_process executor runs one job at a time: use kind pool or ray for several workers"),
        (["--executor", "pool", "--ray-address", "auto"], "error: --executor: --ray-address: for the ray executor only, not pool"),
    ],
)  # fmt: skip
def test_bad_executor_choices_are_one_line_and_exit_2(args: list[str], message: str, mixed: Path) -> None:
    typer_path = runner.invoke(app, ["scan", str(mixed), *args], env={"COLUMNS": "300"})
    assert typer_path.exit_code == 2 and typer_path.output == message + "\n"
    if args[0] == "--executor" and len(args) == 2:
        fast_path = subprocess.run([sys.executable, "-m", "aisec", "scan", str(mixed), *args], capture_output=True,
                                   text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})  # fmt: skip
        assert (fast_path.returncode, fast_path.stdout, fast_path.stderr) == (2, "", message + "\n")


def _typer_options(args: list[str], monkeypatch: pytest.MonkeyPatch) -> fast.ScanOptions | None:
    seen: list[fast.ScanOptions] = []
    monkeypatch.setattr(supply_chain, "run_scan", lambda options: seen.append(options) or 0)
    result = runner.invoke(app, ["scan", *args])
    assert bool(seen) == (result.exit_code == 0), result.output
    return seen[0] if seen else None


@pytest.mark.parametrize(
    "args",
    [
        ["m.pt", "--executor", "pool", "--workers", "4"],
        ["m.pt", "--executor=ray", "--ray-address=ray://head:10001", "--workers=16"],
        ["--executor", "threads", "m.pt", "--workers", "2", "--workers", "3"],  # checked later, on both paths
        ["m.pt", "--executor", "in_process", "-q"],
    ],
)
def test_executor_options_parse_as_typer_parses_them(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fast.parse(args) == _typer_options(args, monkeypatch) is not None


@pytest.mark.parametrize(
    "args",
    [
        ["m.pt", "--workers", "0"],
        ["m.pt", "--workers", "two"],
        ["m.pt", "--workers", "+2"],
        ["m.pt", "--executor"],
    ],
)
def test_odd_executor_values_are_left_to_typer(args: list[str]) -> None:
    assert fast.parse(args) is None


def test_a_small_scan_on_a_pool_starts_none_and_imports_no_torch(mixed: Path) -> None:
    code = (
        "import sys; sys.argv = ['aisec', 'scan', '-q', sys.argv[1], '--executor', 'pool', '--workers', '2']\n"
        "from aisec.cli import main; from aisec.core import executor; pools = []\n"
        "executor.LocalProcessExecutor.map = lambda *args, **kwargs: pools.append(args)\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 1, exit.code\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'onnxruntime') if m in sys.modules), len(pools))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(mixed)], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines()[-1] == "[] 0", result.stderr
