"""aisec against picklescan's own test files: every file picklescan calls dangerous must be `unsafe` here.

picklescan's repository (github.com/mmaitre314/picklescan, MIT) keeps its malicious and benign samples in
`tests/data` and `tests/data2`; they are not copied into this project. Check them out and point this
script at the folder (or at `tests/` to take both):

    git clone --depth 1 https://github.com/mmaitre314/picklescan /tmp/picklescan
    .venv/bin/python bench/picklescan_corpus.py /tmp/picklescan/tests

For each file it prints aisec's verdict and, when the `picklescan` package is installed (`make bench`
installs it), picklescan's: "dangerous" (a dangerous global), "infected" (only suspicious globals),
"clean", or "error" (it could not scan the file). It exits 1 if a file picklescan calls dangerous is not
`unsafe` in aisec, or if a file aisec calls `safe` is one picklescan could not scan or flags.
Last run (picklescan 1.0.5, its repository at 2026-07-01): 109 files, every dangerous one unsafe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aisec.defend.supply_chain import Verdict, scan_file


def picklescan_verdict(path: Path) -> str | None:
    """picklescan's reading of the file, or None when picklescan is not installed."""
    try:
        from picklescan.scanner import SafetyLevel, scan_file_path
    except ImportError:
        return None
    try:
        result = scan_file_path(str(path))
    except Exception as error:  # noqa: BLE001 - picklescan's own failure (e.g. py7zr missing for 7z)
        return f"error ({type(error).__name__})"
    if any(g.safety is SafetyLevel.Dangerous for g in result.globals):
        return "dangerous"
    if result.scan_err:
        return "error"
    return "infected" if result.infected_files else "clean"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="picklescan's tests/ (or tests/data, tests/data2)")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.folder.rglob("*") if p.is_file() and not p.name.endswith(".py"))
    if not files:
        parser.error(f"no files under {args.folder}")
    misses = []
    verdicts = []
    for path in files:
        scan = scan_file(path, hash_content=False)
        verdicts.append(scan.verdict.value)
        theirs = picklescan_verdict(path)
        worst = max(scan.findings, key=lambda f: f.severity.rank, default=None)
        print(
            f"{scan.verdict.value:<10} {theirs or '-':<18} {path.relative_to(args.folder)!s:<48} "
            f"{worst.message if worst else ''}"
        )
        if theirs == "dangerous" and scan.verdict is not Verdict.UNSAFE:
            misses.append(f"picklescan: dangerous, aisec: {scan.verdict.value}: {path}")
        if theirs not in (None, "clean") and scan.verdict is Verdict.SAFE:
            misses.append(f"picklescan: {theirs}, aisec: safe: {path}")
    summary = ", ".join(f"{verdicts.count(v)} {v}" for v in ("unsafe", "suspicious", "error", "safe"))
    print(f"{len(files)} files: {summary}")
    for miss in misses:
        print(miss, file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
