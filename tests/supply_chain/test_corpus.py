"""The scanner against the corpus of corpus.py: it flags every malicious sample, passes every benign one,
and runs nothing while scanning; and the corpus is real: each payload runs under the loader a victim uses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from corpus import (  # noqa: E402
    CONTAINERS,
    MARKER_PREFIX,
    TECHNIQUES,
    Sample,
    build_benign,
    build_malicious,
    payload_modules,
)

# Modules a static scanner may well import itself (parsers, codecs, numpy): importing them proves nothing.
SCANNER_MAY_IMPORT = {
    "builtins", "__builtin__", "_io", "io", "_codecs", "codecs", "copyreg", "copy_reg", "collections", "functools",
    "types", "marshal", "pickle", "_pickle", "cPickle", "numpy", "os", "posix", "sys", "jinja2", "zipfile", "gzip",
    "bz2", "lzma", "tarfile", "json", "struct", "operator", "_operator", "importlib", "random", "commands",
    "torch", "torch.serialization",
}  # fmt: skip
MARKER_WAIT_SECONDS = (
    20  # payloads that start a child process (Popen, spawnv) create their marker a bit later
)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def malicious(corpus_root: Path) -> list[Sample]:
    return build_malicious(corpus_root)


@pytest.fixture(scope="module")
def benign(corpus_root: Path) -> list[Sample]:
    return build_benign(corpus_root)


def markers_under(root: Path) -> list[Path]:
    return sorted(root.rglob(f"{MARKER_PREFIX}*"))


def _describe(sample: Sample, scan: object) -> str:
    findings = "; ".join(f"{f.rule_id} {f.severity.value} {f.message} @{f.location}" for f in scan.findings)  # type: ignore[attr-defined]
    return f"  {sample.container:<28} {sample.technique:<36} {scan.verdict.value:<10} {findings or 'no findings'}"  # type: ignore[attr-defined]


# The corpus itself ---------------------------------------------------------------------------------------


def test_corpus_is_well_formed(corpus_root: Path, malicious: list[Sample], benign: list[Sample]) -> None:
    samples = malicious + benign
    assert len({s.path for s in samples}) == len(samples), "two samples share a path"
    assert all(s.path.is_file() and 0 < s.path.stat().st_size < 4_000_000 for s in samples)
    assert sum(s.path.stat().st_size for s in samples) < 60_000_000
    assert all(s.path.resolve().is_relative_to(corpus_root.resolve()) for s in samples)
    for sample in malicious:
        assert sample.source and sample.technique and sample.container, sample
        assert sample.marker is None or sample.marker.parent == corpus_root / "markers", sample
        assert not sample.executes or (sample.loader is not None and sample.marker is not None), sample
    with_markers = [s.marker for s in malicious if s.marker is not None]
    assert len(set(with_markers)) == len(with_markers), "two samples share a marker"
    assert markers_under(corpus_root) == [], "building the corpus ran a payload"
    techniques = Counter(s.technique for s in malicious)
    assert all(techniques[t.name] >= 20 or t.heavy or t.whole_only for t in TECHNIQUES), techniques
    containers = Counter(s.container for s in malicious)
    assert all(containers[c.name] > 0 for c in CONTAINERS), containers
    assert sum(s.executes for s in malicious) > 0.9 * len(malicious)
    assert {s.container for s in benign} >= {"torch-zip", "torch-legacy", "torchscript", "pickle", "joblib",
                                             "numpy", "npz", "safetensors", "onnx"}  # fmt: skip


def _loader_available(sample: Sample) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in sample.requires)


def run_loaders(samples: list[Sample], work: Path) -> dict[Path, str]:
    """Load every sample with its victim loader: one subprocess per loader family, confined to `work`
    (working directory, HOME, TMPDIR, caches). Returns each sample's outcome ("ok" or the exception)."""
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps([{"path": str(s.path), "loader": s.loader} for s in samples if s.loader]))
    (work / "tmp").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "TMPDIR": str(work / "tmp"),
        "XDG_CACHE_HOME": str(work / ".cache"),
        "XDG_CONFIG_HOME": str(work / ".config"),
        "MPLCONFIGDIR": str(work / ".matplotlib"),
        "KERAS_HOME": str(work / ".keras"),
        "KERAS_BACKEND": "torch",
        "TORCHINDUCTOR_CACHE_DIR": str(work / ".inductor"),
        "PIP_NO_CACHE_DIR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
        "LC_ALL": "C.UTF-8",
    }
    outcome: dict[Path, str] = {}
    for family in sorted({s.loader for s in samples if s.loader}):
        with open(work / f"{family}.log", "wb") as log:
            subprocess.run(
                [sys.executable, str(HERE / "payload_check.py"), str(manifest), family],
                cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=900,
                check=True,
            )  # fmt: skip
        result = json.loads(Path(f"{manifest}.{family}.out").read_text())
        outcome.update({Path(path): text for path, text in result.items()})
    return outcome


@pytest.mark.slow
def test_malicious_payloads_really_run(tmp_path: Path) -> None:
    """Every payload the corpus says runs does run under its victim's loader, and no other one does."""
    samples = [s for s in build_malicious(tmp_path) if s.loader and _loader_available(s)]
    outcome = run_loaders(samples, tmp_path)
    deadline = time.monotonic() + MARKER_WAIT_SECONDS
    expected = [s for s in samples if s.executes]
    while time.monotonic() < deadline and not all(s.marker.exists() for s in expected):  # type: ignore[union-attr]
        time.sleep(0.2)
    time.sleep(1)  # a payload that should not run gets the same chance to show up
    silent = [s for s in expected if not s.marker.exists()]  # type: ignore[union-attr]
    surprising = [s for s in samples if not s.executes and s.marker.exists()]  # type: ignore[union-attr]
    report = [
        f"  did not run: {s.container} {s.technique} ({s.loader}): {outcome.get(s.path)}" for s in silent
    ]
    report += [
        f"  ran but is recorded as not running: {s.container} {s.technique} ({s.loader})" for s in surprising
    ]
    assert not report, f"{len(report)} samples behave unlike their record:\n" + "\n".join(report)


@pytest.mark.slow
def test_benign_samples_load(tmp_path: Path) -> None:
    """The benign files are real: each loads with the loader its format has."""
    samples = [s for s in build_benign(tmp_path) if s.loader and _loader_available(s)]
    outcome = run_loaders(samples, tmp_path)
    failures = [f"  {s.path.name}: {outcome.get(s.path)}" for s in samples if outcome.get(s.path) != "ok"]
    assert not failures, "benign samples that do not load:\n" + "\n".join(failures)


# The scanner against the corpus ---------------------------------------------------------------------------


def test_scanner_flags_every_malicious_sample(malicious: list[Sample]) -> None:
    from aisec.defend.supply_chain import Verdict, scan_file

    misses = []
    for sample in malicious:
        scan = scan_file(sample.path)
        if scan.verdict is Verdict.SAFE:
            misses.append(_describe(sample, scan))
    assert not misses, f"{len(misses)} of {len(malicious)} malicious samples scanned as safe:\n" + "\n".join(
        misses
    )


def test_scanner_rates_every_code_execution_unsafe(malicious: list[Sample]) -> None:
    """A payload that runs code when loaded is `unsafe` (a high or critical finding), never merely
    `suspicious`: a published gadget belongs on the deny list (picklescan's GHSA-g38g-8gr9-h9xp gadgets,
    logging.FileHandler and the torch helpers were once rated medium)."""
    from aisec.defend.supply_chain import Verdict, scan_file

    mild = []
    for sample in malicious:
        if not sample.executes:
            continue
        scan = scan_file(sample.path)
        if scan.verdict is not Verdict.UNSAFE:
            mild.append(_describe(sample, scan))
    assert not mild, f"{len(mild)} code-running samples are not rated unsafe:\n" + "\n".join(mild)


def test_scanner_passes_every_benign_sample(benign: list[Sample]) -> None:
    from aisec.defend.supply_chain import Verdict, scan_file

    alarms = []
    for sample in benign:
        scan = scan_file(sample.path)
        if scan.verdict is not Verdict.SAFE:
            alarms.append(
                f"  {sample.path.relative_to(sample.path.parents[1])}: " + _describe(sample, scan).strip()
            )
    assert not alarms, f"{len(alarms)} of {len(benign)} benign samples not safe:\n" + "\n".join(alarms)


def test_scanning_leaves_no_trace(tmp_path: Path) -> None:
    """Scanning the whole malicious corpus runs no payload and imports no module a payload names."""
    from aisec.defend.supply_chain import scan_file

    samples = build_malicious(tmp_path / "corpus")
    gadgets = payload_modules(tmp_path / "probe") - SCANNER_MAY_IMPORT
    absent = {name for name in gadgets if name not in sys.modules}
    for sample in samples:
        scan_file(sample.path)
    time.sleep(1)  # give a (wrongly) spawned child process the time to write its marker
    assert markers_under(tmp_path) == [], "scanning ran a payload"
    imported = sorted(name for name in absent if name in sys.modules)
    assert not imported, f"scanning imported modules named by payloads: {imported}"
