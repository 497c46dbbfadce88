"""Per-sample attack losses over logits (all to be maximised by the attacker)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target_labels: torch.Tensor | None) -> torch.Tensor:
    """Untargeted: CE of the true class (ascend). Targeted: minus CE of the target class."""
    if target_labels is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target_labels, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor, target_labels: torch.Tensor | None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein, ICML 2020), invariant to shifting and scaling the logits.

    Untargeted: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3); targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2),
    with z_pi the logits sorted in decreasing order. Needs at least 3 classes (4 for targeted).
    """
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target_labels is None:
        others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return -(z_y - others) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)
    z_t = logits.gather(1, target_labels[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def margin(scores: torch.Tensor, y: torch.Tensor, target_labels: torch.Tensor | None) -> torch.Tensor:
    """Margin to the decision boundary; the attack succeeds when it is > 0.

    Untargeted: max_{i!=y} s_i - s_y. Targeted: s_t - max_{i!=t} s_i. Works on logits or probabilities.
    """
    cls = y if target_labels is None else target_labels
    s_c = scores.gather(1, cls[:, None]).squeeze(1)
    others = scores.scatter(1, cls[:, None], float("-inf")).amax(1)
    return others - s_c if target_labels is None else s_c - others


LOSSES = {"ce": cross_entropy, "dlr": dlr}


def is_success(pred: torch.Tensor, y: torch.Tensor, target_labels: torch.Tensor | None) -> torch.Tensor:
    """The attacker's goal: a wrong label (untargeted) or the target label (targeted)."""
    return pred != y if target_labels is None else pred == target_labels
