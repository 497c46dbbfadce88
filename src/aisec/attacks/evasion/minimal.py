"""Per-sample minimal perturbation: the smallest budget at which the model is fooled.

This is the red team's "how sensitive is the model" figure. With a white box it is found by bisection on
a per-sample PGD budget between a budget known to fail and one known to succeed (the cascade's results
give both bounds cheaply); with scores or labels only, by HopSkipJump's minimal-norm search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.inputs import prepare
from aisec.attacks.evasion.norms import Norm, batch_norm, rows
from aisec.attacks.evasion.pgd import PGDConfig, pgd_per_sample
from aisec.targets.base import Access, Target, WhiteBoxTarget


@dataclass(frozen=True)
class MinimalPerturbation:
    """norm[i]: size of the smallest adversarial perturbation found for sample i (0 if misclassified
    without attack, inf if none was found up to the whole input range); queries[i]: model queries spent."""

    norm: torch.Tensor
    x_adv: torch.Tensor
    queries: torch.Tensor
    norm_kind: Norm
    max_budget: float


def full_range_budget(target: Target, norm: Norm) -> float:
    """A budget that lets the attacker reach any valid input: the input box's L-inf width or L2 diagonal."""
    lo, hi = target.spec.bounds(torch.zeros(1, *target.spec.shape))
    width = (hi - lo).expand(target.spec.shape)
    return float(width.max()) if norm == "linf" else float(width.norm())


def minimal_perturbation(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm,
    *,
    known_adv: torch.Tensor | None = None,
    known_fooled: torch.Tensor | None = None,
    robust_at: torch.Tensor | None = None,
    bisections: int = 8,
    steps: int = 20,
    query_budget: int = 5000,
    generator: torch.Generator | None = None,
) -> MinimalPerturbation:
    """Smallest fooling budget per sample.

    known_adv[i], where known_fooled[i]: an adversarial example already found (e.g. by the cascade); its
    size is the starting upper bound, which the search only ever lowers. robust_at[i]: a budget known not to
    fool (the lower bound). Points with nothing known are first attacked with the whole input range.
    """
    access = Access.WHITE_BOX if isinstance(target, WhiteBoxTarget) else Access.LABELS
    b = prepare(target, x, y, None, access, "minimal perturbation")
    max_budget = full_range_budget(target, norm)
    if not isinstance(target, WhiteBoxTarget):  # access is LABELS
        from aisec.attacks.evasion.hopskipjump import HSJConfig, hopskipjump

        r = hopskipjump(target, b.x, b.y, HSJConfig(norm=norm, max_queries=query_budget), generator=generator)
        found = torch.where(r.success, r.norm, torch.full_like(r.norm, float("inf")))
        return MinimalPerturbation(found, r.x_adv, r.queries, norm, max_budget)

    n, device = len(b.x), b.x.device
    config = PGDConfig(eps=max_budget, steps=steps, norm=norm, restarts=1)
    lo = torch.zeros(n, device=device) if robust_at is None else robust_at.to(device).clone()
    ok = (
        torch.zeros(n, dtype=torch.bool, device=device)
        if known_fooled is None
        else known_fooled.to(device).clone()
    )
    best = b.x.clone() if known_adv is None else torch.where(rows(ok, b.x), known_adv.to(device), b.x)
    found = torch.where(ok, batch_norm(best - b.x, norm), torch.full((n,), float("inf"), device=device))
    queries = torch.ones(n, dtype=torch.int64, device=device)
    with torch.no_grad():
        clean_wrong = target.labels(b.x) != b.y

    todo = (~ok & ~clean_wrong).nonzero().squeeze(1)
    if len(todo):
        sub = prepare(target, b.x[todo], b.y[todo], None, Access.WHITE_BOX, "minimal perturbation")
        x_far, ok_far, used = pgd_per_sample(
            target, sub, torch.full((len(todo),), max_budget, device=device), config, generator
        )
        queries[todo] += used
        best[todo] = torch.where(rows(ok_far, x_far), x_far, best[todo])
        ok[todo] = ok_far
        found[todo] = torch.where(ok_far, batch_norm(x_far - sub.x, norm), found[todo])
    hi = torch.where(ok, found, torch.full_like(found, max_budget))
    for _ in range(bisections):
        todo = (ok & (hi - lo > 1e-4 * max_budget)).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        mid = (lo[todo] + hi[todo]) / 2
        sub = prepare(target, b.x[todo], b.y[todo], None, Access.WHITE_BOX, "minimal perturbation")
        x_mid, ok_mid, used = pgd_per_sample(target, sub, mid, config, generator)
        queries[todo] += used
        size = batch_norm(x_mid - sub.x, norm)
        won, lost = todo[ok_mid], todo[~ok_mid]
        best[won] = x_mid[ok_mid]
        hi[won] = torch.minimum(mid[ok_mid], size[ok_mid])
        found[won] = hi[won]
        lo[lost] = mid[~ok_mid]
    found = torch.where(clean_wrong, torch.zeros_like(found), found)
    best = torch.where(rows(clean_wrong, b.x), b.x, best)
    return MinimalPerturbation(found, best, queries, norm, max_budget)
