"""Scanner benchmark: aisec against picklescan, modelscan and fickling, in one process run.

Part 1 (corpus): the test corpus (tests/supply_chain/corpus.py: every technique in every container, and
benign real files); for each tool, how many malicious files it flags, how many benign ones it flags
(false alarms), and which techniques it misses. A tool's error on a file counts as a flag.
Part 2 (throughput): a ~1 GB PyTorch checkpoint, a ~200 MB pickle-heavy file (a dict of numpy arrays,
protocol 4) and a ~20 MB opcode-heavy pickle (many small objects); median wall time of each tool in
process (start-up excluded) and MB/s. aisec is timed twice: the analysis alone, and with the sha256 it
reports for every file.
Part 3 (start-up): median wall time of each tool's command line on a tiny pickle, as a new process (at
least 30 runs each, the tools taking turns), and its ratio to picklescan's.

    .venv/bin/python bench/scan.py [--parts corpus,throughput,startup] [--big-mb 1000] [--repeats 3]
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import logging
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "supply_chain"))

from aisec.defend.supply_chain import Verdict, scan_file  # noqa: E402

Flagger = Callable[[Path], bool]


def aisec_flags(path: Path) -> bool:
    return scan_file(path).verdict is not Verdict.SAFE


def picklescan_flags(path: Path) -> bool:
    from picklescan.scanner import scan_file_path

    result = scan_file_path(str(path))
    return bool(result.infected_files or result.scan_err)


def modelscan_flags(path: Path) -> bool:
    from modelscan.modelscan import ModelScan

    with contextlib.redirect_stdout(io.StringIO()):
        result = ModelScan().scan(str(path))
    return bool(result.get("issues") or result.get("errors"))


def fickling_flags(path: Path) -> bool:
    import fickling

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return not bool(fickling.scan_file(str(path), graceful=True))
        except Exception:  # noqa: BLE001 - a crash on a file counts as a flag, as for every tool
            return True


TOOLS: dict[str, Flagger] = {
    "aisec": aisec_flags,
    "picklescan": picklescan_flags,
    "modelscan": modelscan_flags,
    "fickling": fickling_flags,
}


def safe_flag(flagger: Flagger, path: Path) -> bool:
    try:
        return flagger(path)
    except Exception:  # noqa: BLE001 - an exception is a flag (the tool did not call the file safe)
        return True


def corpus_part(root: Path) -> None:
    from corpus import build_benign, build_malicious

    malicious = build_malicious(root / "malicious")
    benign = build_benign(root / "benign")
    print(f"\ncorpus: {len(malicious)} malicious, {len(benign)} benign files")
    print(f"{'tool':12} {'detected':>14} {'false alarms':>14} {'time (s)':>9}")
    misses: dict[str, list[str]] = {}
    for tool, flagger in TOOLS.items():
        started = time.perf_counter()
        hit = [s for s in malicious if safe_flag(flagger, Path(s.path))]
        false = [s for s in benign if safe_flag(flagger, Path(s.path))]
        elapsed = time.perf_counter() - started
        misses[tool] = sorted({f"{s.technique} [{s.container}]" for s in malicious if s not in hit})
        rate = len(hit) / len(malicious)
        print(
            f"{tool:12} {len(hit):>5}/{len(malicious)} {rate:6.1%} {len(false):>6}/{len(benign)} {elapsed:9.1f}"
        )
        for s in false:
            print(f"{'':12}   false alarm: {Path(s.path).name} ({s.technique})")
    ours = set(misses["aisec"])
    for tool, missed in misses.items():
        if tool != "aisec":
            caught_by_us = [m for m in missed if m not in ours]
            print(f"{tool} misses {len(missed)} kinds; aisec catches {len(caught_by_us)} of those")
    if ours:
        print("aisec misses:", *ours, sep="\n  ")


def make_big_files(root: Path, big_mb: int) -> dict[str, Path]:
    import torch

    rng = np.random.default_rng(0)
    files = {}
    checkpoint = root / "checkpoint.pt"
    state = {f"layer{i}.weight": torch.from_numpy(rng.standard_normal(4 << 20, dtype=np.float32))  # 16 MB
             for i in range(max(1, big_mb // 16))}  # fmt: skip
    torch.save(state, checkpoint)
    files["checkpoint (torch zip)"] = checkpoint
    heavy = root / "heavy.pkl"
    with open(heavy, "wb") as handle:
        pickle.dump({f"w{i}": rng.standard_normal(250_000).astype(np.float32) for i in range(200)}, handle, 4)
    files["pickle-heavy (arrays)"] = heavy
    small = root / "objects.pkl"
    with open(small, "wb") as handle:
        pickle.dump([{"id": i, "name": f"n{i}", "v": [i, i + 0.5, None]} for i in range(450_000)], handle, 4)
    files["opcode-heavy (objects)"] = small
    return files


def throughput_part(root: Path, big_mb: int, repeats: int) -> None:
    files = make_big_files(root, big_mb)
    timers: dict[str, Flagger] = {"aisec (analysis)": lambda p: scan_file(p, hash_content=False).verdict.value != "safe",
                                  "aisec (+sha256)": aisec_flags, **{k: v for k, v in TOOLS.items() if k != "aisec"}}  # fmt: skip
    print(
        f"\nthroughput, median of {repeats} (MB/s; higher is better; 'flag' = the tool flagged the benign file)"
    )
    for label, path in files.items():
        size_mb = path.stat().st_size / 1e6
        print(f"{label}: {size_mb:.0f} MB")
        for tool, flagger in timers.items():
            times, flagged = [], False
            for _ in range(repeats):
                started = time.perf_counter()
                flagged = safe_flag(flagger, path)
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            print(f"  {tool:18} {median:8.3f} s {size_mb / median:10.0f} MB/s{'  flag' if flagged else ''}")


def startup_part(root: Path, repeats: int) -> None:
    """Each tool's command line on a tiny pickle, as a new process, the tools taking turns round by round (so
    a change in the machine's load falls on all of them); aisec's sources byte-compiled first, as pip does
    when it installs a package (an editable install under PYTHONDONTWRITEBYTECODE=1 would compile them on
    every run)."""
    tiny = root / "tiny.pkl"
    tiny.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    compileall.compile_dir(Path(__file__).parents[1] / "src" / "aisec", quiet=1)
    bin_dir = Path(sys.executable).parent
    commands = {
        "aisec": [str(bin_dir / "aisec"), "scan", "-q", str(tiny)],
        "picklescan": [str(bin_dir / "picklescan"), "-p", str(tiny)],
        "modelscan": [str(bin_dir / "modelscan"), "-p", str(tiny)],
        "fickling": [str(bin_dir / "fickling"), "--check-safety", str(tiny)],
    }
    times: dict[str, list[float]] = {tool: [] for tool in commands}
    for _ in range(repeats):
        for tool, command in commands.items():
            started = time.perf_counter()
            subprocess.run(
                command, capture_output=True, check=False, cwd=root
            )  # fickling writes into its cwd
            times[tool].append(time.perf_counter() - started)
    print(f"\nstart-up: a new process scanning a tiny pickle, median of {repeats} (s; ratio to picklescan)")
    reference = statistics.median(times["picklescan"])
    for tool, runs in times.items():
        median = statistics.median(runs)
        print(f"  {tool:12} {median:.3f}  {median / reference:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="corpus,throughput,startup")
    parser.add_argument("--big-mb", type=int, default=1000, help="size of the PyTorch checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # modelscan and fickling log every file
    parts = set(args.parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="aisec-bench-scan-"))
    try:
        if "corpus" in parts:
            corpus_part(root / "corpus")
        if "throughput" in parts:
            throughput_part(root, args.big_mb, args.repeats)
        if "startup" in parts:
            startup_part(root, max(args.repeats, 30))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
