"""Checks that white-box robustness figures are not an artefact of gradient masking.

After Athalye, Carlini & Wagner (ICML 2018) and Croce & Hein's AutoAttack (ICML 2020): a model can look
robust because its gradients are useless (zero, non-finite, noisy, shattered by a non-differentiable
layer), not because it is. Each check below is a symptom; when one fires, the evasion finding is marked
unreliable and says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.cascade import CascadeResult
from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.losses import margin
from aisec.attacks.evasion.minimal import full_range_budget
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.attacks.evasion.registry import ATTACKS
from aisec.targets.base import Access, Target, WhiteBoxTarget


@dataclass(frozen=True)
class MaskingCheck:
    name: str
    fired: bool
    observed: float
    threshold: float
    detail: str


def black_box_beats_white_box(cascade: CascadeResult) -> MaskingCheck:
    """A score- or label-based attack fools a sizeable share (>= 10 %) of the points every gradient-based
    member left robust (AutoAttack's warning sign), and enough of them to be evidence: at least 5 points and
    1 % of those attacked. A few such points are normal when the white-box members are few; with masked
    gradients the black-box attack fools most of them."""
    white = [k for k, a in enumerate(cascade.attacks) if ATTACKS[a].needs is Access.WHITE_BOX]
    black = [k for k, a in enumerate(cascade.attacks) if ATTACKS[a].needs is not Access.WHITE_BOX]
    enough = max(5, -(-int(cascade.clean_correct.sum()) // 100))
    worst = (0.0, 0, 0, 0.0)  # share, fooled, left by white box, eps
    if white and black:
        for outcome in cascade.outcomes:
            extra = sum(outcome.broken_per_attack[cascade.attacks[k]] for k in black if k > max(white))
            left = outcome.robust_count + extra
            if extra >= enough and extra / left > worst[0]:
                worst = (extra / left, extra, left, outcome.eps)
    share, extra, left, eps = worst
    return MaskingCheck(
        "black-box attack beats white-box attacks",
        share >= 0.1,
        share,
        0.1,
        f"at eps={eps:g}, black-box attacks fooled {extra} of the {left} point(s) every gradient-based attack left robust"
        if extra
        else f"black-box attacks fooled fewer than {enough} of the points the gradient-based ones left robust",
    )


def unbounded_budget(
    target: WhiteBoxTarget, x: torch.Tensor, y: torch.Tensor, norm: str, generator: torch.Generator
) -> MaskingCheck:
    """With a budget covering the whole input range, gradient steps alone (no random start) must fool ~every point."""
    eps = full_range_budget(target, norm)  # type: ignore[arg-type]
    r = pgd(target, x, y, PGDConfig(eps=eps, steps=100, norm=norm, random_start=False), generator=generator)  # type: ignore[arg-type]
    rate = r.success_rate
    return MaskingCheck(
        "success does not reach 100 % with an unbounded budget",
        rate < 0.95,
        rate,
        0.95,
        f"PGD-100 from the clean input with eps={eps:g} (the whole input range) fooled {rate:.1%} of {len(x)} points",
    )


def gradient_health(target: WhiteBoxTarget, x: torch.Tensor, y: torch.Tensor) -> MaskingCheck:
    """Share of points whose input gradient of the logit margin is zero everywhere or not finite."""
    x_in = x.clone().requires_grad_(True)
    grad = input_gradient(margin(target.logits(x_in), y, None).sum(), x_in)
    flat = grad.flatten(1)
    bad = (~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)
    share = float(bad.float().mean())
    return MaskingCheck(
        "zero or non-finite input gradients",
        share > 0.05,
        share,
        0.05,
        f"{int(bad.sum())} of {len(x)} points have an all-zero or non-finite gradient of the logit margin",
    )


def randomised_forward(target: Target, x: torch.Tensor) -> MaskingCheck:
    """The same input answered twice differently: gradients need Expectation over Transformation, and every
    figure varies between runs. Compares scores where the attacker sees them, else labels."""
    with torch.no_grad():
        if target.access.allows(Access.SCORES):
            a, b = target.scores(x), target.scores(x)
            diff = float((a - b).abs().max())
            fired = diff > 1e-5 * max(1.0, float(a.abs().max()))
            detail = f"scoring the same {len(x)} inputs twice differed by up to {diff:.3g}"
        else:
            diff = float((target.labels(x) != target.labels(x)).float().mean())
            fired = diff > 0
            detail = f"labelling the same {len(x)} inputs twice changed {diff:.1%} of the labels"
    return MaskingCheck(
        "randomised forward pass", fired, diff, 1e-5 if target.access.allows(Access.SCORES) else 0.0, detail
    )


def single_step_beats_iterative(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    cascade: CascadeResult,
    generator: torch.Generator,
) -> MaskingCheck:
    """FGSM, one step, fools points the whole cascade left robust: iterative attacks are being misled."""
    from aisec.attacks.evasion.fgsm import FGSMConfig, fgsm

    worst_eps, worst = 0.0, 0
    for outcome in cascade.outcomes:
        idx = outcome.robust.nonzero().squeeze(1)
        if len(idx):
            r = fgsm(
                target, x[idx], y[idx], FGSMConfig(eps=outcome.eps, norm=cascade.norm), generator=generator
            )
            if int(r.success.sum()) > worst:
                worst_eps, worst = outcome.eps, int(r.success.sum())
    need = max(2, -(-int(cascade.clean_correct.sum()) // 100))  # 1 % of the attacked points, and at least 2
    return MaskingCheck(
        "single-step attack beats iterative attacks",
        worst >= need,
        worst,
        need,
        f"at eps={worst_eps:g}, FGSM fooled {worst} point(s) the cascade left robust"
        if worst
        else "FGSM fooled no point the cascade left robust",
    )


def run_checks(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    cascade: CascadeResult,
    generator: torch.Generator,
    sample: int = 200,
) -> list[MaskingCheck]:
    """All checks the target's access allows, on up to `sample` clean-correct points."""
    idx = cascade.clean_correct.nonzero().squeeze(1)[:sample]
    xs, ys = x[idx].to(target.device), y[idx].to(target.device)
    checks = [randomised_forward(target, xs)] if len(idx) else []
    if isinstance(target, WhiteBoxTarget) and len(idx):
        checks += [
            gradient_health(target, xs, ys),
            unbounded_budget(target, xs, ys, cascade.norm, generator),
            single_step_beats_iterative(target, x.to(target.device), y.to(target.device), cascade, generator),
            black_box_beats_white_box(cascade),
        ]
    return checks
