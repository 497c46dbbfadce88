"""Label-only membership inference: attacks that need nothing but the predicted label.

A target that answers labels only (a hardened API, `harden(target, label_only=True)`) defeats every
score-based attack in `membership`, but not these:

- `gap_attack`: member iff the target classifies the record correctly (Yeom, Giacomelli, Fredrikson, Jha,
  "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", IEEE CSF 2018); its advantage
  is the gap between training and test accuracy, and it has no operating point below the test error rate.
- `noise_robustness_attack`: a record the model trained on tends to lie further from the decision boundary,
  so its label survives more noise (Choquette-Choo, Tramer, Carlini, Papernot, "Label-Only Membership
  Inference Attacks", ICML 2021, the noise-robustness proxy of their boundary-distance attack): the score is
  the fraction of `n_noisy` Gaussian-perturbed copies of the record, clipped to the input bounds, that the
  target still gives the true label.

Both return a `membership.MembershipResult` and check their inputs before the first query.
"""

from __future__ import annotations

import math

import torch

from aisec.attacks.inference.membership import MembershipResult, _check_members, _check_records, _result
from aisec.core.errors import BadInputError
from aisec.targets.base import Target


def gap_attack(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, members: torch.Tensor | None = None
) -> MembershipResult:
    """Yeom et al.'s gap attack: score 1 when the target labels (x, y) correctly, else 0. len(x) queries."""
    _check_records(target, x, y, "the records under attack")
    _check_members(members, len(x))
    before = target.queries.total
    scores = (_labels(target, x) == y.cpu()).double()
    return _result("gap", scores, members, 0, target.queries.total - before)


def noise_robustness_attack(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    n_noisy: int = 100,
    seed: int = 0,
    query_budget: int | None = None,
    members: torch.Tensor | None = None,
) -> MembershipResult:
    """Choquette-Choo et al.'s noise-robustness attack: the fraction of `n_noisy` copies x + N(0, sigma^2),
    clipped to `target.spec`'s bounds, labelled y by the target (noise drawn from a generator seeded with
    `seed`). `sigma` is in input units: pick it as the paper does, on a shadow model, or about a tenth of the
    input range (0.1 on [0, 1] digits beat 0.02-0.8). Makes len(x) * n_noisy queries; raises BadInputError
    before any when that exceeds `query_budget`."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise BadInputError(f"sigma must be positive and finite, got {sigma}")
    if n_noisy < 1:
        raise BadInputError(f"n_noisy must be at least 1, got {n_noisy}")
    _check_records(target, x, y, "the records under attack")
    _check_members(members, len(x))
    if query_budget is not None and len(x) * n_noisy > query_budget:
        raise BadInputError(
            f"{len(x)} records x {n_noisy} noisy copies = {len(x) * n_noisy} queries, over the budget of "
            f"{query_budget}"
        )
    x, y = x.detach().cpu(), y.cpu()
    lo, hi = target.spec.bounds(x)
    generator = torch.Generator().manual_seed(seed)
    before = target.queries.total
    correct = torch.zeros(len(x), dtype=torch.float64)
    for _ in range(n_noisy):  # one batch of len(x) per copy: memory stays that of the records
        noisy = (x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(lo, hi)
        correct += _labels(target, noisy) == y
    name = f"noise robustness (sigma={sigma:g}, {n_noisy} copies)"
    return _result(name, correct / n_noisy, members, 0, target.queries.total - before)


def _labels(target: Target, x: torch.Tensor) -> torch.Tensor:
    """The target's labels on x, on the CPU. Counts len(x) queries."""
    return target.labels(x.to(target.device)).detach().cpu()
