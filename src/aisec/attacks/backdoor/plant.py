"""Planting a backdoor by poisoning the training set with triggered samples.

Dirty label (BadNets, Gu et al. 2017; blended, Chen et al. 2017; WaNet, Nguyen & Tran 2021): samples of other
classes get the trigger and the target label. Clean label (Turner et al. 2019, "Label-Consistent Backdoor
Attacks"): only samples already of the target class get the trigger, so every label stays correct and a label
audit finds nothing. Turner et al.'s fix for the weakness of plain clean-label poisons is optional here: the
chosen samples are first pushed away from their class by PGD against the attacker's own model, so that the
trigger, not their content, is what explains their label.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from aisec.attacks.backdoor.triggers import Trigger
from aisec.attacks.poisoning.result import PoisonedData, check_classes, check_rate, poison_count
from aisec.core.errors import BadInputError, DataError
from aisec.data.dataset import LabelledData

TYPICAL_SHARE = 0.1
"""select="typical" draws each class's poisons from this share of the class nearest its mean input."""


def plant_backdoor(
    data: LabelledData,
    trigger: Trigger,
    target_class: int,
    rate: float,
    *,
    mode: Literal["dirty", "clean"] = "dirty",
    select: Literal["random", "typical"] = "random",
    adversary: nn.Module | None = None,
    adversary_eps: float = 0.2,
    adversary_steps: int = 20,
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator | None = None,
) -> PoisonedData:
    """Replace round(rate * n) training samples by triggered copies (labelled `target_class`).

    Dirty label draws them from the other classes, clean label from `target_class` itself. `select="random"`
    draws uniformly from those samples; `select="typical"` (dirty label) takes the classes in turn (in a seeded
    order) and draws each class's share from its `TYPICAL_SHARE` samples nearest the class mean: typical poisons,
    whose content argues hard for their own class, leave the trigger as the only explanation of the target
    label, and a spread over the classes teaches it to override each of them. With `adversary` (clean label
    only), the chosen samples are first perturbed by `adversary_steps` of L-inf PGD within `adversary_eps`,
    maximising the adversary's loss on their label (Turner et al. 2019), then triggered.

    Raises before any work: rate outside (0, 1), a trigger that does not fit the samples, fewer than two
    classes, an unknown target class, too few samples to draw from, an unknown mode or selection, typical
    selection with clean label, or an adversary with dirty label or a non-positive budget.
    """
    rate = check_rate(rate)
    trigger.check(tuple(data.x.shape[1:]))
    check_classes(data)
    if mode not in ("dirty", "clean"):
        raise BadInputError(f"backdoor mode must be 'dirty' or 'clean', got {mode!r}")
    if select not in ("random", "typical"):
        raise BadInputError(f"poison selection must be 'random' or 'typical', got {select!r}")
    if select == "typical" and mode != "dirty":
        raise BadInputError(
            "typical poison selection applies to dirty-label poisoning only: typical samples of the target "
            "class are the weakest clean-label poisons, since their content already explains their label"
        )
    if adversary is not None and mode != "clean":
        raise BadInputError("an adversarial perturbation (adversary) applies to clean-label poisoning only")
    if adversary is not None and not (adversary_eps > 0 and adversary_steps >= 1):
        raise BadInputError(
            f"adversary_eps must be > 0 and adversary_steps >= 1, got {adversary_eps!r}, {adversary_steps!r}"
        )
    if not (data.y == target_class).any():
        raise DataError(f"{data.name}: target class {target_class} does not occur in the labels")
    candidates = (data.y != target_class) if mode == "dirty" else (data.y == target_class)
    pool = candidates.nonzero().flatten()
    count = poison_count(
        len(data), rate, len(pool), f"{'outside' if mode == 'dirty' else 'in'} class {target_class}"
    )
    generator = generator or torch.Generator().manual_seed(0)
    if select == "random":
        chosen = pool[torch.randperm(len(pool), generator=generator)[:count]]
    else:
        chosen = _typical(data, pool, count, generator)
    x, y = data.x.clone(), data.y.clone()
    if adversary is not None:
        x[chosen] = _away_from_label(
            adversary, x[chosen], y[chosen], adversary_eps, adversary_steps, lower, upper
        )
    x[chosen] = trigger.apply(x[chosen], lower, upper)
    y[chosen] = target_class
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[chosen] = True
    variant = "+adversarial" if adversary is not None else "+typical" if select == "typical" else ""
    name = f"{data.name} + {trigger.name} backdoor ({mode} label{variant}, {rate:g})"
    attack = f"backdoor/{trigger.name}/{mode}{variant}"
    return PoisonedData(LabelledData(x, y, name), poisoned, attack, rate)


def _typical(data: LabelledData, pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` indices of `pool`, class by class in a seeded order: each class's draws come at random from its
    samples nearest the class mean (the nearest TYPICAL_SHARE, or its share of `count` if that is more), then,
    if a small class runs out, the other classes continue in order of distance."""
    classes = torch.unique(data.y[pool])
    quota = -(-count // len(classes))
    ranked = []
    for c in classes[torch.randperm(len(classes), generator=generator)]:
        members = pool[data.y[pool] == c]
        xs = data.x[members].flatten(1)
        distance = (xs - xs.mean(0)).norm(dim=1)
        by_distance = members[distance.argsort(stable=True)]
        head = max(quota, round(TYPICAL_SHARE * len(members)))
        shuffled = by_distance[:head][torch.randperm(min(head, len(members)), generator=generator)]
        ranked.append(torch.cat((shuffled, by_distance[head:])))
    # round robin: the first draw of every class, then the second, ...; classes with fewer samples run out
    width = max(len(r) for r in ranked)
    table = torch.full((len(ranked), width), -1, dtype=torch.int64)
    for i, r in enumerate(ranked):
        table[i, : len(r)] = r
    order = table.t().flatten()
    return order[order >= 0][:count]


def _away_from_label(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, lower: float, upper: float
) -> torch.Tensor:
    """L-inf PGD (Madry et al. 2018) maximising the cross-entropy of `model` on the true labels `y`, within
    `eps` of `x` and inside [lower, upper]; the last iterate is kept (no early stop), as Turner et al. use it.
    Runs on the device of the model's weights and returns on the device of `x`."""
    x_home, device = x.device, next((p.device for p in model.parameters()), x.device)
    x, y = x.to(device), y.to(device)
    lo, hi = (x - eps).clamp(min=lower), (x + eps).clamp(max=upper)
    alpha = 2.5 * eps / steps
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.maximum(torch.minimum(x_adv.detach() + alpha * grad.sign(), hi), lo)
    return x_adv.to(x_home)
