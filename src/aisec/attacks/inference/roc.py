"""ROC curve, AUC and true-positive rate at low false-positive rates of a membership score.

Carlini et al. ("Membership Inference Attacks From First Principles", IEEE S&P 2022) argue that an attack is
judged by its TPR at a low FPR (0.1 %, 1 %), read off a ROC curve on log-log axes, not by its AUC or accuracy:
an attack that confidently identifies a few members is a privacy breach even when its average-case figures
are near chance. Conventions: a record is called a member when its score is >= the threshold; the TPR at an
FPR of alpha is that of the operating point with the lowest threshold whose FPR is <= alpha (a step function,
never interpolated between points, so it is never optimistic). With n non-members the smallest FPR above 0 is
1/n: below it, the figure is the fraction of members scored above every non-member. (Carlini et al.'s code
reads the last point with FPR < alpha; the two agree unless alpha * n is a whole number.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aisec.core.errors import DataError


@dataclass(frozen=True)
class Roc:
    """Operating points of a score, by decreasing threshold, from (0, 0) to (1, 1)."""

    fpr: torch.Tensor  # float64, non-decreasing
    tpr: torch.Tensor  # float64, non-decreasing
    thresholds: torch.Tensor  # score >= threshold is called a member; the first is +inf
    positives: int
    negatives: int

    @property
    def auc(self) -> float:
        """Area under the curve (ties between a member and a non-member count one half)."""
        return float(torch.trapezoid(self.tpr, self.fpr))

    def tpr_at(self, fpr: float) -> float:
        """TPR of the operating point with the lowest threshold whose FPR is <= `fpr`."""
        return float(self.tpr[self.fpr <= fpr].max())


def roc_curve(scores: torch.Tensor, members: torch.Tensor) -> Roc:
    """The ROC curve of `scores` (higher = member) against the truth `members` (bool), one point per distinct
    score."""
    scores, members = scores.detach().double().flatten().cpu(), members.detach().bool().flatten().cpu()
    if len(scores) != len(members):
        raise DataError(f"{len(scores)} scores but {len(members)} membership labels")
    if torch.isnan(scores).any():
        raise DataError(f"{int(torch.isnan(scores).sum())} membership score(s) are NaN")
    positives = int(members.sum())
    negatives = len(members) - positives
    if positives == 0 or negatives == 0:
        raise DataError(f"a ROC curve needs members and non-members, got {positives} and {negatives}")
    order = scores.argsort(descending=True, stable=True)
    ranked, truth = scores[order], members[order]
    last = torch.ones_like(truth)  # last record of each group of equal scores: one operating point per group
    last[:-1] = ranked[1:] != ranked[:-1]
    tp = truth.double().cumsum(0)[last]
    fp = (~truth).double().cumsum(0)[last]
    zero = torch.zeros(1, dtype=torch.float64)
    return Roc(
        fpr=torch.cat([zero, fp / negatives]),
        tpr=torch.cat([zero, tp / positives]),
        thresholds=torch.cat([torch.full((1,), math.inf, dtype=torch.float64), ranked[last]]),
        positives=positives,
        negatives=negatives,
    )
