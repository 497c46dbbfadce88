"""HopSkipJumpAttack (Chen, Jordan & Wainwright, IEEE S&P 2020): decision-based, L2 and L-inf.

Only the predicted label is used. From an adversarial starting point the attack walks along the decision
boundary: a binary search toward the original input lands on the boundary, the signs of Monte-Carlo probes
around that point estimate the boundary's normal, and a geometrically shrinking step along it leaves the
boundary on the adversarial side again. All samples advance in the same loop; each one has its own query
count, stops at its budget, and keeps the closest adversarial point it has verified with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aisec.attacks.evasion.inputs import Batch, check_positive, prepare
from aisec.attacks.evasion.losses import is_success
from aisec.attacks.evasion.norms import NORMS, Norm, batch_norm, clip_to_bounds, normalize, per_sample
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.core.errors import DataError
from aisec.targets.base import Access, Target

# Probe batches for the gradient estimate hold at most this many input values (bounds memory, not results).
_PROBE_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class HSJConfig:
    """norm: the distance minimised. eps: None for a minimal-norm attack (success: an adversarial point was
    found, `norm` its size); else success needs an adversarial point within eps, and a sample stops there.
    max_queries: label queries per sample; max_iterations: gradient-estimate-and-step rounds; init_evals,
    max_evals: the estimate at round t uses min(init_evals * sqrt(t), max_evals) probes; gamma: sets the
    binary search threshold theta = gamma / d^(3/2) (L2) or gamma / d^2 (L-inf); init_attempts: uniform-noise
    draws per sample to find an adversarial (targeted: target-class) starting point.
    """

    norm: Norm = "l2"
    eps: float | None = None
    max_queries: int = 10_000
    max_iterations: int = 64
    init_evals: int = 100
    max_evals: int = 10_000
    gamma: float = 1.0
    init_attempts: int = 100


def hopskipjump(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    config: HSJConfig,
    *,
    target_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    starts: torch.Tensor | None = None,
) -> EvasionResult:
    """Algorithm 2 of the paper, batched over samples; needs labels only.

    starts: optional starting points shaped like x, e.g. inputs of the target class as in the paper's
    targeted attack; each costs one query, and where it is not adversarial uniform noise is tried instead.
    A sample the model already gets wrong is returned as is (norm 0, one query). A sample stops once it has
    an adversarial point within eps (with eps), at max_iterations, or when its budget cannot pay for the next
    gradient estimate. The point returned is checked with one last query (included in `queries`).
    """
    check_positive(
        "hopskipjump",
        eps=config.eps,
        max_queries=config.max_queries,
        max_iterations=config.max_iterations,
        init_evals=config.init_evals,
        max_evals=config.max_evals,
        gamma=config.gamma,
        init_attempts=config.init_attempts,
    )
    if config.norm not in NORMS:
        raise DataError(f"hopskipjump: norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
    b = prepare(target, x, y, target_labels, Access.LABELS, "hopskipjump")
    if starts is not None:
        starts = torch.as_tensor(starts).to(device=b.x.device, dtype=b.x.dtype)
        target.spec.check(starts, what="hopskipjump starts")
        if len(starts) != len(b.x):
            raise DataError(f"hopskipjump: {len(starts)} starting points for {len(b.x)} inputs")
    n, d = len(b.x), b.x[0].numel()
    theta = config.gamma / (d**1.5 if config.norm == "l2" else d**2)
    phi = _Decision(target, b, config.max_queries - 1)  # one query is kept for the final check
    search = _Search(phi, b, config.norm, theta, config.eps or 0.0)
    everyone = torch.arange(n, device=b.x.device)

    search.record(everyone, b.x, phi(everyone, b.x))
    start, has_start = _starting_points(phi, b, starts, config.init_attempts, generator)
    current = b.x.clone()
    starting = has_start.nonzero().squeeze(1)
    current[starting] = search.to_boundary(starting, start[starting])
    dist_stepped = torch.zeros(n, device=b.x.device)  # distance of the last point before its binary search
    for t in range(1, config.max_iterations + 1):
        evals = min(int(config.init_evals * math.sqrt(t)), config.max_evals)
        active = (search.found() & (phi.left() >= evals)).nonzero().squeeze(1)
        if len(active) == 0:
            break
        if t == 1:  # as in the authors' code: a tenth of the input range
            delta = torch.full((len(active),), 0.1 * float((b.upper - b.lower).mean()), device=b.x.device)
        else:
            delta = (math.sqrt(d) if config.norm == "l2" else d) * theta * dist_stepped[active]
        x_t = current[active]
        direction = _gradient_direction(phi, active, x_t, delta, evals, config.norm, b, generator)
        if config.norm == "linf":
            direction = direction.sign()
        step = batch_norm(x_t - b.x[active], config.norm) / math.sqrt(t)
        stepped, moved = _geometric_step(phi, b, active, x_t, direction, step)
        moved_idx = active[moved]
        dist_stepped[moved_idx] = batch_norm(stepped[moved] - b.x[moved_idx], config.norm)
        current[moved_idx] = search.to_boundary(moved_idx, stepped[moved])

    success = search.found() & (search.best_norm <= (config.eps or float("inf")))
    check = (success & (search.best_norm > 0)).nonzero().squeeze(1)
    success[check] = phi(check, search.best[check])
    targeted = b.target_labels is not None
    return finish("hopskipjump", b.x, search.best, success, phi.queries, config.norm, config.eps, targeted)


class _Decision:
    """The paper's phi over a batch: True where the model's label is the attacker's goal. Counts every probe
    against the sample it belongs to; `left` is what a sample may still spend."""

    def __init__(self, target: Target, b: Batch, budget: int) -> None:
        self.target, self.b = target, b
        self.queries = torch.zeros(len(b.x), dtype=torch.int64, device=b.x.device)
        self.budget = torch.full_like(self.queries, budget)

    def left(self) -> torch.Tensor:
        return self.budget - self.queries

    def stop(self, idx: torch.Tensor) -> None:
        """End the search of samples idx: no more probes are spent on them."""
        self.budget[idx] = self.queries[idx]

    def __call__(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """phi at the points x (m, *shape), point k belonging to sample idx[k]."""
        self.queries += torch.bincount(idx, minlength=len(self.queries))
        t = self.b.target_labels[idx] if self.b.target_labels is not None else None
        return is_success(self.target.labels(x), self.b.y[idx], t)


class _Search:
    """The closest verified adversarial point per sample, and the paper's binary search to the boundary.

    A sample whose closest point is within `enough` (eps, or 0 for a minimal-norm search) is stopped.
    """

    def __init__(self, phi: _Decision, b: Batch, norm: Norm, theta: float, enough: float) -> None:
        self.phi, self.b, self.norm, self.theta, self.enough = phi, b, norm, theta, enough
        self.best = b.x.clone()
        self.best_norm = torch.full((len(b.x),), float("inf"), device=b.x.device)

    def found(self) -> torch.Tensor:
        return torch.isfinite(self.best_norm)

    def record(self, idx: torch.Tensor, x: torch.Tensor, adversarial: torch.Tensor) -> None:
        """Keep the points x of samples idx that phi said are adversarial where they beat the best so far."""
        size = batch_norm(x - self.b.x[idx], self.norm)
        better = adversarial & (size < self.best_norm[idx])
        self.best[idx[better]] = x[better]
        self.best_norm[idx[better]] = size[better]
        self.phi.stop(idx[better & (size <= self.enough)])

    def to_boundary(self, idx: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """BIN-SEARCH of the paper between each x0 and its adversarial x_adv: the adversarial end point of the
        final interval. L2 searches the blend (1 - a) x0 + a x_adv for a in [0, 1] down to theta; L-inf the
        clipping of x_adv to the box of radius a around x0, for a in [0, |x_adv - x0|_inf] down to
        min(theta, theta * |x_adv - x0|_inf)."""
        x0 = self.b.x[idx]
        if self.norm == "l2":
            high = torch.ones(len(idx), device=x0.device)
            tol = torch.full_like(high, self.theta)
        else:
            high = batch_norm(x_adv - x0, "linf")
            tol = (high * self.theta).clamp(max=self.theta)
        low = torch.zeros_like(high)
        out = x_adv.clone()
        self.record(idx, x_adv, torch.ones(len(idx), dtype=torch.bool, device=x0.device))
        while True:
            todo = ((high - low > tol) & (self.phi.left()[idx] > 0)).nonzero().squeeze(1)
            if len(todo) == 0:
                return out
            mid = (high[todo] + low[todo]) / 2
            a = per_sample(mid, x0[todo])
            if self.norm == "l2":
                x_mid = (1 - a) * x0[todo] + a * x_adv[todo]
            else:
                x_mid = torch.minimum(torch.maximum(x_adv[todo], x0[todo] - a), x0[todo] + a)
            adversarial = self.phi(idx[todo], x_mid)
            self.record(idx[todo], x_mid, adversarial)
            high[todo] = torch.where(adversarial, mid, high[todo])
            low[todo] = torch.where(adversarial, low[todo], mid)
            out[todo[adversarial]] = x_mid[adversarial]


def _starting_points(
    phi: _Decision, b: Batch, given: torch.Tensor | None, attempts: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial starting points for the samples still searching: the given ones that phi accepts, else
    uniform noise in the input bounds, drawn up to `attempts` times per sample.

    Returns starting points for all n samples (x0 where none was found) and the mask of found ones.
    """
    start = b.x.clone()
    ok = torch.zeros(len(b.x), dtype=torch.bool, device=b.x.device)
    if given is not None:
        todo = (phi.left() > 0).nonzero().squeeze(1)
        ok[todo] = phi(todo, given[todo])
        start[ok] = given[ok]
    for _ in range(attempts):
        todo = (~ok & (phi.left() > 0)).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        u = torch.rand(b.x[todo].shape, generator=generator, device=b.x.device)
        noise = b.lower + (b.upper - b.lower) * u
        adversarial = phi(todo, noise)
        start[todo[adversarial]] = noise[adversarial]
        ok[todo[adversarial]] = True
    return start, ok


def _gradient_direction(
    phi: _Decision,
    idx: torch.Tensor,
    x_t: torch.Tensor,
    delta: torch.Tensor,
    evals: int,
    norm: Norm,
    b: Batch,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Unit L2 estimate of the boundary's normal at x_t, the paper's Monte-Carlo sum with its baseline: the
    mean of (phi(x_t + delta u) - mean phi) u over `evals` random unit vectors u (Gaussian for L2, uniform in
    the cube for L-inf, as in the authors' code). Probes are clipped to the bounds, u taken as the step made.
    """
    m = len(idx)
    sum_fu = torch.zeros_like(x_t)
    sum_u = torch.zeros_like(x_t)
    sum_f = torch.zeros(m, device=x_t.device)
    scale = delta.view(1, m, *([1] * (x_t.dim() - 1)))
    chunk = max(1, _PROBE_ELEMENTS // x_t.numel())
    for first in range(0, evals, chunk):
        shape = (min(chunk, evals - first), *x_t.shape)
        if norm == "l2":
            u = torch.randn(shape, generator=generator, device=x_t.device)
        else:
            u = 2 * torch.rand(shape, generator=generator, device=x_t.device) - 1
        u = u / u.flatten(2).norm(dim=2).view(*shape[:2], *([1] * (x_t.dim() - 1)))
        probes = clip_to_bounds(x_t + scale * u, b.lower, b.upper)
        u = (probes - x_t) / scale
        f = 2 * phi(idx.repeat(shape[0]), probes.flatten(0, 1)).view(shape[:2]).to(x_t.dtype) - 1
        sum_fu += (f.view(*shape[:2], *([1] * (x_t.dim() - 1))) * u).sum(0)
        sum_u += u.sum(0)
        sum_f += f.sum(0)
    mean_f = sum_f / evals
    # Baseline subtraction, skipped when every probe agrees (it would cancel the estimate).
    baseline = torch.where(mean_f.abs() == 1, torch.zeros_like(mean_f), mean_f)
    return normalize(sum_fu - per_sample(baseline, x_t) * sum_u, "l2")


def _geometric_step(
    phi: _Decision, b: Batch, idx: torch.Tensor, x_t: torch.Tensor, v: torch.Tensor, step: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step from the boundary point x_t along v, halving the step until phi accepts the point.

    Returns the accepted points (x_t where the budget ran out first) and the mask of samples that moved.
    """
    out = x_t.clone()
    moved = torch.zeros(len(idx), dtype=torch.bool, device=x_t.device)
    step = step.clone()
    while True:
        todo = (~moved & (phi.left()[idx] > 0)).nonzero().squeeze(1)
        if len(todo) == 0:
            return out, moved
        x_from = x_t[todo]
        candidate = clip_to_bounds(x_from + per_sample(step[todo], x_from) * v[todo], b.lower, b.upper)
        adversarial = phi(idx[todo], candidate)
        out[todo[adversarial]] = candidate[adversarial]
        moved[todo[adversarial]] = True
        step[todo[~adversarial]] /= 2
