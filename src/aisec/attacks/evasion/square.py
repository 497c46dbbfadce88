"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based random search, L-inf, L2.

Each step changes the current perturbation inside one random square window, queries the class scores once
and keeps the change only if the margin loss improves. The window covers a fraction p of the pixels, and p
halves on a fixed schedule. Inputs (n, c, h, w) are images; any other shape is read as a row of features
(n, 1, 1, d), where a "square" is a run of p * d consecutive features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aisec.attacks.evasion.inputs import check_positive, prepare
from aisec.attacks.evasion.losses import margin
from aisec.attacks.evasion.norms import NORMS, Norm, batch_norm, clip_to_bounds, per_sample, project
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.core.errors import DataError
from aisec.targets.base import Access, Target

# The paper's schedule: p halves after these iterations out of 10,000, rescaled to the query budget.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass(frozen=True)
class SquareConfig:
    """eps: budget; queries: score queries per sample and run, the initial one included; p_init: initial
    fraction of pixels in the window; restarts: independent runs, each on the samples not fooled yet."""

    eps: float
    norm: Norm = "linf"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1


def square(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    config: SquareConfig,
    *,
    target_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """Random search on the margin loss inside the eps-ball (Algorithm 1 of the paper); needs class scores.

    Only samples not fooled yet are queried: `queries` counts each sample's score queries up to its first
    success, at most config.queries * config.restarts.
    """
    check_positive("square", eps=config.eps, queries=config.queries, restarts=config.restarts)
    if config.norm not in NORMS:
        raise DataError(f"square: norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
    if not 0 < config.p_init <= 1:
        raise DataError(f"square: p_init must lie in (0, 1], got {config.p_init}")
    b = prepare(target, x, y, target_labels, Access.SCORES, "square")
    n = len(b.x)
    image = b.x.shape[1:] if b.x.dim() == 4 else (1, 1, b.x[0].numel())
    lower, upper = (bound.reshape(image) if bound.dim() else bound for bound in (b.lower, b.upper))
    x0 = b.x.reshape(n, *image)
    best = x0.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x0.device)
    queries = torch.zeros(n, dtype=torch.int64, device=x0.device)
    for _ in range(config.restarts):
        todo = (~success).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        t = b.target_labels[todo] if b.target_labels is not None else None
        x_adv, ok, used = _run(target, x0[todo], b.y[todo], t, lower, upper, config, generator)
        best[todo] = x_adv
        success[todo] = ok
        queries[todo] += used
    targeted = b.target_labels is not None
    return finish("square", b.x, best.reshape(b.x.shape), success, queries, config.norm, config.eps, targeted)


def _run(
    target: Target,
    x0: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor | None,
    lower: torch.Tensor,
    upper: torch.Tensor,
    config: SquareConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One run on images x0 (n, c, h, w): the best point per sample, whether it fools, queries spent."""
    n, shape = len(x0), target.spec.shape
    if config.norm == "linf":
        x_best = clip_to_bounds(x0 + config.eps * _stripes(x0, generator), lower, upper)
    else:
        init = _l2_init(x0, generator)
        x_best = clip_to_bounds(x0 + config.eps * init / per_sample(batch_norm(init, "l2"), x0), lower, upper)
    loss = margin(target.scores(x_best.reshape(n, *shape)), y, t)
    queries = torch.ones(n, dtype=torch.int64, device=x0.device)
    propose = _propose_linf if config.norm == "linf" else _propose_l2
    for i in range(config.queries - 1):
        active = (loss <= 0).nonzero().squeeze(1)
        if len(active) == 0:
            break
        p = config.p_init / 2 ** sum(int(i / config.queries * 10_000) > k for k in _P_HALVINGS)
        x_cur, t_cur = x_best[active], t[active] if t is not None else None
        x_new = propose(x0[active], x_cur, lower, upper, config.eps, p, generator)
        new_loss = margin(target.scores(x_new.reshape(len(active), *shape)), y[active], t_cur)
        improved = new_loss > loss[active]
        x_best[active] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_cur)
        loss[active] = torch.where(improved, new_loss, loss[active])
        queries[active] += 1
    return x_best, loss > 0, queries


def _propose_linf(
    x0: torch.Tensor,
    x_cur: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    eps: float,
    p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Set one random window to x0 +- eps, one random sign per channel (Algorithm 2 of the paper)."""
    h, w = x0.shape[2:]
    window = _window_size(p, h, w, odd_at_least_3=False)
    _, inside = _place(torch.ones(len(x0), *window, device=x0.device, dtype=x0.dtype), h, w, generator)
    signs = _signs((len(x0), x0.shape[1], 1, 1), x0, generator)
    x_new = torch.where(inside, clip_to_bounds(x0 + eps * signs, lower, upper), x_cur)
    # A draw that leaves the window as it is would waste a query; the opposite signs always change it.
    same = (x_new == x_cur).flatten(1).all(1).view(-1, 1, 1, 1) & inside
    return torch.where(same, clip_to_bounds(x0 - eps * signs, lower, upper), x_new)


def _propose_l2(
    x0: torch.Tensor,
    x_cur: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    eps: float,
    p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Algorithm 3 of the paper: move the mass of a second window W2 and the unused budget into a window W1,
    adding the paper's square-shaped perturbation there with a random sign per channel."""
    n, c, h, w = x0.shape
    window = _window_size(p, h, w, odd_at_least_3=True)
    nu = x_cur - x0
    eta, w1 = _place(_l2_bump(n, *window, x0, generator), h, w, generator)
    _, w2 = _place(torch.ones(n, *window, device=x0.device, dtype=x0.dtype), h, w, generator)
    both = w1 | w2
    unused = (eps**2 - batch_norm(nu, "l2") ** 2).clamp_min(0)
    nu_w1 = nu * w1
    new_w1 = _signs((n, c, 1, 1), x0, generator) * eta + nu_w1 / _channel_norm(nu_w1).clamp_min(1e-12)
    available = (_channel_norm(nu * both) ** 2 + per_sample(unused, x0) / c).sqrt()
    nu = torch.where(both, 0.0, nu) + new_w1 / _channel_norm(new_w1).clamp_min(1e-12) * available
    return clip_to_bounds(x0 + project(nu, eps, "l2"), lower, upper)


def _window_size(p: float, h: int, w: int, *, odd_at_least_3: bool) -> tuple[int, int]:
    """(height, width) of a window covering a fraction p of an h x w image: a square of side
    round(sqrt(p h w)), or round(p w) features of a row (h == 1). L2 windows are odd and at least 3 wide, as
    in the authors' code, where the input is large enough."""
    side = round(p * w) if h == 1 else round(math.sqrt(p * h * w))
    if odd_at_least_3:
        side = max(side, 3) | 1
    side = min(max(side, 1), w if h == 1 else min(h, w))
    return (1, side) if h == 1 else (side, side)


def _place(
    pattern: torch.Tensor, h: int, w: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put each sample's pattern (n, a, b) at a uniformly random position of an h x w canvas.

    Returns the canvas (n, 1, h, w), zero outside the window, and the window as a boolean mask of that shape.
    """
    n, a, b = pattern.shape
    device = pattern.device
    top = torch.randint(0, h - a + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, w - b + 1, (n, 1), generator=generator, device=device)
    rows = torch.arange(h, device=device) - top
    cols = torch.arange(w, device=device) - left
    inside = ((rows >= 0) & (rows < a))[:, :, None] & ((cols >= 0) & (cols < b))[:, None, :]
    sample = torch.arange(n, device=device)[:, None, None]
    values = pattern[sample, rows.clamp(0, a - 1)[:, :, None], cols.clamp(0, b - 1)[:, None, :]]
    return torch.where(inside, values, 0.0)[:, None], inside[:, None]


def _bump(a: int, b: int, like: torch.Tensor) -> torch.Tensor:
    """The paper's eta for an a x b rectangle, of unit L2 norm: at Chebyshev distance r from the centre,
    sum_{k=r}^{m} 1 / (k + 1)^2 with m = max(a, b) // 2."""
    m = max(a, b) // 2
    weights = 1.0 / torch.arange(1, m + 2, device=like.device, dtype=like.dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    rows = (torch.arange(a, device=like.device) - a // 2).abs()
    cols = (torch.arange(b, device=like.device) - b // 2).abs()
    eta = tail[torch.maximum(rows[:, None], cols[None, :])]
    return eta / eta.norm().clamp_min(1e-12)


def _l2_bump(n: int, a: int, b: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The L2 update's shape (n, a, b) of unit norm: eta on one half of the window and -eta on the other,
    split across the longer side; square windows are split horizontally or vertically at random."""
    if a < b:
        half = b // 2
        bump = torch.cat([_bump(a, half, like), -_bump(a, b - half, like)], dim=1)
        return (bump / bump.norm()).expand(n, a, b)
    half = a // 2
    bump = torch.cat([_bump(half, b, like), -_bump(a - half, b, like)], dim=0)
    bump = bump / bump.norm()
    if a != b:
        return bump.expand(n, a, b)
    transpose = torch.rand(n, 1, 1, generator=generator, device=like.device) < 0.5
    return torch.where(transpose, bump.T, bump)


def _stripes(x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The L-inf initialisation: vertical stripes, a random sign per channel and column."""
    n, c, _, w = x0.shape
    return _signs((n, c, 1, w), x0, generator).expand_as(x0)


def _l2_init(x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The L2 initialisation (unnormalised): a centred grid of up to 5 x 5 tiles of side h // 5 (at least 1),
    each holding the update's shape with a random sign per channel; rows get 5 tiles of d // 5 features."""
    n, c, h, w = x0.shape
    init = torch.zeros_like(x0)
    (th, nh, oh), (tw, nw, ow) = _tiling(h), _tiling(w)
    for i in range(nh):
        for j in range(nw):
            bump = _l2_bump(n, th, tw, x0, generator)[:, None] * _signs((n, c, 1, 1), x0, generator)
            init[:, :, oh + i * th : oh + (i + 1) * th, ow + j * tw : ow + (j + 1) * tw] = bump
    return init


def _tiling(length: int) -> tuple[int, int, int]:
    """Tile side, number of tiles and offset that centre up to 5 tiles of side length // 5 on an axis."""
    side = max(length // 5, 1)
    count = min(5, length // side)
    return side, count, (length - side * count) // 2


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform random +-1 of the given shape."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _channel_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample's channel over its pixels, shape (n, c, 1, 1)."""
    return t.square().sum((2, 3), keepdim=True).sqrt()
