"""Learning-based extraction: a surrogate trained on the victim's answers to the attacker's queries.

Where the queries come from (`LearningConfig.source`):

- "natural": samples of a data set the attacker holds, which may come from another distribution than the
  victim's training data (Orekondy, Schiele and Fritz, "Knockoff Nets: Stealing Functionality of Black-Box
  Models", CVPR 2019);
- "synthetic": points drawn uniformly, or from a Gaussian about the centre, within the input bounds: no data at
  all (the random queries of Tramer et al., USENIX Security 2016, section 5);
- "active": rounds of queries chosen where the current surrogate is least certain (the smallest margin between
  its two most probable classes), from the attacker's unlabelled pool when one is given, else from synthetic
  candidates; the first round is drawn at random (uncertainty sampling, one of the active-learning strategies of
  Jagielski, Carlini, Berthelot, Kurakin and Papernot, "High Accuracy and High Fidelity Extraction of Neural
  Networks", USENIX Security 2020, and in the spirit of Knockoff Nets' adaptive policy).

With scores the surrogate learns the victim's probabilities (cross-entropy to the soft labels, which is the KL
divergence up to a constant); with labels only, or `labels_only`, the hard labels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from aisec.attacks.extraction.result import ExtractionResult
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model, draw_seed
from aisec.core.training import TrainingConfig, train
from aisec.data.dataset import LabelledData
from aisec.targets.base import Access, InputSpec, Target

Source = Literal["natural", "synthetic", "active"]
SOURCES: tuple[Source, ...] = ("natural", "synthetic", "active")


@dataclass(frozen=True)
class LearningConfig:
    """source: where queries come from (see the module); synthetic: the distribution of synthetic points;
    rounds: active rounds, each spending an equal share of the budget; candidates: synthetic candidates per query
    an active round buys (without a pool); epochs, lr, batch_size: Adam training of the surrogate after each
    round (warm-started); labels_only: train on hard labels even when the victim gives scores."""

    source: Source = "synthetic"
    synthetic: Literal["uniform", "gaussian"] = "uniform"
    rounds: int = 5
    candidates: int = 20
    epochs: int = 60
    lr: float = 1e-2
    batch_size: int = 64
    labels_only: bool = False


def default_surrogate(spec: InputSpec, hidden: int = 128) -> nn.Module:
    """A small MLP over the flattened input: d -> hidden -> ReLU -> num_classes logits."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(spec.shape), hidden), nn.ReLU(), nn.Linear(hidden, spec.num_classes)
    )


def extract_surrogate(
    target: Target,
    query_budget: int,
    config: LearningConfig | None = None,
    *,
    data: torch.Tensor | LabelledData | None = None,
    surrogate: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> ExtractionResult:
    """Train `surrogate` (by default `default_surrogate(target.spec)`, initialised from `generator`) on the
    victim's answers to at most `query_budget` queries.

    `data` (inputs of the target's sample shape within its bounds; any labels are ignored) is the attacker's
    natural data: the queries of "natural" (all of it when the budget exceeds it) and the candidate pool of
    "active". Everything is checked before the first query.
    """
    config = config or LearningConfig()
    spec = target.spec
    pool = _checked(target, query_budget, config, data)
    use_scores = target.access.allows(Access.SCORES) and not config.labels_only
    generator = generator or torch.Generator().manual_seed(0)
    if surrogate is None:
        surrogate = build_model(functools.partial(default_surrogate, spec), draw_seed(generator))
    before = target.queries.total
    rounds = config.rounds if config.source == "active" else 1
    budget = min(query_budget, len(pool)) if config.source == "natural" and pool is not None else query_budget
    queried = torch.zeros(0 if pool is None else len(pool), dtype=torch.bool)
    xs: list[torch.Tensor] = []
    answers: list[torch.Tensor] = []
    for r in range(rounds):
        n = budget * (r + 1) // rounds - budget * r // rounds
        if config.source == "synthetic":
            x = _synthetic(n, spec, config, generator)
        elif config.source == "natural":
            assert pool is not None  # _checked refuses natural queries without data
            x = pool[torch.randperm(len(pool), generator=generator)[:n]]
        elif pool is None:
            candidates = _synthetic(config.candidates * n, spec, config, generator)
            x = candidates[_choose(surrogate, candidates, n, r == 0, generator)]
        else:
            free = (~queried).nonzero().flatten()
            chosen = free[_choose(surrogate, pool[free], n, r == 0, generator)]
            queried[chosen] = True
            x = pool[chosen]
        xs.append(x)
        x = x.to(target.device)
        answers.append((target.probabilities(x) if use_scores else target.labels(x)).cpu())
        training = TrainingConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
        train(surrogate, _Answers(torch.cat(xs), torch.cat(answers)), training, generator=generator)
    return ExtractionResult(
        method=f"learning/{config.source}",
        model=surrogate.eval(),
        queries=target.queries.total - before,
        spec=spec,
        access=Access.SCORES if use_scores else Access.LABELS,
    )


def _checked(
    target: Target, query_budget: int, config: LearningConfig, data: torch.Tensor | LabelledData | None
) -> torch.Tensor | None:
    """The attacker's data as a float32 CPU tensor (None without it), or BadInputError naming what is wrong."""
    if config.source not in SOURCES:
        raise BadInputError(f"unknown query source {config.source!r}; choose one of {', '.join(SOURCES)}")
    if config.synthetic not in ("uniform", "gaussian"):
        raise BadInputError(f"synthetic must be 'uniform' or 'gaussian', got {config.synthetic!r}")
    for name in ("rounds", "candidates", "epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise BadInputError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if not config.lr > 0:
        raise BadInputError(f"lr must be positive, got {config.lr}")
    rounds = config.rounds if config.source == "active" else 1
    if query_budget < rounds:
        raise BadInputError(
            f"a query budget of {query_budget} cannot pay for {rounds} round(s) of {config.source} queries"
        )
    if data is None:
        if config.source == "natural":
            raise BadInputError("natural queries need the attacker's data (data=...)")
        return None
    x = (data.x if isinstance(data, LabelledData) else torch.as_tensor(data)).detach().cpu().float()
    target.spec.check(x, what="the attacker's data")
    if config.source == "active" and len(x) < query_budget:
        raise BadInputError(
            f"an active pool of {len(x)} points cannot pay out a query budget of {query_budget}"
        )
    return x


def _synthetic(
    n: int, spec: InputSpec, config: LearningConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """n points within the input bounds: uniform, or Gaussian about the centre (sd a quarter of the range) clipped."""
    like = torch.empty(n, *spec.shape)
    lo, hi = spec.bounds(like)
    if config.synthetic == "uniform":
        return lo + (hi - lo) * torch.rand(like.shape, generator=generator)
    x = (lo + hi) / 2 + (hi - lo) / 4 * torch.randn(like.shape, generator=generator)
    return torch.max(torch.min(x, hi), lo)


@dataclass(frozen=True)
class _Answers:
    """The queries and the victim's answers (probabilities or labels), as the training loop takes them."""

    x: torch.Tensor
    y: torch.Tensor


def _choose(
    surrogate: nn.Module, candidates: torch.Tensor, n: int, first: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices of n candidates: at random in the first round, then those with the smallest margin between the
    surrogate's two most probable classes."""
    if first:
        return torch.randperm(len(candidates), generator=generator)[:n]
    surrogate.eval()
    with torch.no_grad():
        top2 = surrogate(candidates).softmax(1).topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]).topk(n, largest=False).indices
