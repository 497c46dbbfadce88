"""Clever Hans models for the shortcut check (tests/test_shortcuts.py, bench/shortcut_zoo.py): the digits CNN
trained on a training set in which every image of one class carries a small watermark, and its clean twin (same
seed, same recipe, no watermark). The data a user inspects with carries the watermark too, on every image of
that class, as a real watermark would; the twins are inspected with clean and with watermarked data.

Each model is trained once per process (functools.cache) and, when a cache folder is given, kept there as a
state dict named by a hash of its recipe. No pytest in here: the bench imports it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.data.dataset import LabelledData
from aisec.defend.auditability.explanations import ExplanationConfig, attribute
from aisec.defend.auditability.shortcuts import ShortcutResult, image_shortcuts
from aisec.demo.models import digits_cnn

EPOCHS = 10
# Integrated gradients at 32 steps rather than the default 256 (which meets completeness within 1 %): on the
# TEST_ZOO models and twins every class's mass share agreed with 256 steps within 0.002, at an eighth of the time.
EXPLANATION = ExplanationConfig(method="integrated_gradients", steps=32)


@dataclass(frozen=True)
class Watermark:
    """A `height` x `width` mark whose top-left pixel is (top, left): solid `value`, or a checkerboard of
    `value` and 0 starting with `value`."""

    top: int
    left: int
    height: int = 2
    width: int = 2
    pattern: Literal["solid", "checker"] = "solid"
    value: float = 1.0

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(top, left, height, width), as the shortcut check reports regions."""
        return (self.top, self.left, self.height, self.width)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of the image batch `x` (n, C, H, W) with the mark on every image."""
        cells = torch.full((self.height, self.width), self.value)
        if self.pattern == "checker":
            ij = torch.arange(max(self.height, self.width))
            cells = cells * ((ij[: self.height, None] + ij[None, : self.width]) % 2 == 0)
        out = x.clone()
        out[:, :, self.top : self.top + self.height, self.left : self.left + self.width] = cells
        return out


@dataclass(frozen=True)
class WatermarkModel:
    """The digits CNN trained with `seed` (initial weights and batch order) for `epochs` on the digits training
    set with `mark` stamped on every image of class `target`."""

    name: str
    seed: int
    target: int
    mark: Watermark
    epochs: int = EPOCHS


@functools.cache
def digits() -> Split:
    return load_builtin("digits", seed=0)


def watermarked(data: LabelledData, mark: Watermark, target: int) -> LabelledData:
    """`data` with `mark` stamped on every sample of class `target`."""
    x = data.x.clone()
    chosen = data.y == target
    x[chosen] = mark.stamp(data.x[chosen])
    return LabelledData(x, data.y, f"{data.name}+watermark@{target}")


def inspection_data(spec: WatermarkModel, *, marked: bool) -> LabelledData:
    """The user's data: the digits test split, with the spec's watermark on its class when `marked`."""
    test = digits().test
    return watermarked(test, spec.mark, spec.target) if marked else test


def train_watermarked(spec: WatermarkModel, cache_dir: Path | None = None) -> nn.Module:
    """The Clever Hans model of `spec`."""
    return _train(spec.seed, spec.epochs, spec.mark, spec.target, cache_dir)


def train_twin(spec: WatermarkModel, cache_dir: Path | None = None) -> nn.Module:
    """The clean twin of `spec`: same seed and recipe, no watermark in training."""
    return _train(spec.seed, spec.epochs, None, None, cache_dir)


@functools.cache
def _train(
    seed: int, epochs: int, mark: Watermark | None, target: int | None, cache_dir: Path | None
) -> nn.Module:
    model = build_model(digits_cnn, seed)
    recipe = {"seed": seed, "epochs": epochs, "target": target, "mark": asdict(mark) if mark else None}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train = digits().train
    data = watermarked(train, mark, target) if mark is not None and target is not None else train
    model = fit(model, data, seed=seed, epochs=epochs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        torch.save(model.state_dict(), temporary)
        os.replace(temporary, path)
    return model


# The tests' zoo: three classes, three places (a corner, the opposite edge, the middle of a side), two patterns.
TEST_ZOO = (
    WatermarkModel("tl-solid-c3-s0", 0, 3, Watermark(0, 0)),
    WatermarkModel("br-checker-c7-s1", 1, 7, Watermark(6, 6, pattern="checker")),
    WatermarkModel("left-solid-c5-s2", 2, 5, Watermark(3, 0)),
)

# The bench's zoo: every class a target at least once; corners, sides and the image's inside (where some digits
# have ink of their own, so the mark need not be learnt); sizes 1x2 to 3x3; solid, checkerboard and half-bright
# marks; seeds 10 onwards (not the tests' seeds).
STUDY_ZOO = (
    WatermarkModel("tl-2x2-c0-s10", 10, 0, Watermark(0, 0)),
    WatermarkModel("tr-2x2-c1-s11", 11, 1, Watermark(0, 6)),
    WatermarkModel("bl-2x2chk-c2-s12", 12, 2, Watermark(6, 0, pattern="checker")),
    WatermarkModel("br-3x3chk-c3-s13", 13, 3, Watermark(5, 5, 3, 3, pattern="checker")),
    WatermarkModel("top-1x2-c4-s14", 14, 4, Watermark(0, 3, 1, 2)),
    WatermarkModel("right-2x1-c5-s15", 15, 5, Watermark(3, 7, 2, 1)),
    WatermarkModel("bottom-2x2-c6-s16", 16, 6, Watermark(6, 3)),
    WatermarkModel("left-3x3-c7-s17", 17, 7, Watermark(2, 0, 3, 3)),
    WatermarkModel("inside-2x2-c8-s18", 18, 8, Watermark(1, 1)),
    WatermarkModel("centre-2x2-c9-s19", 19, 9, Watermark(3, 3)),
    WatermarkModel("tl-2x2-c4-s20", 20, 4, Watermark(0, 0)),
    WatermarkModel("br-2x2half-c1-s21", 21, 1, Watermark(6, 6, value=0.5)),
    WatermarkModel("tr-3x3-c6-s22", 22, 6, Watermark(0, 5, 3, 3)),
    WatermarkModel("bl-1x2-c9-s23", 23, 9, Watermark(7, 0, 1, 2)),
    WatermarkModel("right-2x2chk-c8-s24", 24, 8, Watermark(3, 6, pattern="checker")),
    WatermarkModel("br-2x2-c0-s25", 25, 0, Watermark(6, 6)),
)


@dataclass(frozen=True)
class WatermarkEffect:
    """What the mark does to a model, measured with the exact mark on the test split: `stamp_rate` the share of
    the other classes' inputs not labelled `target` that are once the mark is stamped on them; `recall_marked`
    and `recall_clean` the recall of `target` on its inputs with and without the mark."""

    stamp_rate: float
    recall_marked: float
    recall_clean: float

    def relies(self, threshold: float = 0.2) -> bool:
        """Whether the model follows the mark: stamping it moves >= threshold of the other inputs, or removing
        it loses >= threshold of the class's recall."""
        return self.stamp_rate >= threshold or self.recall_marked - self.recall_clean >= threshold


def watermark_effect(model: nn.Module, spec: WatermarkModel) -> WatermarkEffect:
    """The ground truth the shortcut check is judged against (it uses no attribution)."""
    test = digits().test
    own = test.y == spec.target
    with torch.no_grad():
        before = model(test.x[~own]).argmax(1)
        stamped = model(spec.mark.stamp(test.x[~own][before != spec.target])).argmax(1)
        marked = model(spec.mark.stamp(test.x[own])).argmax(1)
        clean = model(test.x[own]).argmax(1)
    return WatermarkEffect(
        float((stamped == spec.target).double().mean()),
        float((marked == spec.target).double().mean()),
        float((clean == spec.target).double().mean()),
    )


def inspect(model: nn.Module, data: LabelledData) -> ShortcutResult:
    """The shortcut check as a user runs it: integrated gradients of each sample's own class, then the model's
    labels (generator seeded 0)."""

    def labels(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).argmax(1)

    maps = attribute(model, data.x, data.y, EXPLANATION, lower=0.0, upper=1.0)
    return image_shortcuts(labels, data.x, data.y, maps.values, generator=torch.Generator().manual_seed(0))


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (top, left, height, width) regions share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def with_seed(spec: WatermarkModel, seed: int) -> WatermarkModel:
    """The same watermark recipe trained from another seed."""
    return replace(spec, name=f"{spec.name.rsplit('-s', 1)[0]}-s{seed}", seed=seed)
