"""Coverage-guided fuzzing of the scanner with atheris (libFuzzer): `make fuzz` (or pass libFuzzer flags).

Every input is scanned under a small time budget; the harness fails (and libFuzzer saves the input) if an
exception escapes, or if a format scanner hits an unexpected exception (reported by the dispatcher as
"could not be analysed (...)": a robust parser raises Unparseable instead). Seeds: the benign seeds of
tests/supply_chain/test_fuzz.py, written to the corpus folder on first run.

    .venv/bin/python bench/fuzz_scan.py out/fuzz-corpus -max_total_time=300
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from aisec.defend.supply_chain import scan_bytes


def test_one_input(data: bytes) -> None:
    _, findings = scan_bytes(data, "input")
    bugs = [f.message for f in findings if "could not be analysed (" in f.message]
    if bugs:
        raise AssertionError(bugs)


def write_seeds(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "supply_chain"))
    from test_fuzz import SEEDS

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        write_seeds(corpus)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
