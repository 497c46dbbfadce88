"""An ensemble of attacks run as a cascade over increasing budgets (in the spirit of AutoAttack).

Each attack only works on the points every earlier attack left robust, and a point fooled at a smaller
budget counts as fooled at every larger one (its adversarial example lies inside the larger ball too),
so each budget only attacks what the previous budget left robust. The robust accuracy reported is the
per-sample worst case over all attacks, never higher than that of the strongest member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aisec.attacks.evasion.norms import Norm
from aisec.attacks.evasion.registry import ATTACKS
from aisec.attacks.evasion.result import EvasionResult
from aisec.core.errors import CapabilityError
from aisec.core.progress import NullProgress, Progress
from aisec.targets.base import Target

CLEAN_WRONG = -2  # `broken_by` code: misclassified without any attack
EARLIER_BUDGET = -3  # `broken_by` code: fooled at a smaller budget already
ROBUST = -1


@dataclass(frozen=True)
class BudgetOutcome:
    """The cascade's verdict at one budget.

    broken_by[i]: index of the attack that fooled sample i at this budget, or ROBUST, CLEAN_WRONG, EARLIER_BUDGET.
    queries[i]: for a fooled sample, the queries the cascade spent on it at the budget where it was first
    fooled (up to the success); for a robust one, the queries spent on it at this budget.
    """

    eps: float
    robust: torch.Tensor
    broken_by: torch.Tensor
    x_adv: torch.Tensor
    queries: torch.Tensor
    broken_per_attack: dict[str, int]

    @property
    def robust_count(self) -> int:
        return int(self.robust.sum())


@dataclass(frozen=True)
class CascadeResult:
    attacks: tuple[str, ...]
    norm: Norm
    clean_correct: torch.Tensor
    outcomes: tuple[BudgetOutcome, ...]


def run_cascade(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    budgets: Sequence[float],
    norm: Norm,
    attacks: Sequence[str],
    *,
    query_budget: int,
    generator: torch.Generator,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> CascadeResult:
    """Evaluate robustness at every budget (ascending) with the attacks in order; see the module docstring."""
    progress = progress or NullProgress()
    for name in attacks:
        if not target.access.allows(ATTACKS[name].needs):
            raise CapabilityError(
                f"{name} needs {ATTACKS[name].needs.value} access; {target.describe()} gives less"
            )
    x = x.to(target.device)
    y = y.to(target.device)
    with torch.no_grad():
        clean_pred = torch.cat([target.labels(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    clean_correct = clean_pred == y
    robust = clean_correct.clone()
    best = x.clone()
    queries = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    outcomes = []
    for eps in sorted(budgets):
        queries[robust] = 0
        broken_by = torch.where(
            clean_correct, torch.full_like(y, EARLIER_BUDGET), torch.full_like(y, CLEAN_WRONG)
        )
        broken_by[robust] = ROBUST
        counts = {}
        with progress.task(f"{norm} eps={eps:g}: cascade of {len(attacks)}", total=len(attacks)) as task:
            for k, name in enumerate(attacks):
                todo = robust.nonzero().squeeze(1)
                if len(todo):
                    result = _attack_in_batches(
                        target, x[todo], y[todo], eps, norm, name, query_budget, generator, batch_size
                    )
                    queries[todo] += result.queries
                    fooled = result.success & _verified(target, x[todo], y[todo], result, eps, batch_size)
                    hit = todo[fooled]
                    best[hit] = result.x_adv[fooled]
                    robust[hit] = False
                    broken_by[hit] = k
                counts[name] = int((broken_by == k).sum())
                task.advance()
        outcomes.append(BudgetOutcome(eps, robust.clone(), broken_by, best.clone(), queries.clone(), counts))
    return CascadeResult(tuple(attacks), norm, clean_correct, tuple(outcomes))


def _verified(
    target: Target, x: torch.Tensor, y: torch.Tensor, result: EvasionResult, eps: float, batch_size: int
) -> torch.Tensor:
    """Re-check every claimed success with the model and the budget, so that no attack's bookkeeping error
    (or a model that answers differently twice) can lower the robust accuracy reported."""
    from aisec.attacks.evasion.norms import batch_norm

    ok = torch.zeros_like(result.success)
    idx = result.success.nonzero().squeeze(1)
    for i in range(0, len(idx), batch_size):
        j = idx[i : i + batch_size]
        with torch.no_grad():
            wrong = target.labels(result.x_adv[j]) != y[j]
        inside = batch_norm(result.x_adv[j] - x[j], result.norm_kind) <= eps * (1 + 1e-5) + 1e-7
        ok[j] = wrong & inside
    return ok


def _attack_in_batches(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Norm,
    name: str,
    query_budget: int,
    generator: torch.Generator,
    batch_size: int,
) -> EvasionResult:
    run = ATTACKS[name].run
    parts = [
        run(target, x[i : i + batch_size], y[i : i + batch_size], eps, norm, query_budget, generator)
        for i in range(0, len(x), batch_size)
    ]
    return EvasionResult.concat(parts)
