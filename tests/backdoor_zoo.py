"""The backdoor model zoo: digits CNNs of several widths and training lengths, clean or backdoored by poisoning,
on which the model-inspection detectors (Neural Cleanse, MM-BD) are calibrated (bench/inspection.py) and checked
(the tests run TEST_ZOO, whose seeds STUDY_ZOO does not use).

A `ZooModel` spec fixes everything a model depends on: its seed (initial weights, batch order and, for a
backdoored model, which training samples are poisoned), the width factor of the digits CNN's channels and
hidden units, the epochs of the default recipe (`fit`), and for a backdoored model the trigger, target class and
poison rate (dirty label, `plant_backdoor`). Models train on the digits training set only; the inspecting
defender's clean data is drawn from the test set (`inspection_data`), which no zoo model has seen.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import torch
from torch import nn

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.triggers import BlendTrigger, PatchTrigger, Trigger
from aisec.attacks.poisoning.result import PoisonedData
from aisec.core.atomic import write_atomic
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.data.dataset import LabelledData

RECIPE = "digits-cnn-fit-v1"
"""Part of every cache key: change it when the architecture or the training recipe changes."""

WIDTHS = (0.5, 1.0, 2.0)
EPOCHS = (10, 20, 30)
RATES = (0.03, 0.05, 0.07, 0.1)
CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


@dataclass(frozen=True)
class ZooModel:
    """One zoo model: clean when `trigger` is None, else trained on the digits training set with `rate` of it
    replaced by triggered copies labelled `target`."""

    name: str
    seed: int
    width: float
    epochs: int
    trigger: Trigger | None = None
    target: int | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise BadInputError(f"zoo model {self.name}: width must be > 0, got {self.width!r}")
        if self.epochs < 1:
            raise BadInputError(f"zoo model {self.name}: epochs must be >= 1, got {self.epochs!r}")
        backdoor = (self.trigger, self.target, self.rate)
        if any(v is None for v in backdoor) and any(v is not None for v in backdoor):
            raise BadInputError(
                f"zoo model {self.name}: trigger, target and rate must be all set or all None, got {backdoor!r}"
            )

    @property
    def backdoored(self) -> bool:
        return self.trigger is not None

    @property
    def key(self) -> str:
        """The sha256 of the spec and the recipe version: the name of its cached weights."""
        return hashlib.sha256(f"{RECIPE} {self!r}".encode()).hexdigest()


def scaled_cnn(width: float) -> nn.Module:
    """The demo's digits CNN (`aisec.demo.models.digits_cnn`) with its 16 and 32 channels and 64 hidden units
    scaled by `width` (at least one each); width 1 builds exactly digits_cnn, layer for layer."""
    c1, c2, hidden = (max(1, round(n * width)) for n in (16, 32, 64))
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


@functools.cache
def digits() -> Split:
    return load_builtin("digits", seed=0)


def poisoned_training_set(spec: ZooModel) -> PoisonedData:
    """The digits training set with the spec's backdoor planted (the poisoned samples drawn from spec.seed) and
    which samples carry it; BadInputError for a clean spec."""
    if spec.trigger is None or spec.target is None or spec.rate is None:
        raise BadInputError(f"zoo model {spec.name} is clean: it has no poisoned training set")
    generator = torch.Generator().manual_seed(spec.seed)
    return plant_backdoor(digits().train, spec.trigger, spec.target, spec.rate, generator=generator)


def training_set(spec: ZooModel) -> LabelledData:
    """What the spec's model trains on: the digits training set, poisoned if the spec is backdoored."""
    return poisoned_training_set(spec).data if spec.backdoored else digits().train


def train_zoo_model(spec: ZooModel, cache_dir: Path | None = None) -> nn.Module:
    """The spec's model, in eval mode: `scaled_cnn(width)` built and trained (`fit`, spec.epochs) from spec.seed
    on `training_set(spec)`. With `cache_dir`, its state dict is read from `<cache_dir>/<spec.key>.pt` when
    there, else trained and written there atomically."""
    model = build_model(functools.partial(scaled_cnn, spec.width), spec.seed)
    path = cache_dir / f"{spec.key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = fit(model, training_set(spec), seed=spec.seed, epochs=spec.epochs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        write_atomic(path, buffer.getvalue())
    return model


def inspection_data(samples: int = 300, seed: int = 0) -> tuple[LabelledData, LabelledData]:
    """The inspecting defender's clean data, `samples` digits drawn (seeded) from the test set, and the rest of
    the test set, on which clean accuracy and attack success are measured."""
    test = digits().test
    if not 0 < samples < len(test):
        raise BadInputError(f"inspection data: samples must be in [1, {len(test) - 1}], got {samples}")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    own, rest = order[:samples], order[samples:]
    return (
        LabelledData(test.x[own], test.y[own], "defender's clean digits"),
        LabelledData(test.x[rest], test.y[rest], "evaluation digits"),
    )


def _width_name(width: float) -> str:
    return f"{width:g}"


def _clean(seed: int, width: float, epochs: int) -> ZooModel:
    return ZooModel(f"clean-w{_width_name(width)}-e{epochs}-s{seed}", seed, width, epochs)


def _backdoored(seed: int, width: float, epochs: int, trigger: Trigger, target: int, rate: float) -> ZooModel:
    if isinstance(trigger, PatchTrigger):
        corner = "".join(part[0] for part in trigger.corner.split("_"))
        kind = f"patch-{trigger.pattern}{trigger.size}-{corner}-m{trigger.margin}"
    elif isinstance(trigger, BlendTrigger):
        kind = f"blend-a{trigger.alpha:g}-k{trigger.seed}"
    else:
        raise BadInputError(f"the zoo names patch and blend triggers only, got {trigger!r}")
    name = f"{kind}-t{target}-r{rate:g}-w{_width_name(width)}-e{epochs}-s{seed}"
    return ZooModel(name, seed, width, epochs, trigger, target, rate)


def _study_zoo() -> tuple[ZooModel, ...]:
    """30 clean models (every width x epochs, at least three seeds each) and 40 backdoored ones: every patch
    of {square, checkerboard} x sizes {2, 3} x the four corners x margins {0, 1}, and eight blends (alpha 0.1,
    0.15, 0.2, four noise patterns); targets cycle over the ten classes, rates over RATES, widths and epochs
    over WIDTHS x EPOCHS, each in its own period, so that no trigger shape sits on one width, target or rate."""
    shapes = list(product(WIDTHS, EPOCHS))
    clean = [_clean(1000 + i, *shapes[i % len(shapes)]) for i in range(30)]
    patches = [
        PatchTrigger(size=size, corner=corner, pattern=pattern, margin=margin)
        for margin, corner, size, pattern in product((0, 1), CORNERS, (2, 3), ("square", "checkerboard"))
    ]
    blends = [BlendTrigger(alpha=(0.1, 0.15, 0.2)[i % 3], seed=i % 4) for i in range(8)]
    backdoored = []
    triggers: list[Trigger] = [*patches, *blends]
    for i, trigger in enumerate(triggers):
        seed, (width, epochs) = 2000 + i, shapes[(i * 4) % len(shapes)]
        target, rate = (3 * i) % 10, RATES[(i + i // 4) % len(RATES)]
        backdoored.append(_backdoored(seed, width, epochs, trigger, target, rate))
    return (*clean, *backdoored)


STUDY_ZOO: tuple[ZooModel, ...] = _study_zoo()

TEST_ZOO: tuple[ZooModel, ...] = (
    _clean(9000, 1.0, 30),
    _clean(9001, 0.5, 20),
    _clean(9002, 2.0, 10),
    _backdoored(9003, 1.0, 30, PatchTrigger(3, "bottom_left", "square"), 3, 0.1),
    _backdoored(9004, 0.5, 30, PatchTrigger(3, "top_right", "checkerboard", margin=1), 7, 0.07),
    _backdoored(9005, 1.0, 30, BlendTrigger(alpha=0.2, seed=5), 5, 0.1),
)
"""Three clean and three backdoored models on seeds STUDY_ZOO does not use: the held-out check the tests run."""
