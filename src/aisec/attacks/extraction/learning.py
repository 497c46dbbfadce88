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
  Networks", USENIX Security 2020, and in the spirit of Knockoff Nets' adaptive policy);
- "perturbation": Jacobian-based data augmentation (Papernot, McDaniel, Goodfellow, Jha, Celik and Swami,
  "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017): a seed set of the attacker's natural
  data is queried and the surrogate trained on it; each later round steps every point queried so far by
  lambda = `step` times the input range along the sign of the surrogate's gradient of the logit of the
  victim's class y(x), x +- lambda sign(d F[y(x)] / dx), clipped to the bounds, queries the new points and
  retrains. The sign is the periodic step size of the authors' CleverHans tutorial (mnist_blackbox.py): away
  from the victim's class (-) for `period` rounds, then towards it (+) for `period` rounds, and so on
  (stepping towards it in every round fell below uniform synthetic queries on the digits CNN: docs/privacy.md).
  With `perturbation="random"`, each step instead heads for a class drawn at random among the others, along
  the sign of the gradient of the surrogate's log-probability of that class (T-RND, Juuti, Szyller, Marchal
  and Asokan, "PRADA: Protecting Against DNN Model Stealing Attacks", EuroS&P 2019). Only the surrogate's
  gradients are used: the victim stays a black box. The seed round and each of the `rounds` rounds may spend
  an equal share of the queries left; a round perturbs a random sample of the points queried so far when they
  outnumber its share, all of them otherwise (so a small seed set doubles each round, as in the paper), and
  leaves what it did not spend to the later rounds. The last round spends all that is left, stepping on from
  the points it has just made while queries remain.

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

Source = Literal["natural", "synthetic", "active", "perturbation"]
SOURCES: tuple[Source, ...] = ("natural", "synthetic", "active", "perturbation")


@dataclass(frozen=True)
class LearningConfig:
    """source: where queries come from (see the module); synthetic: the distribution of synthetic points;
    rounds: active rounds, each spending an equal share of the budget, or perturbation rounds after the seed
    round; candidates: synthetic candidates per query an active round buys (without a pool); perturbation:
    "jacobian" (Papernot et al.) or "random" (a random target class, Juuti et al.'s T-RND); step: lambda, the
    perturbation step as a fraction of the input range; period: "jacobian" rounds between flips of the step's
    sign (at least `rounds` to step away from the victim's class throughout); epochs, lr, batch_size: Adam
    training of the surrogate after each round (warm-started); labels_only: train on hard labels even when the
    victim gives scores."""

    source: Source = "synthetic"
    synthetic: Literal["uniform", "gaussian"] = "uniform"
    rounds: int = 5
    candidates: int = 20
    perturbation: Literal["jacobian", "random"] = "jacobian"
    step: float = 0.1
    period: int = 3
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
    victim's answers to at most `query_budget` queries (all of them unless "natural" data runs out).

    `data` (inputs of the target's sample shape within its bounds; any labels are ignored) is the attacker's
    natural data: the queries of "natural" (all of it when the budget exceeds it), the candidate pool of
    "active" and the seed set of "perturbation" (a random sample of an equal share of the budget when it is
    larger). Everything is checked before the first query.
    """
    config = config or LearningConfig()
    spec = target.spec
    pool = _checked(target, query_budget, config, data)
    use_scores = target.access.allows(Access.SCORES) and not config.labels_only
    generator = generator or torch.Generator().manual_seed(0)
    if surrogate is None:
        surrogate = build_model(functools.partial(default_surrogate, spec), draw_seed(generator))
    before = target.queries.total
    ledger = _Ledger(target, use_scores)
    training = TrainingConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
    if config.source == "perturbation":
        assert pool is not None  # _checked refuses perturbation queries without data
        _augment(surrogate, pool, query_budget, config, ledger, training, generator)
    else:
        _sample(surrogate, pool, query_budget, config, ledger, training, generator)
    return ExtractionResult(
        method=f"learning/{config.source}",
        model=surrogate.eval(),
        queries=target.queries.total - before,
        spec=spec,
        access=Access.SCORES if use_scores else Access.LABELS,
    )


def _sample(
    surrogate: nn.Module,
    pool: torch.Tensor | None,
    query_budget: int,
    config: LearningConfig,
    ledger: _Ledger,
    training: TrainingConfig,
    generator: torch.Generator,
) -> None:
    """Natural, synthetic or active queries (see the module), in equal shares of the budget, the surrogate
    retrained after each round."""
    spec = ledger.target.spec
    rounds = config.rounds if config.source == "active" else 1
    budget = min(query_budget, len(pool)) if config.source == "natural" and pool is not None else query_budget
    queried = torch.zeros(0 if pool is None else len(pool), dtype=torch.bool)
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
        ledger.ask(x)
        train(surrogate, ledger.examples(), training, generator=generator)


def _checked(
    target: Target, query_budget: int, config: LearningConfig, data: torch.Tensor | LabelledData | None
) -> torch.Tensor | None:
    """The attacker's data as a float32 CPU tensor (None without it), or BadInputError naming what is wrong."""
    if config.source not in SOURCES:
        raise BadInputError(f"unknown query source {config.source!r}; choose one of {', '.join(SOURCES)}")
    if config.synthetic not in ("uniform", "gaussian"):
        raise BadInputError(f"synthetic must be 'uniform' or 'gaussian', got {config.synthetic!r}")
    for name in ("rounds", "candidates", "period", "epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise BadInputError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if not config.lr > 0:
        raise BadInputError(f"lr must be positive, got {config.lr}")
    if config.perturbation not in ("jacobian", "random"):
        raise BadInputError(f"perturbation must be 'jacobian' or 'random', got {config.perturbation!r}")
    if not 0 < config.step <= 1:
        raise BadInputError(f"step must be in (0, 1] (a fraction of the input range), got {config.step}")
    rounds = {"active": config.rounds, "perturbation": config.rounds + 1}.get(config.source, 1)
    if query_budget < rounds:
        raise BadInputError(
            f"a query budget of {query_budget} cannot pay for {rounds} round(s) of {config.source} queries"
        )
    if data is None:
        if config.source in ("natural", "perturbation"):
            raise BadInputError(f"{config.source} queries need the attacker's data (data=...)")
        return None
    x = (data.x if isinstance(data, LabelledData) else torch.as_tensor(data)).detach().cpu().float()
    target.spec.check(x, what="the attacker's data")
    if len(x) == 0 and config.source in ("natural", "perturbation"):
        raise BadInputError(f"the attacker's data (data=...) for {config.source} queries is empty")
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


class _Ledger:
    """The queries asked so far and the victim's answers (probabilities or labels)."""

    def __init__(self, target: Target, scores: bool) -> None:
        self.target, self.scores = target, scores
        self.xs: list[torch.Tensor] = []
        self.answers: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def ask(self, x: torch.Tensor) -> torch.Tensor:
        """Query the victim on x (a CPU batch); the labels it gives (the most probable class, with scores)."""
        self.xs.append(x)
        xd = x.to(self.target.device)
        answer = (self.target.probabilities(xd) if self.scores else self.target.labels(xd)).cpu()
        self.answers.append(answer)
        self.labels.append(answer.argmax(1) if self.scores else answer)
        return self.labels[-1]

    def examples(self) -> _Answers:
        return _Answers(torch.cat(self.xs), torch.cat(self.answers))


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


def _augment(
    surrogate: nn.Module,
    data: torch.Tensor,
    budget: int,
    config: LearningConfig,
    ledger: _Ledger,
    training: TrainingConfig,
    generator: torch.Generator,
) -> None:
    """Jacobian-based data augmentation (see the module): the seed round, then `config.rounds` rounds of
    perturbed points, the surrogate retrained after each; exactly `budget` queries in all."""
    seeds = data[torch.randperm(len(data), generator=generator)[: budget // (config.rounds + 1)]]
    ledger.ask(seeds)
    train(surrogate, ledger.examples(), training, generator=generator)
    spent = len(seeds)
    for r in range(config.rounds):
        left = budget - spent
        share = left if r == config.rounds - 1 else min(spent, left // (config.rounds - r))
        x, y = torch.cat(ledger.xs), torch.cat(ledger.labels)
        direction = 1.0 if (r // config.period) % 2 else -1.0
        while share > 0:  # more than once only in the last round, stepping on from the points just made
            if len(x) > share:
                keep = torch.randperm(len(x), generator=generator)[:share]
                x, y = x[keep], y[keep]
            x = _perturbed(surrogate, x, y, direction, config, ledger.target.spec, generator)
            y = ledger.ask(x)
            share, spent = share - len(x), spent + len(x)
        train(surrogate, ledger.examples(), training, generator=generator)


def _perturbed(
    surrogate: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: float,
    config: LearningConfig,
    spec: InputSpec,
    generator: torch.Generator,
) -> torch.Tensor:
    """x + direction step (hi - lo) sign(g), clipped to the bounds, where g is the gradient of the surrogate's
    logit of the victim's class y ("jacobian"); or x + step (hi - lo) sign(g) for g the gradient of its
    log-probability of a class drawn among the others ("random")."""
    device = next(surrogate.parameters()).device
    surrogate.eval()
    xd = x.to(device).detach().requires_grad_(True)
    out = surrogate(xd)
    if config.perturbation == "random":
        classes = spec.num_classes
        y = (y + torch.randint(1, classes, y.shape, generator=generator)) % classes
        out, direction = out.log_softmax(1), 1.0
    (gradient,) = torch.autograd.grad(out.gather(1, y.to(device)[:, None]).sum(), xd)
    lo, hi = spec.bounds(x)
    moved = x + direction * config.step * (hi - lo) * gradient.sign().cpu()
    return torch.max(torch.min(moved, hi), lo)
