"""Label flipping: the attacker changes labels, never inputs.

Random flips (Biggio, Nelson & Laskov 2011, "Support Vector Machines Under Adversarial Label Noise") give a
share of the training set a wrong label drawn uniformly among the other classes; they cost overall accuracy.
Targeted flips relabel samples of one source class as a chosen target class, so the victim learns to call the
source class by the target's name while accuracy on the other classes barely moves.
"""

from __future__ import annotations

import torch

from aisec.attacks.poisoning.result import PoisonedData, check_classes, check_rate, poison_count
from aisec.core.errors import BadInputError, DataError
from aisec.data.dataset import LabelledData


def random_label_flip(
    data: LabelledData,
    rate: float,
    *,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> PoisonedData:
    """Give round(rate * n) samples, drawn uniformly, a label drawn uniformly among the other classes.

    `num_classes` defaults to max(label) + 1. Raises before any work: rate outside (0, 1), fewer than two
    classes, or labels outside [0, num_classes).
    """
    rate = check_rate(rate)
    check_classes(data)
    hi = int(data.y.max())
    classes = hi + 1 if num_classes is None else num_classes
    if int(data.y.min()) < 0 or hi >= classes:
        raise DataError(
            f"{data.name}: labels range over [{int(data.y.min())}, {hi}] but num_classes is {classes}"
        )
    count = poison_count(len(data), rate, len(data), "in the data")
    generator = generator or torch.Generator().manual_seed(0)
    chosen = torch.randperm(len(data), generator=generator)[:count]
    # an offset in [1, classes - 1] added modulo classes is uniform over the other classes
    offset = torch.randint(1, classes, (count,), generator=generator)
    y = data.y.clone()
    y[chosen] = (y[chosen] + offset) % classes
    return _result(data, y, chosen, "label_flip/random", rate, f"{rate:g} random label flips")


def targeted_label_flip(
    data: LabelledData,
    rate: float,
    *,
    source: int,
    target: int,
    generator: torch.Generator | None = None,
) -> PoisonedData:
    """Relabel round(rate * n) samples of class `source` as `target` (rate is a fraction of the whole set).

    Raises before any work: rate outside (0, 1), fewer than two classes, source == target, either class
    absent from the labels, or fewer source samples than the rate asks for.
    """
    rate = check_rate(rate)
    check_classes(data)
    if source == target:
        raise BadInputError(f"targeted label flip: source and target are the same class ({source})")
    for role, cls in (("source", source), ("target", target)):
        if not (data.y == cls).any():
            raise DataError(f"{data.name}: {role} class {cls} does not occur in the labels")
    pool = (data.y == source).nonzero().flatten()
    count = poison_count(len(data), rate, len(pool), f"of source class {source}")
    generator = generator or torch.Generator().manual_seed(0)
    chosen = pool[torch.randperm(len(pool), generator=generator)[:count]]
    y = data.y.clone()
    y[chosen] = target
    return _result(
        data, y, chosen, f"label_flip/{source}->{target}", rate, f"{rate:g} flips {source}->{target}"
    )


def _result(
    data: LabelledData, y: torch.Tensor, chosen: torch.Tensor, attack: str, rate: float, what: str
) -> PoisonedData:
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[chosen] = True
    return PoisonedData(LabelledData(data.x, y, f"{data.name} + {what}"), poisoned, attack, rate)
