"""Output hardening: what a hardened API returns, and that it refuses what it cannot provide."""

from __future__ import annotations

import pytest
import torch

from aisec.core.errors import BadInputError, CapabilityError
from aisec.defend.robustness.output_hardening import harden
from aisec.targets.base import Access
from aisec.targets.views import label_only


def test_top_k_rounding_and_labels(digits_target):
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = digits_target.probabilities(x)
    top2 = harden(digits_target, top_k=2).scores(x)
    assert ((top2 > 0).sum(1) <= 2).all()
    assert torch.equal(top2.argmax(1), exact.argmax(1))
    rounded = harden(digits_target, decimals=2).probabilities(x)
    assert torch.allclose(rounded, exact, atol=0.005 + 1e-6)
    assert torch.allclose(rounded * 100, (rounded * 100).round(), atol=1e-4)  # two decimals, in float32
    hidden = harden(digits_target, label_only=True)
    assert hidden.access is Access.LABELS
    assert torch.equal(hidden.labels(x), exact.argmax(1))
    with pytest.raises(CapabilityError):
        hidden.scores(x)


def test_queries_count_on_both(digits_target):
    wrapped = harden(digits_target, decimals=3)
    wrapped.scores(torch.rand(7, 1, 8, 8))
    assert wrapped.queries.total == 7 and digits_target.queries.total == 7


def test_bad_settings(digits_target):
    with pytest.raises(BadInputError, match="top_k"):
        harden(digits_target, top_k=11)
    with pytest.raises(BadInputError, match="decimals"):
        harden(digits_target, decimals=-1)
    with pytest.raises(BadInputError, match="no scores"):
        harden(label_only(digits_target), decimals=2)
