"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), L-inf and L2, on the cross-entropy or DLR loss, and APGD-T.

APGD is PGD with momentum and a step size that needs no tuning: it starts at 2 * eps and is halved at
checkpoints where the loss stopped improving, the iterate then restarting from the best point found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.inputs import Batch, check_positive, prepare, take
from aisec.attacks.evasion.losses import LOSSES, dlr, is_success
from aisec.attacks.evasion.norms import (
    NORMS,
    Norm,
    clip_to_bounds,
    normalize,
    per_sample,
    project,
    random_in_ball,
    rows,
)
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.core.errors import DataError
from aisec.targets.base import Access, WhiteBoxTarget

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class APGDConfig:
    """eps: budget; steps: iterations per run; restarts: extra runs, from new random starts, on points not yet
    fooled (0, one run, is AutoAttack's standard setting); loss: the untargeted loss (a targeted run always ascends the targeted DLR loss, as APGD-T does);
    rho: fraction of steps since the last checkpoint that must have raised the loss to keep the step size;
    momentum: weight of the new step against the previous one (alpha in the paper).

    early_stop drops a sample from the batch at its first success: the robust-accuracy figure is unchanged
    (success at any iterate counts) and fooled samples cost nothing more.
    """

    eps: float
    norm: Norm = "linf"
    steps: int = 100
    restarts: int = 0
    loss: Literal["ce", "dlr"] = "ce"
    rho: float = 0.75
    momentum: float = 0.75
    early_stop: bool = True


def apgd(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    config: APGDConfig,
    *,
    target_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """APGD-CE / APGD-DLR, or APGD with the targeted DLR loss towards `target_labels` ("apgd-t", success:
    reaching the target class).

    Samples the model already gets wrong (or already puts in the target class) succeed with no perturbation.
    """
    targeted = target_labels is not None
    _check(config, target, targeted=targeted)
    b = prepare(target, x, y, target_labels, Access.WHITE_BOX, "apgd")
    name = "apgd-t" if targeted else f"apgd-{config.loss}"
    loss_fn = dlr if targeted else LOSSES[config.loss]
    with torch.no_grad():
        success = is_success(target.logits(b.x).argmax(1), b.y, b.target_labels)
    best = b.x.clone()
    queries = torch.ones(len(b.x), dtype=torch.int64, device=b.x.device)
    todo = (~success).nonzero().squeeze(1)
    t = take(b.target_labels, todo)
    found, ok, used = _restarts(target, b, todo, loss_fn, t, t, config, generator)
    _merge(best, success, queries, todo, found, ok, used)
    return finish(name, b.x, best, success, queries, config.norm, config.eps, targeted)


def apgd_targeted(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    config: APGDConfig,
    *,
    n_target_classes: int = 9,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """APGD-T as in AutoAttack: the targeted DLR loss towards each sample's 2nd, 3rd, ... most likely class
    (by clean logits), one class after the other, on the samples not yet fooled.

    Success is any misclassification (the result is untargeted: robust accuracy is the figure it serves);
    queries add up over the target classes. n_target_classes is capped at num_classes - 1.
    """
    check_positive("apgd", n_target_classes=n_target_classes)
    _check(config, target, targeted=True)
    b = prepare(target, x, y, None, Access.WHITE_BOX, "apgd")
    with torch.no_grad():
        clean = target.logits(b.x)
    success = is_success(clean.argmax(1), b.y, None)
    ranked = clean.argsort(1, descending=True)
    best = b.x.clone()
    queries = torch.ones(len(b.x), dtype=torch.int64, device=b.x.device)
    for rank in range(1, min(n_target_classes, target.spec.num_classes - 1) + 1):
        todo = (~success).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        found, ok, used = _restarts(target, b, todo, dlr, ranked[todo, rank], None, config, generator)
        _merge(best, success, queries, todo, found, ok, used)
    return finish("apgd-t", b.x, best, success, queries, config.norm, config.eps, False)


def checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ceil(p_j * steps) where the step size is reviewed: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (computed in hundredths, exactly)."""
    p_prev, p = 0, 22
    points = []
    while p <= 100:
        points.append(-(-p * steps // 100))
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return sorted({w for w in points if 0 < w < steps})


def _check(config: APGDConfig, target: WhiteBoxTarget, *, targeted: bool) -> None:
    check_positive("apgd", eps=config.eps, steps=config.steps)
    if config.restarts < 0:
        raise DataError(f"apgd: restarts must be >= 0, got {config.restarts}")
    if config.norm not in NORMS:
        raise DataError(f"apgd: norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
    if config.loss not in LOSSES:
        raise DataError(f"apgd: loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
    if not 0 < config.rho < 1 or not 0 < config.momentum <= 1:
        raise DataError(
            f"apgd: need 0 < rho < 1 and 0 < momentum <= 1, got {config.rho} and {config.momentum}"
        )
    needed = 4 if targeted else 3 if config.loss == "dlr" else 2
    if target.spec.num_classes < needed:
        raise DataError(
            f"apgd: this loss needs at least {needed} classes, the model has {target.spec.num_classes}"
        )


def _merge(
    best: torch.Tensor,
    success: torch.Tensor,
    queries: torch.Tensor,
    idx: torch.Tensor,
    found: torch.Tensor,
    ok: torch.Tensor,
    used: torch.Tensor,
) -> None:
    """Write the outcome of a run over the samples `idx` into the batch-wide tensors."""
    best[idx] = torch.where(rows(ok, best), found, best[idx])
    success[idx] |= ok
    queries[idx] += used


def _restarts(
    target: WhiteBoxTarget,
    b: Batch,
    idx: torch.Tensor,
    loss_fn: Loss,
    loss_targets: torch.Tensor | None,
    goal_targets: torch.Tensor | None,
    config: APGDConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 + restarts runs over the samples `idx`, each on those not yet fooled; returns found, ok, used.

    loss_targets: the classes the loss pulls towards (None: untargeted loss); goal_targets: the classes that
    count as a success (None: any wrong label).
    """
    found = b.x[idx].clone()
    ok = torch.zeros(len(idx), dtype=torch.bool, device=b.x.device)
    used = torch.zeros(len(idx), dtype=torch.int64, device=b.x.device)
    for _ in range(config.restarts + 1):
        todo = (~ok).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        sub = Batch(b.x[idx[todo]], b.y[idx[todo]], take(goal_targets, todo), b.lower, b.upper)
        _merge(
            found, ok, used, todo, *_run(target, sub, loss_fn, take(loss_targets, todo), config, generator)
        )
    return found, ok, used


def _run(
    target: WhiteBoxTarget,
    b: Batch,
    loss_fn: Loss,
    loss_targets: torch.Tensor | None,
    config: APGDConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run (Algorithm 1 of the paper) from a random start; `b.target_labels` is the success goal.

    Returns the first fooling iterate, whether one was found, and the queries spent up to it. All state is
    per sample and the hot loop stays in torch; with early_stop, fooled samples leave the batch.
    """
    n, eps = len(b.x), config.eps
    found = b.x.clone()
    ok = torch.zeros(n, dtype=torch.bool, device=b.x.device)
    used = torch.full((n,), config.steps + 1, dtype=torch.int64, device=b.x.device)
    reviews = checkpoints(config.steps)
    x_cur = clip_to_bounds(b.x + random_in_ball(b.x, eps, config.norm, generator), b.lower, b.upper)
    # Per-sample state of the samples still attacked; with early_stop it shrinks as samples are fooled.
    active = torch.arange(n, device=b.x.device)
    state: dict[str, torch.Tensor] = {"x0": b.x, "y": b.y, "x_cur": x_cur, "x_prev": x_cur}
    if loss_targets is not None:
        state["loss_t"] = loss_targets
    if b.target_labels is not None:
        state["goal_t"] = b.target_labels
    last_review = 0
    for step in range(config.steps + 1):
        x_in = state["x_cur"].detach().requires_grad_(True)
        logits = target.logits(x_in)
        loss = loss_fn(logits, state["y"], state.get("loss_t"))
        fooled = is_success(logits.detach().argmax(1), state["y"], state.get("goal_t"))
        newly = fooled & ~ok[active]
        found[active[newly]] = x_in.detach()[newly]
        ok[active[newly]] = True
        used[active[newly]] = step + 1
        if step == config.steps:
            break
        grad = input_gradient(loss.sum(), x_in)
        with torch.no_grad():
            loss = loss.detach()
            if step == 0:
                _start(state, loss, grad, eps)
            else:
                _track(state, loss, grad)
            if step in reviews:
                grad = _review(state, grad, step - last_review, config.rho)
                last_review = step
            _step(state, grad, b, eps, config, momentum=1.0 if step == 0 else config.momentum)
        if config.early_stop and bool(fooled.any()):
            keep = ~fooled
            if not bool(keep.any()):
                break
            active = active[keep]
            state = {k: v[keep] for k, v in state.items()}
    return found, ok, used


def _start(state: dict[str, torch.Tensor], loss: torch.Tensor, grad: torch.Tensor, eps: float) -> None:
    """The run's bookkeeping after its first step: best point and loss so far, step size 2 eps."""
    state.update(
        x_best=state["x_cur"],
        grad_best=grad,
        loss_best=loss,
        loss_prev=loss,
        best_at_review=loss,
        step_size=torch.full_like(loss, 2 * eps),
        rises=torch.zeros_like(loss),
        halved=torch.zeros_like(loss, dtype=torch.bool),
    )


def _track(state: dict[str, torch.Tensor], loss: torch.Tensor, grad: torch.Tensor) -> None:
    """Count the steps that raised the loss and keep the best point with its gradient."""
    state["rises"] = state["rises"] + (loss > state["loss_prev"])
    state["loss_prev"] = loss
    better = loss > state["loss_best"]
    mask = rows(better, grad)
    state["x_best"] = torch.where(mask, state["x_cur"], state["x_best"])
    state["grad_best"] = torch.where(mask, grad, state["grad_best"])
    state["loss_best"] = torch.where(better, loss, state["loss_best"])


def _review(state: dict[str, torch.Tensor], grad: torch.Tensor, since: int, rho: float) -> torch.Tensor:
    """At a checkpoint, halve the step size and go back to the best point where the loss rose in fewer than
    rho of the steps since the last checkpoint, or where the step size was kept at the last checkpoint and the
    best loss has not improved since. Returns the gradient to step along."""
    stalled = state["rises"] < rho * since
    unchanged = ~state["halved"] & (state["loss_best"] <= state["best_at_review"])
    halve = stalled | unchanged
    mask = rows(halve, grad)
    state["step_size"] = torch.where(halve, state["step_size"] / 2, state["step_size"])
    state["x_cur"] = torch.where(mask, state["x_best"], state["x_cur"])
    state["loss_prev"] = torch.where(halve, state["loss_best"], state["loss_prev"])
    state["halved"] = halve
    state["best_at_review"] = state["loss_best"]
    state["rises"] = torch.zeros_like(state["rises"])
    return torch.where(mask, state["grad_best"], grad)


def _step(
    state: dict[str, torch.Tensor],
    grad: torch.Tensor,
    b: Batch,
    eps: float,
    config: APGDConfig,
    *,
    momentum: float,
) -> None:
    """x_next = P(x + a * (z - x) + (1 - a) * (x - x_prev)) with z = P(x + step_size * normalize(grad)),
    P the projection onto the eps-ball around x0 intersected with the input bounds."""

    def proj(z: torch.Tensor) -> torch.Tensor:
        return clip_to_bounds(state["x0"] + project(z - state["x0"], eps, config.norm), b.lower, b.upper)

    x, x_prev = state["x_cur"], state["x_prev"]
    z = proj(x + per_sample(state["step_size"], x) * normalize(grad, config.norm))
    state["x_prev"] = x
    state["x_cur"] = proj(x + momentum * (z - x) + (1 - momentum) * (x - x_prev))
