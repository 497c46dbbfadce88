"""White-box target over a torch `nn.Module`."""

from __future__ import annotations

import torch
from torch import nn

from aisec.targets.base import Access, InputSpec, WhiteBoxTarget


class TorchTarget(WhiteBoxTarget):
    """A torch classifier returning logits, attacked with full knowledge.

    The module is put in eval mode. Attacks differentiate with `torch.autograd.grad` with respect to the
    input only, so no gradient is ever computed or stored for the weights (ART's `loss_gradient` pays for
    them on every step).
    """

    def __init__(
        self, module: nn.Module, spec: InputSpec, *, device: str | torch.device | None = None
    ) -> None:
        super().__init__(spec, Access.WHITE_BOX)
        if device is None:
            first = next(module.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self._device = torch.device(device)
        self.module = module.to(self._device).eval()

    @property
    def device(self) -> torch.device:
        return self._device

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
