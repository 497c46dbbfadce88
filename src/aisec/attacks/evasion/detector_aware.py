"""An adaptive white-box attack on a model guarded by a detector of manipulated input: fool the model and stay
below the detector's threshold at once (Carlini & Wagner, "Adversarial Examples Are Not Easily Detected",
AISec 2017; Tramèr, Carlini, Brendel & Madry, "On Adaptive Attacks to Adversarial Example Defenses", NeurIPS
2020).

For each weight w of the detector term and each run (1 + restarts, from random starts), APGD's step schedule
(Croce & Hein, ICML 2020) ascends

    margin(x) - w * relu((s(x) - threshold) / |threshold| + score_margin)

with margin(x) = max_{i != y} z_i(x) - z_y(x) (positive once the model errs) and s the detector's differentiable
score (a BPDA stand-in where the detector is not differentiable: Athalye, Carlini & Wagner, ICML 2018). The
detector term is measured in units of the threshold, so that one set of weights serves detectors whose scores
differ in scale by orders of magnitude. Weight 0 is the plain margin attack. A sample is done at the first
iterate that the model misclassifies and the exact detector score leaves unflagged; success is never decided on
the surrogate. The detector comes in as plain callables, so this module knows nothing of `aisec.defend`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aisec.attacks.evasion.apgd import APGDConfig, _review, _start, _step, _track, checkpoints
from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.inputs import Batch, prepare
from aisec.attacks.evasion.losses import margin
from aisec.attacks.evasion.norms import NORMS, Norm, batch_norm, clip_to_bounds, random_in_ball, rows
from aisec.core.errors import BadInputError, DataError
from aisec.targets.base import Access, WhiteBoxTarget

Score = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DetectorAwareConfig:
    """eps: budget in `norm`; steps: iterations per run; restarts: extra runs from new random starts per weight,
    on the samples not yet fooled and undetected; weights: the weights of the detector term, tried in order;
    score_margin: how far below the threshold, as a share of |threshold|, the attack aims."""

    eps: float
    norm: Norm = "linf"
    steps: int = 100
    restarts: int = 2
    weights: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0)
    score_margin: float = 0.05


@dataclass(frozen=True)
class DetectorAwareResult:
    """Per sample: x_adv, the first iterate found that is misclassified and undetected, else the first
    misclassified (but flagged) one, else the input; fooled: the model errs on x_adv; detected: its exact
    score exceeds the threshold; fooled_undetected: both goals met; score: the exact score of x_adv; weight: the
    detector weight of the run that met both goals (NaN where none did); norm: size of x_adv - x."""

    x_adv: torch.Tensor
    fooled: torch.Tensor
    detected: torch.Tensor
    fooled_undetected: torch.Tensor
    score: torch.Tensor
    weight: torch.Tensor
    norm: torch.Tensor
    eps: float
    norm_kind: Norm
    threshold: float

    @property
    def fooled_undetected_rate(self) -> float:
        """Share of the attacked samples that are misclassified and undetected."""
        return float(self.fooled_undetected.float().mean())


def detector_aware_attack(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    score: Score,
    threshold: float,
    config: DetectorAwareConfig,
    *,
    exact_score: Score | None = None,
    generator: torch.Generator | None = None,
) -> DetectorAwareResult:
    """Attack `target` and a detector that flags inputs whose `exact_score` (or `score` when it is exact)
    exceeds `threshold`; `score` is the differentiable (surrogate) score the attack descends. See the module
    docstring for the objective; success is checked on the model's real prediction and the exact score."""
    _check(config, threshold, score, exact_score)
    b = prepare(target, x, y, None, Access.WHITE_BOX, "detector_aware")
    exact = exact_score or score
    n = len(b.x)
    found, caught = b.x.clone(), b.x.clone()
    done = torch.zeros(n, dtype=torch.bool, device=b.x.device)
    fooled_any = torch.zeros_like(done)
    weight = torch.full((n,), math.nan, device=b.x.device)
    for w in config.weights:
        for _ in range(config.restarts + 1):
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            sub = Batch(b.x[todo], b.y[todo], None, b.lower, b.upper)
            run_found, ok, run_caught, fooled = _run(
                target, sub, score, exact_score, threshold, float(w), config, generator
            )
            found[todo[ok]] = run_found[ok]
            weight[todo[ok]] = float(w)
            done[todo] |= ok
            first = fooled & ~fooled_any[todo]
            caught[todo[first]] = run_caught[first]
            fooled_any[todo] |= fooled
    x_adv = torch.where(rows(done, b.x), found, torch.where(rows(fooled_any, b.x), caught, b.x))
    with torch.no_grad():
        wrong = target.labels(x_adv) != b.y
        final = _checked(exact(x_adv), n, "detector_aware.exact_score").to(b.x.device)
    detected = final > threshold
    return DetectorAwareResult(
        x_adv=x_adv,
        fooled=wrong,
        detected=detected,
        fooled_undetected=wrong & ~detected,
        score=final,
        weight=weight,
        norm=batch_norm(x_adv - b.x, config.norm),
        eps=float(config.eps),
        norm_kind=config.norm,
        threshold=float(threshold),
    )


def _check(config: DetectorAwareConfig, threshold: float, score: object, exact_score: object) -> None:
    """BadInputError naming the first bad setting, before any query."""
    if not isinstance(config.eps, (int, float)) or not 0 < config.eps < math.inf:
        raise BadInputError(f"detector_aware.eps: {config.eps!r} is not a positive budget")
    if config.norm not in NORMS:
        raise BadInputError(f"detector_aware.norm: {config.norm!r} is not one of {', '.join(NORMS)}")
    if not isinstance(config.steps, int) or config.steps < 1:
        raise BadInputError(f"detector_aware.steps: {config.steps!r} is not a positive integer")
    if not isinstance(config.restarts, int) or config.restarts < 0:
        raise BadInputError(f"detector_aware.restarts: {config.restarts!r} is not a non-negative integer")
    weights = config.weights
    if not weights or not all(isinstance(w, (int, float)) and 0 <= w < math.inf for w in weights):
        raise BadInputError(
            f"detector_aware.weights: {weights!r} must be finite non-negative numbers, at least one"
        )
    if not isinstance(config.score_margin, (int, float)) or not 0 <= config.score_margin < 1:
        raise BadInputError(f"detector_aware.score_margin: {config.score_margin!r} is not in [0, 1)")
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise BadInputError(f"detector_aware.threshold: {threshold!r} is not a finite number")
    for field, fn in (("score", score), ("exact_score", exact_score)):
        if not callable(fn) and not (field == "exact_score" and fn is None):
            raise BadInputError(f"detector_aware.{field}: expected a callable, got {type(fn).__name__}")


def _checked(values: torch.Tensor, n: int, field: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.shape != (n,):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise DataError(f"{field}: must return one score per input, shape ({n},); got {shape}")
    return values


def _run(
    target: WhiteBoxTarget,
    b: Batch,
    score: Score,
    exact_score: Score | None,
    threshold: float,
    weight: float,
    config: DetectorAwareConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One run from a random start with APGD's step-size schedule and momentum on the weighted objective.

    Returns the first iterate that is misclassified and undetected and whether one was found, and the first
    misclassified iterate and whether one was seen. Samples leave the batch at their first success."""
    n, eps = len(b.x), config.eps
    schedule = APGDConfig(eps=eps, norm=config.norm, steps=config.steps)
    scale = abs(threshold) or 1.0
    found, caught = b.x.clone(), b.x.clone()
    ok = torch.zeros(n, dtype=torch.bool, device=b.x.device)
    fooled_any = torch.zeros_like(ok)
    reviews = checkpoints(config.steps)
    x_cur = clip_to_bounds(b.x + random_in_ball(b.x, eps, config.norm, generator), b.lower, b.upper)
    active = torch.arange(n, device=b.x.device)
    state: dict[str, torch.Tensor] = {"x0": b.x, "y": b.y, "x_cur": x_cur, "x_prev": x_cur}
    last_review = 0
    for step in range(config.steps + 1):
        x_in = state["x_cur"].detach().requires_grad_(True)
        logits = target.logits(x_in)
        # Weight 0 needs no surrogate (nor its graph): the exact score decides success below.
        s = _checked(score(x_in), len(x_in), "detector_aware.score").to(x_in.device) if weight else None
        fooled = logits.detach().argmax(1) != state["y"]
        hidden = torch.zeros_like(fooled)
        if bool(fooled.any()):
            if exact_score is None and s is not None:
                hidden = fooled & (s.detach() <= threshold)
            else:
                with torch.no_grad():
                    exact = _checked(
                        (exact_score or score)(x_in.detach()[fooled]),
                        int(fooled.sum()),
                        "detector_aware.exact_score",
                    )
                hidden[fooled] = exact.to(x_in.device) <= threshold
            new_fooled = fooled & ~fooled_any[active]
            caught[active[new_fooled]] = x_in.detach()[new_fooled]
            fooled_any[active[new_fooled]] = True
        success = fooled & hidden
        found[active[success]] = x_in.detach()[success]
        ok[active[success]] = True
        if step == config.steps:
            break
        objective = margin(logits, state["y"], None)
        if s is not None:
            objective = objective - weight * torch.relu((s - threshold) / scale + config.score_margin)
        grad = input_gradient(objective.sum(), x_in)
        with torch.no_grad():
            objective = objective.detach()
            if step == 0:
                _start(state, objective, grad, eps)
            else:
                _track(state, objective, grad)
            if step in reviews:
                grad = _review(state, grad, step - last_review, schedule.rho)
                last_review = step
            _step(state, grad, b, eps, schedule, momentum=1.0 if step == 0 else schedule.momentum)
        if bool(success.any()):
            keep = ~success
            if not bool(keep.any()):
                break
            active = active[keep]
            state = {k: v[keep] for k, v in state.items()}
    return found, ok, caught, fooled_any
