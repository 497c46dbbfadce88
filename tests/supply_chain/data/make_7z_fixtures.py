"""Write the 7z fixtures of test_sevenzip.py with the real 7-Zip (`7zz`, Debian package `7zip`, 26.x).

Each archive holds the same benign files (`fixture_members()`, rebuilt by the test to compare byte for byte)
packed with one method; `*-evil.7z` adds `evil.pkl`, a pickle that imports builtins.eval (it evaluates
"0"). The files are committed, so the tests need no 7-Zip; run this only to regenerate them:

    .venv/bin/python tests/supply_chain/data/make_7z_fixtures.py
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "7z"
PASSWORD = "aisec"
# name -> 7zz switches. The default (LZMA2, solid, LZMA-packed header) first.
METHODS: dict[str, list[str]] = {
    "lzma2": [],
    "lzma": ["-m0=LZMA"],
    "copy": ["-m0=Copy"],
    "deflate": ["-m0=Deflate"],
    "bzip2": ["-m0=BZip2"],
    "delta-lzma2": ["-m0=Delta:4", "-m1=LZMA2"],
    "bcj-lzma": ["-m0=BCJ", "-m1=LZMA"],
    "bcj-lzma2": ["-m0=BCJ", "-m1=LZMA2"],
    "sparc-arm-lzma": ["-m0=SPARC", "-m1=ARM", "-m2=LZMA"],
    "delta-copy": ["-m0=Delta:2", "-m1=Copy"],
    "nonsolid": ["-ms=off"],
    "plain-header": ["-mhc=off"],
}
# name -> switches for archives whose members aisec cannot decode (AISEC-SC-105).
UNSUPPORTED: dict[str, list[str]] = {
    "aes": [f"-p{PASSWORD}"],
    "aes-header": [f"-p{PASSWORD}", "-mhe=on"],
    "ppmd": ["-m0=PPMd"],
    "bcj2": ["-mf=BCJ2"],
    "arm64": ["-m0=ARM64", "-m1=LZMA2"],
}


def fixture_members() -> dict[str, bytes]:
    weights = io.BytesIO()
    np.save(weights, np.arange(1024, dtype=np.int32))  # E8/E9 bytes in it: the BCJ filters change them
    return {
        "model.pkl": pickle.dumps(OrderedDict(weight=[0.5, -1.25], bias=[0.0]), protocol=4),
        "weights.npy": weights.getvalue(),
        "notes.txt": b"aisec 7z fixture\n" * 20,
    }


EVIL = b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x000\x85R."  # builtins.eval("0")


def _seven_zip(archive: Path, switches: list[str], members: list[str], cwd: Path) -> None:
    archive.unlink(missing_ok=True)
    subprocess.run(["7zz", "a", "-bso0", "-bsp0", "-mtm=off", "-mtc=off", "-mta=off", *switches, str(archive),
                    *members], cwd=cwd, check=True)  # fmt: skip


def main() -> None:
    if shutil.which("7zz") is None:
        sys.exit("7zz not found (apt-get install 7zip)")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name, data in fixture_members().items():
            (work / name).write_bytes(data)
        (work / "evil.pkl").write_bytes(EVIL)
        benign = sorted(fixture_members())
        for name, switches in METHODS.items():
            _seven_zip(OUT / f"{name}.7z", switches, benign, work)
            _seven_zip(OUT / f"{name}-evil.7z", switches, [*benign, "evil.pkl"], work)
        for name, switches in UNSUPPORTED.items():
            _seven_zip(OUT / f"{name}.7z", switches, benign, work)
        # Folders, an empty file and a symbolic link (stored as a link with -snl).
        (work / "tree" / "sub").mkdir(parents=True)
        (work / "tree" / "sub" / "model.pkl").write_bytes(fixture_members()["model.pkl"])
        (work / "tree" / "empty.txt").write_bytes(b"")
        _seven_zip(OUT / "tree.7z", [], ["sub", "empty.txt"], work / "tree")
        os.symlink("sub/model.pkl", work / "tree" / "link.pkl")
        _seven_zip(OUT / "symlink.7z", ["-snl"], ["sub", "link.pkl"], work / "tree")
        (work / "nothing").mkdir()
        (work / "nothing" / "empty.txt").write_bytes(b"")
        _seven_zip(OUT / "only-empty-file.7z", [], ["empty.txt"], work / "nothing")
    print(f"{len(list(OUT.glob('*.7z')))} archives in {OUT}")


if __name__ == "__main__":
    main()
