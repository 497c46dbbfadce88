"""Attribute inference: recover a record's hidden sensitive attribute from the model's output.

The attacker knows a record except one discrete attribute, knows its label, and can query the model. For
each candidate value it fills the attribute in and reads how strongly the model supports the true label,
in logit space (log p_y - log sum of the others: a probability saturates at 1 for confident predictions and
would rank every candidate alike); the best-supported candidate, weighted by the candidates' prior, is the
guess (Fredrikson et al., USENIX Security 2014; Yeom et al., CSF 2018).

What matters is the gain over what the attacker could infer *without* the model (Jayaraman and Evans,
"Are Attribute Inference Attacks Just Imputation?", CCS 2022): the result carries the best of two
baselines that ignore the model, the most frequent value and k-nearest-neighbour imputation from the
other features and the label on the attacker's population data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.targets.base import Access, Target


@dataclass(frozen=True)
class AttributeResult:
    """Guesses for each record, and accuracies of the attack and of the baselines when the truth is given."""

    guesses: torch.Tensor  # index into `candidates` per record
    accuracy: float | None
    majority_accuracy: float | None
    imputation_accuracy: float | None
    queries: int

    @property
    def advantage(self) -> float | None:
        """Attack accuracy minus the best baseline's."""
        if self.accuracy is None or self.majority_accuracy is None or self.imputation_accuracy is None:
            return None
        return self.accuracy - max(self.majority_accuracy, self.imputation_accuracy)


def infer_attribute(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    feature: int,
    candidates: torch.Tensor,
    population_x: torch.Tensor,
    population_y: torch.Tensor,
    truth: torch.Tensor | None = None,
    k: int = 5,
) -> AttributeResult:
    """Guess the value of flat feature `feature` of each record (x with that feature unknown, y its label)
    among `candidates`, with `population_x/y` (records the attacker holds, attribute included) for the prior
    and the imputation baseline. With `truth` (candidate indices), accuracies are computed."""
    if not target.access.allows(Access.SCORES):
        raise CapabilityError(
            f"attribute inference needs class scores; {target.describe()} gives labels only"
        )
    flat = x.flatten(1)
    if not 0 <= feature < flat.shape[1]:
        raise BadInputError(f"feature must be in [0, {flat.shape[1]}), got {feature}")
    if len(candidates) < 2:
        raise BadInputError("attribute inference needs at least two candidate values")
    if len(population_x) < k or len(population_x) != len(population_y):
        raise DataError(f"the population needs at least k = {k} records with labels")
    population_values = nearest_candidate(population_x.flatten(1)[:, feature], candidates)
    prior = torch.bincount(population_values, minlength=len(candidates)).float() + 1.0
    before = target.queries.total
    support = []
    for value in candidates:
        filled = flat.clone()
        filled[:, feature] = value
        support.append(_logit_margin(target, filled.view_as(x), y))
    scores = torch.stack(support, 1) + (prior / prior.sum()).log()
    guesses = scores.argmax(1)
    queries = target.queries.total - before
    if truth is None:
        return AttributeResult(guesses, None, None, None, queries)
    majority = population_values.bincount(minlength=len(candidates)).argmax()
    imputed = _knn_impute(flat, y, population_x.flatten(1), population_y, population_values, feature, k)
    return AttributeResult(
        guesses,
        accuracy=float((guesses == truth).float().mean()),
        majority_accuracy=float((truth == majority).float().mean()),
        imputation_accuracy=float((imputed == truth).float().mean()),
        queries=queries,
    )


def _logit_margin(target: Target, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_y - log sum_{j != y} p_j, from logits when the target gives them (no saturation)."""
    scores = target.scores(x).double()
    log_p = scores.log_softmax(1) if target.score_kind == "logits" else scores.clamp_min(1e-300).log()
    own = log_p.gather(1, y[:, None]).squeeze(1)
    others = log_p.scatter(1, y[:, None], float("-inf")).logsumexp(1)
    return (own - others).float()


def nearest_candidate(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index of the candidate nearest to each value: how a record's true attribute is named."""
    return (values[:, None] - candidates[None, :].to(values)).abs().argmin(1)


def _knn_impute(flat: torch.Tensor, y: torch.Tensor, pop: torch.Tensor, pop_y: torch.Tensor,
                pop_values: torch.Tensor, feature: int, k: int) -> torch.Tensor:  # fmt: skip
    """The majority attribute value among the k population records nearest in the other features, with the
    same label (the baseline that uses everything the attacker knows except the model)."""
    keep = [i for i in range(flat.shape[1]) if i != feature]
    guesses = torch.empty(len(flat), dtype=torch.long)
    for label in y.unique():
        rows, pool = (y == label).nonzero().squeeze(1), (pop_y == label).nonzero().squeeze(1)
        if len(pool) == 0:
            pool = torch.arange(len(pop))
        nearest = (
            torch.cdist(flat[rows][:, keep], pop[pool][:, keep])
            .topk(min(k, len(pool)), largest=False)
            .indices
        )
        guesses[rows] = pop_values[pool][nearest].mode(1).values
    return guesses
