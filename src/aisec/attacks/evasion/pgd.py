"""Projected Gradient Descent (Madry et al., ICLR 2018), L-inf and L2, with random start and restarts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.inputs import Batch, check_positive, prepare
from aisec.attacks.evasion.losses import LOSSES, is_success
from aisec.attacks.evasion.norms import (
    Norm,
    clip_to_bounds,
    normalize,
    per_sample,
    project,
    random_in_ball,
    rows,
)
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.targets.base import Access, WhiteBoxTarget


@dataclass(frozen=True)
class PGDConfig:
    """eps: budget; step_size defaults to 2.5 * eps / steps; restarts: extra runs on points not yet fooled,
    always from a random start; random_start: whether the first run starts at a random point of the ball
    (True) or at the clean input (False).

    early_stop drops a sample from the batch at its first success: the robust-accuracy figure is unchanged
    (success at any iterate counts) and fooled samples cost nothing more.
    """

    eps: float
    steps: int = 40
    step_size: float | None = None
    norm: Norm = "linf"
    random_start: bool = True
    restarts: int = 0
    loss: Literal["ce", "dlr"] = "ce"
    early_stop: bool = True


def pgd(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PGDConfig,
    *,
    target_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """Iterate x <- Proj_{B(x0, eps) ∩ bounds}(x + alpha * normalize(grad loss)); keep the first fooling iterate."""
    check_positive("pgd", eps=config.eps, steps=config.steps, step_size=config.step_size)
    if config.restarts < 0:
        check_positive("pgd", restarts=config.restarts)
    b = prepare(target, x, y, target_labels, Access.WHITE_BOX, "pgd")
    eps = torch.full((len(b.x),), float(config.eps), device=b.x.device)
    best, success, queries = pgd_per_sample(target, b, eps, config, generator)
    return finish("pgd", b.x, best, success, queries, config.norm, config.eps, b.target_labels is not None)


def pgd_per_sample(
    target: WhiteBoxTarget,
    b: Batch,
    eps: torch.Tensor,
    config: PGDConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD with one budget per sample (used by the minimal-perturbation search); returns best, success, queries."""
    best = b.x.clone()
    success = torch.zeros(len(b.x), dtype=torch.bool, device=b.x.device)
    queries = torch.zeros(len(b.x), dtype=torch.int64, device=b.x.device)
    for run in range(config.restarts + 1):
        todo = (~success).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        x_adv, ok, used = _run(
            target, b, todo, eps[todo], config, generator, random_start=config.random_start or run > 0
        )
        best[todo] = torch.where(rows(ok, b.x), x_adv, best[todo])
        success[todo] = ok
        queries[todo] += used
    return best, success, queries


def _run(
    target: WhiteBoxTarget,
    b: Batch,
    idx: torch.Tensor,
    eps: torch.Tensor,
    config: PGDConfig,
    generator: torch.Generator | None,
    *,
    random_start: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One PGD run over the samples `idx`; the hot loop stays in torch with no host round trip per step.

    For L-inf the feasible set (the eps-box around x0 intersected with the input bounds) is computed once,
    so each step's projection is a single clamp.
    """
    loss_fn = LOSSES[config.loss]
    x0 = b.x[idx]
    n = len(idx)
    found = x0.clone()
    ok = torch.zeros(n, dtype=torch.bool, device=x0.device)
    used = torch.full((n,), config.steps + 1, dtype=torch.int64, device=x0.device)
    step_size = (
        eps * 2.5 / config.steps if config.step_size is None else torch.full_like(eps, config.step_size)
    )
    lo = b.lower.expand_as(x0) if b.lower.dim() else b.lower
    hi = b.upper.expand_as(x0) if b.upper.dim() else b.upper
    e = per_sample(eps, x0)
    # Per-sample state of the samples still attacked; with early_stop it shrinks as samples are fooled.
    active = torch.arange(n, device=x0.device)
    state = {"y": b.y[idx], "alpha": per_sample(step_size, x0)}
    if config.norm == "linf":
        state |= {"box_lo": torch.maximum(x0 - e, lo), "box_hi": torch.minimum(x0 + e, hi)}
    else:
        state |= {"x0": x0, "eps": e, "lo": lo.expand_as(x0), "hi": hi.expand_as(x0)}
    if b.target_labels is not None:
        state["t"] = b.target_labels[idx]
    delta = random_in_ball(x0, eps, config.norm, generator) if random_start else torch.zeros_like(x0)
    x_cur = clip_to_bounds(x0 + delta, lo, hi)
    for step in range(config.steps + 1):
        x_cur.requires_grad_(True)
        logits = target.logits(x_cur)
        fooled = is_success(logits.detach().argmax(1), state["y"], state.get("t"))
        newly = fooled & ~ok[active]
        if bool(newly.any()):
            first = active[newly]
            found[first] = x_cur.detach()[newly]
            ok[first] = True
            used[first] = step + 1
        if step == config.steps:
            break
        grad = input_gradient(loss_fn(logits, state["y"], state.get("t")).sum(), x_cur)
        with torch.no_grad():
            x_next = x_cur + state["alpha"] * normalize(grad, config.norm)
            if config.norm == "linf":
                x_cur = torch.clamp(x_next, state["box_lo"], state["box_hi"])
            else:
                delta = project(x_next - state["x0"], state["eps"], "l2")
                x_cur = clip_to_bounds(state["x0"] + delta, state["lo"], state["hi"])
        if config.early_stop and bool(fooled.any()):
            keep = ~fooled
            if not bool(keep.any()):
                break
            active, x_cur = active[keep], x_cur[keep]
            state = {k: v[keep] for k, v in state.items()}
    return found, ok, used
