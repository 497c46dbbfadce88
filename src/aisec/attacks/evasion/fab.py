"""Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020), L-inf and L2, untargeted and targeted.

FAB looks for the smallest perturbation that changes the label: each step projects both the iterate and the
original input onto the linearised decision boundary (intersected with the input box), moves to a convex
combination of the two projections biased towards the original, and steps back towards the original once the
label has changed. A final search along the segment to the best adversarial example shortens it further.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.inputs import Batch, check_positive, prepare, take
from aisec.attacks.evasion.losses import is_success, margin
from aisec.attacks.evasion.norms import (
    NORMS,
    Norm,
    batch_norm,
    clip_to_bounds,
    per_sample,
    random_in_ball,
    rows,
)
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.core.errors import DataError
from aisec.targets.base import Access, WhiteBoxTarget

FINAL_SEARCH_STEPS = 3


@dataclass(frozen=True)
class FABConfig:
    """eps: None for a minimal-norm attack (success: any adversarial example, `norm` its size), or a budget
    (success: an adversarial example within eps; samples stop at their first one).
    steps: iterations per run; restarts: extra runs from random points within half of min(eps, the smallest
    perturbation found so far) around the input (without eps they refine the samples already fooled);
    alpha_max: largest weight of the step from the original input; eta: overshoot of the projections;
    beta: backward step towards the original after a success.
    """

    eps: float | None = None
    norm: Norm = "linf"
    steps: int = 100
    restarts: int = 0
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9


def fab(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FABConfig,
    *,
    target_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """FAB ("fab"), or FAB towards `target_labels` ("fab-t": success is reaching the target class, each step
    moving to the linearised boundary between the target and the strongest other class).

    The untargeted attack linearises every class at each step: it takes the Jacobian of all the logits, one
    backward pass per class, which is what makes it expensive on models with many classes (use FAB-T there).
    Queries count every evaluation spent on a sample: a minimal-norm attack goes on after its first success.
    """
    _check(config)
    b = prepare(target, x, y, target_labels, Access.WHITE_BOX, "fab")
    idx = torch.arange(len(b.x), device=b.x.device)
    best, size, queries = _restarts(target, b, idx, b.target_labels, b.target_labels, config, generator)
    success = _success(size, config)
    targeted = target_labels is not None
    return finish(
        "fab-t" if targeted else "fab", b.x, best, success, queries, config.norm, config.eps, targeted
    )


def fab_targeted(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FABConfig,
    *,
    n_target_classes: int = 9,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """FAB-T as in AutoAttack: FAB towards each sample's 2nd, 3rd, ... most likely class (by clean logits) in
    turn, keeping per sample the smallest adversarial example found over all target classes.

    Success is any misclassification (the result is untargeted). A sample stops early only once it has an
    adversarial example within eps (with eps None, every target class is tried). Queries add up over the
    target classes; n_target_classes is capped at num_classes - 1.
    """
    check_positive("fab", n_target_classes=n_target_classes)
    _check(config)
    b = prepare(target, x, y, None, Access.WHITE_BOX, "fab")
    with torch.no_grad():
        clean = target.logits(b.x)
    wrong = is_success(clean.argmax(1), b.y, None)
    ranked = clean.argsort(1, descending=True)
    best = b.x.clone()
    size = torch.where(wrong, 0.0, float("inf"))
    queries = torch.ones(len(b.x), dtype=torch.int64, device=b.x.device)
    for rank in range(1, min(n_target_classes, target.spec.num_classes - 1) + 1):
        todo = (size > _stop_at(config)).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        found, found_size, used = _restarts(target, b, todo, ranked[todo, rank], None, config, generator)
        _merge(best, size, queries, todo, found, found_size, used)
    success = _success(size, config)
    return finish("fab-t", b.x, best, success, queries, config.norm, config.eps, False)


def _check(config: FABConfig) -> None:
    check_positive("fab", eps=config.eps, steps=config.steps, alpha_max=config.alpha_max, eta=config.eta)
    if config.restarts < 0:
        raise DataError(f"fab: restarts must be >= 0, got {config.restarts}")
    if config.norm not in NORMS:
        raise DataError(f"fab: norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
    if not config.alpha_max <= 1 or not 0 < config.beta < 1:
        raise DataError(
            f"fab: need alpha_max <= 1 and 0 < beta < 1, got {config.alpha_max} and {config.beta}"
        )


def _stop_at(config: FABConfig) -> float:
    """Perturbation size at which a sample is done: eps, or 0 for the minimal-norm attack."""
    return 0.0 if config.eps is None else config.eps


def _success(size: torch.Tensor, config: FABConfig) -> torch.Tensor:
    """An adversarial example was found (minimal-norm attack), within eps if eps is set."""
    return size < float("inf") if config.eps is None else size <= config.eps


def _merge(
    best: torch.Tensor,
    size: torch.Tensor,
    queries: torch.Tensor,
    idx: torch.Tensor,
    found: torch.Tensor,
    found_size: torch.Tensor,
    used: torch.Tensor,
) -> None:
    """Keep, for the samples `idx`, the smaller of the known and the newly found adversarial examples."""
    smaller = found_size < size[idx]
    best[idx] = torch.where(rows(smaller, best), found, best[idx])
    size[idx] = torch.minimum(found_size, size[idx])
    queries[idx] += used


def _restarts(
    target: WhiteBoxTarget,
    b: Batch,
    idx: torch.Tensor,
    boundary_targets: torch.Tensor | None,
    goal_targets: torch.Tensor | None,
    config: FABConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 + restarts runs over the samples `idx` not yet done; returns the smallest adversarial example per
    sample, its size (inf where none was found) and the queries spent.

    boundary_targets: the class whose boundary FAB moves to (None: the closest one); goal_targets: the classes
    that count as a success (None: any wrong label).
    """
    found = b.x[idx].clone()
    size = torch.full((len(idx),), float("inf"), device=b.x.device)
    used = torch.zeros(len(idx), dtype=torch.int64, device=b.x.device)
    eps = float("inf") if config.eps is None else config.eps
    for run in range(config.restarts + 1):
        todo = size > _stop_at(config)
        if run > 0 and config.eps is None:
            todo &= size < float("inf")  # a random start is sized by the example found: restarts refine those
        todo = todo.nonzero().squeeze(1)
        if len(todo) == 0:
            break
        sub = _subset(b, idx[todo], take(goal_targets, todo))
        start = sub.x
        if run > 0:
            radius = torch.clamp(size[todo], max=eps) / 2
            start = clip_to_bounds(
                sub.x + random_in_ball(sub.x, radius, config.norm, generator), b.lower, b.upper
            )
        _merge(found, size, used, todo, *_run(target, sub, start, take(boundary_targets, todo), config))
    return found, size, used


def _subset(b: Batch, index: torch.Tensor, goal_targets: torch.Tensor | None) -> Batch:
    """The samples `index` of the batch, with the classes that count as their success (None: any wrong label)."""
    return Batch(b.x[index], b.y[index], goal_targets, b.lower, b.upper)


def _run(
    target: WhiteBoxTarget,
    b: Batch,
    start: torch.Tensor,
    boundary_targets: torch.Tensor | None,
    config: FABConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FAB run (Algorithm 1 of the paper) from `start`, ending with the final search.

    Every point the model is evaluated on is checked, and the smallest adversarial example is kept. Each
    iteration costs two queries: logits with their gradients at the iterate, labels at the next one.
    Samples leave the batch once their adversarial example is within eps (never, for the minimal-norm attack).
    """
    n = len(b.x)
    found = b.x.clone()
    size = torch.full((n,), float("inf"), device=b.x.device)
    used = torch.zeros(n, dtype=torch.int64, device=b.x.device)
    active = torch.arange(n, device=b.x.device)
    state: dict[str, torch.Tensor] = {"x0": b.x, "y": b.y, "x_cur": start}
    if boundary_targets is not None:
        state["boundary_t"] = boundary_targets
    if b.target_labels is not None:
        state["goal_t"] = b.target_labels

    def record(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep x where it is adversarial and smaller than what was found; return where it is adversarial."""
        adv = is_success(logits.argmax(1), state["y"], state.get("goal_t"))
        x_size = torch.where(adv, batch_norm(x - state["x0"], config.norm), float("inf"))
        smaller = x_size < size[active]
        found[active[smaller]] = x[smaller]
        size[active[smaller]] = x_size[smaller]
        used[active] += 1
        return adv

    for _ in range(config.steps):
        x_in = state["x_cur"].detach().requires_grad_(True)
        logits, f, g = _boundary(
            target, x_in, state["y"], state.get("boundary_t"), "goal_t" in state, config.norm
        )
        with torch.no_grad():
            record(state["x_cur"], logits)
            x_next = _step(state["x_cur"], state["x0"], f, g, b, config)
            adv = record(x_next, target.logits(x_next))
            back = state["x0"] + config.beta * (x_next - state["x0"])
            state["x_cur"] = torch.where(rows(adv, x_next), back, x_next)
        keep = size[active] > _stop_at(config)
        if not bool(keep.all()):
            if not bool(keep.any()):
                break
            active = active[keep]
            state = {k: v[keep] for k, v in state.items()}
    refine = ((size > _stop_at(config)) & (size < float("inf"))).nonzero().squeeze(1)
    if len(refine):
        sub = _subset(b, refine, take(b.target_labels, refine))
        found[refine], size[refine], extra = _final_search(target, sub, found[refine], config.norm)
        used[refine] += extra
    return found, size, used


def _boundary(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    boundary_targets: torch.Tensor | None,
    reach_target: bool,
    norm: Norm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at x and the linearised boundary to move to, f(x) = z_s - z_r, with its gradient g.

    Untargeted: r = y and s the class whose linearised boundary is closest in the norm. Towards a target class
    s: r = y when any wrong label is a success (FAB-T), or the strongest other class when only reaching the
    target is (`reach_target`), since that is the class the target has to overtake.
    """
    logits = target.logits(x)
    every = torch.arange(len(x), device=x.device)
    if boundary_targets is not None:
        rival = y
        if reach_target:
            rival = logits.detach().scatter(1, boundary_targets[:, None], float("-inf")).argmax(1)
        diff = logits[every, boundary_targets] - logits[every, rival]
        g = input_gradient(diff.sum(), x)
        return logits.detach(), diff.detach(), g
    k = logits.shape[1]
    jac = torch.stack(
        [input_gradient(logits[:, c].sum(), x, retain_graph=c < k - 1) for c in range(k)], 1
    ).flatten(2)
    logits = logits.detach()
    df = logits - logits[every, y][:, None]
    dg = jac - jac[every, y][:, None]
    dual = dg.abs().sum(2) if norm == "linf" else dg.norm(dim=2)
    distance = (df.abs() / (dual + 1e-12)).scatter(1, y[:, None], float("inf"))
    s = distance.argmin(1)
    return logits, df[every, s], dg[every, s].view_as(x)


def _step(
    x: torch.Tensor, x0: torch.Tensor, f: torch.Tensor, g: torch.Tensor, b: Batch, config: FABConfig
) -> torch.Tensor:
    """x_next = clip((1 - a) * (x + eta * d) + a * (x0 + eta * d0)), with d, d0 the projections of x and x0 onto
    the linearised boundary {z : f + <g, z - x> = 0} within the box, a = min(|d| / (|d| + |d0|), alpha_max)."""
    points = torch.cat([x, x0])
    offset = (g * (x - x0)).flatten(1).sum(1)
    delta = project_on_hyperplane(
        points, torch.cat([g, g]), torch.cat([-f, offset - f]), b.lower, b.upper, config.norm
    )
    d, d0 = delta.view_as(points).chunk(2)
    size, size0 = batch_norm(d, config.norm), batch_norm(d0, config.norm)
    alpha = (size / (size + size0).clamp_min(1e-12)).clamp(max=config.alpha_max)
    a = per_sample(alpha, x)
    return clip_to_bounds((1 - a) * (x + config.eta * d) + a * (x0 + config.eta * d0), b.lower, b.upper)


def project_on_hyperplane(
    p: torch.Tensor, g: torch.Tensor, r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: Norm
) -> torch.Tensor:
    """The smallest delta in the norm with <g, delta> = r and lower <= p + delta <= upper, per sample, flattened
    to (n, d) (FAB, Section 3.1: the box-constrained projection onto a hyperplane).

    After flipping signs so that r >= 0, the solution is delta_i = sign(g_i) * min(t * m_i, room_i), with
    m_i = 1 for L-inf and |g_i| for L2 (the KKT conditions), room_i the distance to the bound in the direction
    of g_i, and t >= 0 the smallest value reaching <g, delta> = r. <g, delta(t)> is piecewise linear and
    non-decreasing in t with a knot where each coordinate saturates, so t is read off the sorted knots in one
    pass. When no point of the box reaches the hyperplane, delta goes as far towards it as the box allows.
    """
    sign = torch.where(r < 0, -1.0, 1.0)
    g = g * per_sample(sign, g)
    r = r * sign
    room = torch.where(g > 0, upper - p, p - lower).flatten(1).clamp_min(0)
    g = g.flatten(1)
    a = g.abs()
    m = torch.ones_like(a) if norm == "linf" else a
    slope = a * m
    knot = torch.where(slope > 0, room / m.clamp_min(1e-30), 0.0)
    knots, order = knot.sort(1)
    slopes = slope.gather(1, order)
    # <g, delta(t)> at each knot: the saturated coordinates' full share plus t times the others' slopes.
    saturated = (slopes * knots).cumsum(1)
    free = slope.sum(1, keepdim=True) - slopes.cumsum(1)
    passed = (saturated + knots * free < r[:, None]).sum(1, keepdim=True)
    zero = torch.zeros_like(r[:, None])
    saturated_before = torch.cat([zero, saturated], 1).gather(1, passed)
    free_before = torch.cat([slope.sum(1, keepdim=True), free], 1).gather(1, passed)
    t = (r[:, None] - saturated_before) / free_before.clamp_min(1e-30)
    t = torch.where(passed == knots.shape[1], knots[:, -1:], t)
    return g.sign() * torch.minimum(t * m, room)


def _final_search(
    target: WhiteBoxTarget, b: Batch, adv: torch.Tensor, norm: Norm
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shorten adversarial examples along the segment to the original (the paper's final search): a few steps
    of regula falsi on the margin, keeping the inner end not adversarial and the outer end adversarial."""
    with torch.no_grad():
        inner, outer = b.x, adv
        m_in, m_out = margin(
            target.logits(torch.cat([inner, outer])), b.y.repeat(2), _twice(b.target_labels)
        ).chunk(2)
        for _ in range(FINAL_SEARCH_STEPS):
            t = (-m_in / (m_out - m_in).clamp_min(1e-12)).clamp(0, 1)
            mid = inner + per_sample(t, inner) * (outer - inner)
            logits = target.logits(mid)
            adv_mid = is_success(logits.argmax(1), b.y, b.target_labels)
            m_mid = margin(logits, b.y, b.target_labels)
            inner = torch.where(rows(adv_mid, mid), inner, mid)
            m_in = torch.where(adv_mid, m_in, m_mid)
            outer = torch.where(rows(adv_mid, mid), mid, outer)
            m_out = torch.where(adv_mid, m_mid, m_out)
    used = torch.full((len(adv),), 2 + FINAL_SEARCH_STEPS, dtype=torch.int64, device=adv.device)
    return outer, batch_norm(outer - b.x, norm), used


def _twice(labels: torch.Tensor | None) -> torch.Tensor | None:
    return None if labels is None else labels.repeat(2)
