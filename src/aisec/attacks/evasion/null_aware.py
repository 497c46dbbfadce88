"""The adaptive white-box attack on a model with a NULL ("reject") output, such as one trained with NULL
labelling (Hosseini et al., "Blocking Transferability of Adversarial Examples in Black-Box Learning Systems",
arXiv:1703.04318, 2017).

Plain PGD counts an answer of NULL as a success (it is not the true class), and its cross-entropy loss is as
happy to push an input into NULL as into a wrong class; neither measures what the defence claims to stop. An
attacker who knows the defence wants a wrong, accepted answer: this is PGD (Madry et al., ICLR 2018) on the
margin max_{j not in {y, NULL}} z_j - max(z_y, z_NULL) over the logits z, the margin (CW) loss of Carlini &
Wagner (IEEE S&P 2017) with NULL counted on the true class's side, and success means an answer that is neither
the true class nor NULL (Tramer, Carlini, Brendel & Madry, "On Adaptive Attacks to Adversarial Example
Defenses", NeurIPS 2020, on attacking a defence's rejection option).
"""

from __future__ import annotations

import torch

from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.inputs import Batch, check_positive, prepare
from aisec.attacks.evasion.norms import NORMS, Norm, clip_to_bounds, normalize, project, random_in_ball, rows
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.core.errors import DataError
from aisec.targets.base import Access, WhiteBoxTarget


def null_aware_pgd(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    null_class: int,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    norm: Norm = "linf",
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """Untargeted PGD that ascends max_{j not in (y, NULL)} z_j - max(z_y, z_NULL) inside the eps-ball
    (`norm`) and the input bounds, with step size 2.5 * eps / steps; success: the answer is neither y nor
    `null_class`.

    The first run starts at the clean input (a random start would add the noise NULL labelling rejects);
    each of the `restarts` extra runs starts at a uniform random point of the ball, on the samples not yet
    fooled. Keeps each sample's first fooling iterate; queries count the logits evaluations up to it, over
    all runs. Samples already answered with a wrong, non-NULL class succeed with no perturbation."""
    check_positive("null_aware_pgd", eps=eps, steps=steps)
    if restarts < 0:
        raise DataError(f"null_aware_pgd: restarts must be >= 0, got {restarts}")
    if norm not in NORMS:
        raise DataError(f"null_aware_pgd: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    k = target.spec.num_classes
    if isinstance(null_class, bool) or not isinstance(null_class, int) or not 0 <= null_class < k:
        raise DataError(
            f"null_aware_pgd: null_class must be an output index in [0, {k - 1}], got {null_class!r}"
        )
    if k < 3:
        raise DataError(f"null_aware_pgd: needs a wrong class besides y and NULL; the model has {k} outputs")
    b = prepare(target, x, y, None, Access.WHITE_BOX, "null_aware_pgd")
    if bool((b.y == null_class).any()):
        raise DataError(f"null_aware_pgd: labels must be real classes, not the NULL class {null_class}")
    best = b.x.clone()
    success = torch.zeros(len(b.x), dtype=torch.bool, device=b.x.device)
    queries = torch.zeros(len(b.x), dtype=torch.int64, device=b.x.device)
    for run in range(restarts + 1):
        todo = (~success).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        found, ok, used = _run(target, b, todo, null_class, eps, steps, norm, generator, random_start=run > 0)
        best[todo] = torch.where(rows(ok, found), found, best[todo])
        success[todo] = ok
        queries[todo] += used
    return finish("null_aware_pgd", b.x, best, success, queries, norm, eps, False)


def null_margin(logits: torch.Tensor, y: torch.Tensor, null_class: int) -> torch.Tensor:
    """Per sample max_{j not in {y, NULL}} z_j - max(z_y, z_NULL); positive exactly when the top answer is a
    wrong class other than NULL (up to ties)."""
    others = logits.scatter(1, y[:, None], float("-inf"))
    others[:, null_class] = float("-inf")
    kept = torch.maximum(logits.gather(1, y[:, None]).squeeze(1), logits[:, null_class])
    return others.amax(1) - kept


def _run(
    target: WhiteBoxTarget,
    b: Batch,
    idx: torch.Tensor,
    null_class: int,
    eps: float,
    steps: int,
    norm: Norm,
    generator: torch.Generator | None,
    *,
    random_start: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One run over the samples `idx`; fooled samples leave the batch. Returns found, ok, used."""
    x0, y = b.x[idx], b.y[idx]
    n = len(idx)
    found = x0.clone()
    ok = torch.zeros(n, dtype=torch.bool, device=x0.device)
    used = torch.full((n,), steps + 1, dtype=torch.int64, device=x0.device)
    alpha = 2.5 * eps / steps
    start = random_in_ball(x0, eps, norm, generator) if random_start else torch.zeros_like(x0)
    x_cur = clip_to_bounds(x0 + start, b.lower, b.upper)
    active = torch.arange(n, device=x0.device)
    for step in range(steps + 1):
        x_cur.requires_grad_(True)
        logits = target.logits(x_cur)
        pred = logits.detach().argmax(1)
        fooled = (pred != y[active]) & (pred != null_class)
        first = active[fooled]
        found[first] = x_cur.detach()[fooled]
        ok[first] = True
        used[first] = step + 1
        keep = ~fooled
        if step == steps or not bool(keep.any()):
            break
        grad = input_gradient(null_margin(logits, y[active], null_class).sum(), x_cur)
        with torch.no_grad():
            x_next = x_cur + alpha * normalize(grad, norm)
            x_next = x0[active] + project(x_next - x0[active], eps, norm)
            x_cur = clip_to_bounds(x_next, b.lower, b.upper)[keep]
        active = active[keep]
    return found, ok, used
