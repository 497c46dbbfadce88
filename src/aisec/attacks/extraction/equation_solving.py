"""Equation-solving extraction of linear and logistic models (Tramer, Zhang, Juels, Reiter and Ristenpart,
"Stealing Machine Learning Models via Prediction APIs", USENIX Security 2016, section 4.1), from scores.

A multinomial logistic model p = softmax(W x + b) satisfies, for every class i and a reference class r,

    log p_i(x) - log p_r(x) = (w_i - w_r) . x + (b_i - b_r),

linear in the d + 1 unknowns of each class, so d + 1 queries in general position give them all (a binary
logistic regression is the case of two classes with w_0 = 0). Softmax is unchanged when one vector is added to
every row, so only these differences are identifiable: the extracted weights have row 0 zero.

- `extract_linear`: exact scores (probabilities or logits); d + 1 queries, solved exactly.
- `extract_linear_adaptive`: rounded (or otherwise perturbed) probabilities. Only classes whose probability is
  large enough carry information, with an error that grows as it shrinks; weighted least squares over those log
  ratios, with queries chosen where the current estimate predicts many informative classes.

From labels only: `equation_solving_labels.extract_linear_from_labels`. Every solver checks the access and the
query budget before its first query (`check_budget`) and never spends more than the budget; the queries keep to
the input bounds. The helpers below the solvers are shared with the label-only one.
"""

from __future__ import annotations

import math

import torch

from aisec.attacks.extraction.result import ExtractionResult, LinearModel
from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.targets.base import Access, InputSpec, Target


def extract_linear(target: Target, *, query_budget: int | None = None) -> ExtractionResult:
    """Exact extraction from exact scores with d + 1 queries: the centre of the input box, then the centre with
    one feature at a time moved to its upper bound; each feature's weight is the change of the log ratios."""
    spec = target.spec
    d = math.prod(spec.shape)
    check_budget(target, query_budget, d + 1, Access.SCORES, "equation solving")
    lo, hi = flat_bounds(spec)
    free = (hi > lo).nonzero().squeeze(1)  # a feature with no range has no identifiable (nor any) effect
    x = ((lo + hi) / 2).repeat(len(free) + 1, 1)
    x[torch.arange(1, len(free) + 1), free] = hi[free]
    x = x.float().double()  # the points exactly as sent
    before = target.queries.total
    ratios = _log_ratios(target, x)
    if not torch.isfinite(ratios).all():
        raise DataError(
            f"{target.describe()} returned a probability of 0: its scores are rounded or saturated; "
            "use extract_linear_adaptive"
        )
    weight = torch.zeros(spec.num_classes, d, dtype=torch.float64)
    steps = x[torch.arange(1, len(free) + 1), free] - x[0, free]
    weight[1:, free] = ((ratios[1:] - ratios[0]) / steps[:, None]).T
    bias = torch.zeros(spec.num_classes, dtype=torch.float64)
    bias[1:] = ratios[0] - weight[1:] @ x[0]
    return linear_result("equation_solving", target, before, Access.SCORES, weight, bias)


def extract_linear_adaptive(
    target: Target,
    query_budget: int,
    *,
    batch_size: int = 8,
    min_probability: float = 0.005,
    candidates: int = 512,
    generator: torch.Generator | None = None,
) -> ExtractionResult:
    """Extraction from rounded probabilities within `query_budget` (at least d + 1) queries.

    Each query x gives, for every class i whose probability is at least `min_probability`, the equation
    (w_i - w_r) . x + b_i - b_r = log p_i - log p_r against its most probable class r, weighted by the inverse of
    its variance under a rounding error of fixed size, 1 / (1/p_i^2 + 1/p_r^2). The first d + 1 queries are
    uniform in the input box; then, `batch_size` at a time, those of `candidates` uniform points where the
    weighted least-squares estimate predicts the most informative classes, until the budget is spent.
    """
    spec = target.spec
    d = math.prod(spec.shape)
    check_budget(target, query_budget, d + 1, Access.SCORES, "adaptive equation solving")
    if not 0 < min_probability < 1:
        raise BadInputError(f"min_probability must be in (0, 1), got {min_probability}")
    lo, hi = flat_bounds(spec)
    before = target.queries.total
    xs, ps = [], []
    x = uniform(d + 1, lo, hi, generator)
    while True:
        xs.append(x)
        ps.append(target.probabilities(as_input(x, spec, target.device)).double().cpu())
        theta = _weighted_log_ratio_fit(torch.cat(xs), torch.cat(ps), min_probability)
        left = query_budget - (target.queries.total - before)
        if left <= 0:
            break
        pool = uniform(candidates, lo, hi, generator)
        p = _logits(theta, pool).softmax(1)
        # most classes predicted informative (with a margin for the estimate's error); ties go to the largest
        # mean log probability, which 1 / (1 - mean) maps into (0, 1)
        score = (p >= 2 * min_probability).sum(1) + 1 / (1 - p.clamp_min(1e-300).log().mean(1))
        x = pool[score.topk(min(batch_size, left)).indices]
    weight, bias = _unpack(theta)
    return linear_result("adaptive_equation_solving", target, before, Access.SCORES, weight, bias)


def _weighted_log_ratio_fit(x: torch.Tensor, p: torch.Tensor, min_probability: float) -> torch.Tensor:
    """theta (k-1, d+1), rows (w_i - w_0, b_i - b_0), minimising the weighted squared error of the log ratios."""
    n, k = p.shape
    d = x.shape[1]
    xh = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    ref = p.argmax(1)
    rows, cols = (p >= min_probability).nonzero(as_tuple=True)
    keep = cols != ref[rows]
    rows, cols = rows[keep], cols[keep]
    refs = ref[rows]
    pi, pr = p[rows, cols], p[rows, refs]
    y = pi.log() - pr.log()
    w = 1 / (1 / pi**2 + 1 / pr**2)
    a = torch.zeros(len(rows), k, d + 1, dtype=torch.float64)
    a[torch.arange(len(rows)), cols] = xh[rows]
    a[torch.arange(len(rows)), refs] -= xh[rows]
    a = a[:, 1:].reshape(len(rows), -1)  # class 0 is the reference of the parametrisation: w_0 = 0, b_0 = 0
    gram = a.T @ (a * w[:, None])
    ridge = 1e-9 * gram.diagonal().mean().clamp_min(1e-12)
    theta = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), a.T @ (w * y))
    return theta.reshape(k - 1, d + 1)


def _log_ratios(target: Target, x: torch.Tensor) -> torch.Tensor:
    """log p_i - log p_0 for i = 1..k-1 (differences of logits when the target returns logits)."""
    s = target.scores(as_input(x, target.spec, target.device)).double().cpu()
    if target.score_kind == "probabilities":
        s = s.log()
    return s[:, 1:] - s[:, :1]


def _logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits of the parametrisation theta (k-1, d+1) with class 0 at zero, (n, k)."""
    z = x @ theta[:, :-1].T + theta[:, -1]
    return torch.cat([torch.zeros(len(x), 1, dtype=z.dtype), z], 1)


def _unpack(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    zero = torch.zeros(1, theta.shape[1], dtype=theta.dtype)
    full = torch.cat([zero, theta])
    return full[:, :-1].contiguous(), full[:, -1].contiguous()


def check_budget(target: Target, query_budget: int | None, minimum: int, needs: Access, method: str) -> None:
    """CapabilityError if the target gives less than `needs`; BadInputError if the budget is below `minimum`."""
    if not target.access.allows(needs):
        raise CapabilityError(f"{method} needs {needs.value} access, but {target.describe()} gives less")
    if query_budget is not None and query_budget < minimum:
        raise BadInputError(
            f"{method}: a query budget of {query_budget} is below the {minimum} queries it needs for a model "
            f"of {math.prod(target.spec.shape)} features and {target.spec.num_classes} classes"
        )


def flat_bounds(spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds per flattened feature, float64 (d,)."""
    d = math.prod(spec.shape)
    lo, hi = (
        torch.as_tensor(b, dtype=torch.float64).flatten().expand(d).clone() for b in (spec.lower, spec.upper)
    )
    return lo, hi


def uniform(n: int, lo: torch.Tensor, hi: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n points uniform in the box, rounded to float32 (what the target will see), as float64."""
    u = torch.rand(n, len(lo), generator=generator, dtype=torch.float64)
    return (lo + u * (hi - lo)).float().double()


def as_input(x: torch.Tensor, spec: InputSpec, device: torch.device) -> torch.Tensor:
    """Flat float64 points as a batch the target takes: float32, in its sample shape, on its device."""
    return x.float().reshape(len(x), *spec.shape).to(device)


def linear_result(
    method: str, target: Target, before: int, access: Access, weight: torch.Tensor, bias: torch.Tensor
) -> ExtractionResult:
    """The extracted linear model, with the queries spent since the target's count stood at `before`."""
    return ExtractionResult(
        method=method,
        model=LinearModel(weight, bias),
        queries=target.queries.total - before,
        spec=target.spec,
        access=access,
        weight=weight,
        bias=bias,
    )
