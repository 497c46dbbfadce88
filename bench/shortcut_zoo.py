"""Shortcut ("Clever Hans") study: `image_shortcuts` on a zoo of digits CNNs that learnt a watermark, and on their
clean twins.

Every model of tests/watermark_zoo.py's STUDY_ZOO (or TEST_ZOO with `--zoo test`): the digits CNN trained with
a small mark on every training image of one class (corners, sides, inside the digit; 1x2 to 3x3; solid,
checkerboard, half-bright), inspected with the test split carrying the same mark on every image of that class;
its clean twin (same seed and recipe, no mark) inspected with the clean test split and with the marked one.
Attributions: integrated gradients of each sample's own class (`explanations.attribute`, 32 steps).

Ground truth, measured with the exact mark and no attribution (`watermark_effect`): the share of the other
classes' inputs that stamping the mark sends to the class, and the class's recall with and without the mark. A
model "relies" on its mark when stamping moves >= 0.2 of the other inputs or removing it loses >= 0.2 of the
recall; a mark the model did not learn cannot be caught, and such models are counted apart.

    .venv/bin/python bench/shortcut_zoo.py                 # STUDY_ZOO: 137 s with training, 1 thread, busy 2-core box
    .venv/bin/python bench/shortcut_zoo.py --zoo test

Per model: the figures of the mark's class, what the check flagged, whether it was caught (flagged class =
the mark's class, region overlapping the mark), and whether the twin was flagged on either data. Then a
summary line. Models are cached under bench/results/cache/shortcut_zoo/ by recipe.

Result (STUDY_ZOO): caught 10/16, all with the right class and region; 10 of the 12 models that rely on their
mark. Missed: a mark in the middle of the digit, where the other classes' evidence lies too (concentration 3),
and a half-bright mark (mass share 0.28). Twins flagged 0/16, with clean and with watermarked data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from watermark_zoo import (  # noqa: E402
    STUDY_ZOO,
    TEST_ZOO,
    WatermarkModel,
    inspect,
    inspection_data,
    overlaps,
    train_twin,
    train_watermarked,
    watermark_effect,
)

from aisec.data.dataset import LabelledData  # noqa: E402
from aisec.defend.auditability.shortcuts import ShortcutResult  # noqa: E402

CACHE = Path(__file__).resolve().parent / "results" / "cache" / "shortcut_zoo"


def timed_inspect(model: nn.Module, data: LabelledData) -> tuple[ShortcutResult, float]:
    """The check and its wall time (attribution included)."""
    start = time.perf_counter()
    result = inspect(model, data)
    return result, time.perf_counter() - start


def flagged(result: ShortcutResult) -> str:
    return "-" if result.shortcut_class is None else f"{result.shortcut_class}@{result.region}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zoo", choices=("study", "test"), default="study")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo: tuple[WatermarkModel, ...] = STUDY_ZOO if args.zoo == "study" else TEST_ZOO
    start = time.perf_counter()
    relying = caught = caught_relying = right_class = right_region = 0
    twins_flagged = twins_clean = twins_marked = 0
    times: list[float] = []
    print(
        "model                 class mark          | stamp  recall m/c relies | mass  others survival flip  "
        "area  clusters        | flagged        caught | twin clean / marked"
    )
    for spec in zoo:
        model = train_watermarked(spec, args.cache)
        twin = train_twin(spec, args.cache)
        effect = watermark_effect(model, spec)
        relies = effect.relies()
        result, seconds = timed_inspect(model, inspection_data(spec, marked=True))
        clean, seconds_clean = timed_inspect(twin, inspection_data(spec, marked=False))
        marked, seconds_marked = timed_inspect(twin, inspection_data(spec, marked=True))
        times += [seconds, seconds_clean, seconds_marked]
        s = result.classes[spec.target]
        is_class = result.shortcut_class == spec.target
        is_region = is_class and result.region is not None and overlaps(result.region, spec.mark.region)
        relying += relies
        caught += is_region
        caught_relying += is_region and relies
        right_class += is_class
        right_region += is_region
        twin_clean, twin_marked = clean.shortcut_class is not None, marked.shortcut_class is not None
        twins_clean += twin_clean
        twins_marked += twin_marked
        twins_flagged += twin_clean or twin_marked
        clusters = ",".join(f"{c:.2f}" for c in s.clusters)
        print(
            f"{spec.name:21s} {spec.target:5d} {str(spec.mark.region):13s} | {effect.stamp_rate:5.2f}  "
            f"{effect.recall_marked:4.2f}/{effect.recall_clean:4.2f}   {'yes' if relies else 'no ':6s} | "
            f"{s.mass_share:4.2f}  {s.others_share:5.3f}  {s.survival:6.2f}  {s.flip_rate:5.2f}  "
            f"{s.area_ratio:4.2f}  {clusters:15s} | {flagged(result):14s} {'yes' if is_region else 'no ':6s} | "
            f"{flagged(clean)} / {flagged(marked)}",
            flush=True,
        )
    n = len(zoo)
    times.sort()
    print(
        f"caught {caught}/{n} (right class {right_class}/{n}, right region {right_region}/{n}); of the models "
        f"relying on their mark {caught_relying}/{relying}; twins flagged {twins_flagged}/{n} (clean data "
        f"{twins_clean}/{n}, watermarked data {twins_marked}/{n}); median check {times[len(times) // 2]:.1f} s "
        f"(integrated gradients included); total {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
