"""The typed result every evasion attack returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.norms import Norm, batch_norm, rows


@dataclass(frozen=True)
class EvasionResult:
    """Per-sample outcome of an evasion attack on a batch.

    x_adv:    the adversarial input where `success`, the original input elsewhere
    success:  bool (n,): the model's answer on x_adv is wrong (untargeted) or the target class (targeted)
    norm:     float (n,): size of x_adv - x in `norm_kind` (0 where the attack failed)
    queries:  int64 (n,): model evaluations spent on each sample, up to its first success
              (white-box attacks count one forward and backward pass as one query)
    """

    attack: str
    x_adv: torch.Tensor
    success: torch.Tensor
    norm: torch.Tensor
    queries: torch.Tensor
    norm_kind: Norm
    eps: float | None
    targeted: bool

    def __len__(self) -> int:
        return len(self.success)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else 0.0

    @staticmethod
    def concat(parts: list[EvasionResult]) -> EvasionResult:
        """Join results of the same attack run over consecutive batches."""
        first = parts[0]
        return EvasionResult(
            attack=first.attack,
            x_adv=torch.cat([p.x_adv for p in parts]),
            success=torch.cat([p.success for p in parts]),
            norm=torch.cat([p.norm for p in parts]),
            queries=torch.cat([p.queries for p in parts]),
            norm_kind=first.norm_kind,
            eps=first.eps,
            targeted=first.targeted,
        )


def finish(
    attack: str,
    x: torch.Tensor,
    best: torch.Tensor,
    success: torch.Tensor,
    queries: torch.Tensor,
    norm_kind: Norm,
    eps: float | None,
    targeted: bool,
) -> EvasionResult:
    """Build a result: originals where the attack failed, norms measured on what is returned."""
    mask = rows(success, x)
    x_adv = torch.where(mask, best, x).detach()
    return EvasionResult(
        attack=attack,
        x_adv=x_adv,
        success=success.detach().clone(),
        norm=batch_norm(x_adv - x, norm_kind).detach(),
        queries=queries.detach().clone(),
        norm_kind=norm_kind,
        eps=eps,
        targeted=targeted,
    )
