"""How good an extraction is: fidelity to the victim, accuracy, parameter error, and transfer of attacks.

- `agreement`: the share of held-out inputs on which the extracted model and the victim give the same label (the
  fidelity of Jagielski et al., USENIX Security 2020; Tramer et al. 2016 call 1 - agreement the test error
  R_test).
- `accuracy`: the extracted model's accuracy on labelled data.
- `parameter_error`: for an extracted linear model, the relative error of its parameters in the identifiable
  form (rows minus row 0; from labels, also up to the best positive scale).
- `transfer_rate`: adversarial examples crafted with PGD on the surrogate (white box, no victim query), and the
  share of those that fool the surrogate which also fool the victim (Papernot, McDaniel, Goodfellow, Jha,
  Celik and Swami, "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.attacks.extraction.result import ExtractionResult
from aisec.core.errors import BadInputError
from aisec.data.dataset import LabelledData
from aisec.targets.base import Access, Target
from aisec.targets.torch_target import TorchTarget


def agreement(result: ExtractionResult, target: Target, x: torch.Tensor) -> float:
    """Share of `x` on which the extracted model predicts the victim's label (spends len(x) victim queries)."""
    x = x.to(torch.float32)
    return float((result.labels(x) == target.labels(x.to(target.device)).cpu()).float().mean())


def accuracy(result: ExtractionResult, data: LabelledData) -> float:
    """The extracted model's accuracy on `data` (no victim query)."""
    return float((result.labels(data.x.float()) == data.y).float().mean())


def parameter_error(result: ExtractionResult, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """||theta_hat - theta|| / ||theta|| over (weight | bias), each with row 0 subtracted (softmax ignores a shift
    shared by all rows). `weight` is (num_classes, d), or (1, d) for a binary model whose logits are [0, w x + b]
    (scikit-learn's binary coef_). From labels only the scale is not identifiable: the extracted parameters are
    first multiplied by the positive scale that fits the true ones best."""
    if result.weight is None or result.bias is None:
        raise BadInputError(f"{result.method} extracted no linear model; the parameter error needs one")
    true = _identifiable(torch.as_tensor(weight), torch.as_tensor(bias))
    got = _identifiable(result.weight, result.bias)
    if true.shape != got.shape:
        raise BadInputError(
            f"the true parameters have shape {tuple(true.shape)}, the extracted {tuple(got.shape)}"
        )
    if result.access is Access.LABELS:
        got = got * (got * true).sum() / (got * got).sum().clamp_min(1e-300)
    return float((got - true).norm() / true.norm())


def _identifiable(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    theta = torch.cat([weight.double().flatten(1), bias.double().reshape(-1, 1)], 1)
    if len(theta) == 1:
        theta = torch.cat([torch.zeros_like(theta), theta])
    return theta - theta[:1]


@dataclass(frozen=True)
class TransferResult:
    """attacked: inputs both models classify correctly; fooled_surrogate: PGD examples that fool the surrogate;
    transferred: those of them that also fool the victim; rate = transferred / fooled_surrogate."""

    eps: float
    attacked: int
    fooled_surrogate: int
    transferred: int

    @property
    def rate(self) -> float:
        return self.transferred / self.fooled_surrogate if self.fooled_surrogate else 0.0


def transfer_rate(
    result: ExtractionResult,
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    config: PGDConfig | None = None,
    generator: torch.Generator | None = None,
) -> TransferResult:
    """Untargeted L-inf PGD at `eps` on the surrogate (`config`, by default 40 steps with a random start) from the
    inputs that both the surrogate and the victim classify correctly; the victim sees the clean inputs and the
    examples that fool the surrogate (len(x) + fooled_surrogate queries). PGD keeps its first iterate that fools
    the surrogate, just across its boundary, so the rate is a floor for attacks that push further."""
    config = config or PGDConfig(eps=eps, norm="linf")
    if config.eps != eps or config.norm != "linf":
        raise BadInputError(
            f"the PGD config must be L-inf at eps={eps}, got {config.norm} at eps={config.eps}"
        )
    x, y = x.to(torch.float32), torch.as_tensor(y, dtype=torch.int64)
    correct = (result.labels(x) == y) & (target.labels(x.to(target.device)).cpu() == y)
    x, y = x[correct], y[correct]
    if not len(x):
        return TransferResult(eps, 0, 0, 0)
    surrogate = TorchTarget(result.model, result.spec, device="cpu")
    attack = pgd(surrogate, x, y, config, generator=generator)
    fooled = attack.x_adv[attack.success]
    transferred = (
        int((target.labels(fooled.to(target.device)).cpu() != y[attack.success]).sum()) if len(fooled) else 0
    )
    return TransferResult(eps, len(x), len(fooled), transferred)
