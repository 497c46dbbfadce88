"""Membership inference: was a record in the model's training set?

Three attacks, from cheapest to strongest at low false-positive rates, all reading the target's class scores
in logit space (`scores.logit_score`; a float32 loss ties every confident member at 0):

- `loss_threshold_attack`: one global threshold on the loss (Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk
  in Machine Learning: Analyzing the Connection to Overfitting", IEEE CSF 2018), or on the top confidence.
- `lira`: the Likelihood Ratio Attack (Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference
  Attacks From First Principles", IEEE S&P 2022). Shadow models trained on random subsets (halves in the
  paper) of data the attacker holds give, per record, the distribution of its score when the record is in
  (IN) and out of (OUT) the training set; each is fitted with a Gaussian and the target's score is tested
  against them.
- `rmia`: Robust Membership Inference Attack (Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power
  Membership Inference Attacks", ICML 2024): compares the likelihood ratio Pr(x|theta)/Pr(x) of the record
  with that of population records z; strong with few shadow (reference) models.

Shadow models are independent jobs: `train_shadows` runs them through a `TaskRunner` (aisec.core.tasks: in this
process by default, a process pool or a Ray cluster for more, with a cache that lets a rerun resume). Every score-based entry point raises CapabilityError before any work
when the target gives labels only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from aisec.attacks.inference.roc import Roc, roc_curve
from aisec.attacks.inference.scores import TINY_PROBABILITY, logit_score
from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.core.seeding import build_model
from aisec.core.tasks import TaskRunner
from aisec.core.training import evaluating
from aisec.data.dataset import LabelledData
from aisec.targets.base import Access, ScoreKind, Target

LOW_FPRS = (0.001, 0.01)  # the operating points Carlini et al. report
# LiRA fits one variance shared by all records below this many shadow models (Carlini et al.: per-record
# variances need many models; with fewer than 64 a global variance is the better estimate).
PER_EXAMPLE_VARIANCE_FROM = 64
_MIN_VARIANCE = 1e-8
# RMIA's calibration tries these offline coefficients `a` and softmax temperatures.
_A_GRID = tuple(i / 10 for i in range(11))
_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class MembershipResult:
    """Scores of one attack (higher = more likely a member) and, when the truth is known, its ROC."""

    attack: str
    scores: torch.Tensor  # float64, (n,)
    members: torch.Tensor | None  # bool (n,): the truth, when given
    roc: Roc | None
    shadows: int  # shadow (reference) models used
    queries: int  # samples the target evaluated

    @property
    def auc(self) -> float | None:
        return None if self.roc is None else self.roc.auc

    @property
    def tpr_at(self) -> dict[float, float]:
        """TPR at each of LOW_FPRS (empty without the truth)."""
        return {} if self.roc is None else {fpr: self.roc.tpr_at(fpr) for fpr in LOW_FPRS}


@dataclass(frozen=True)
class ShadowTrainer:
    """The attacker's copy of the victim's training recipe: `model_fn()` builds an untrained model and
    `fit(model, data, seed=...)` trains it and returns it. Both must be picklable (top-level functions or
    `functools.partial` of them) so that any executor can run them in another process."""

    model_fn: Callable[[], nn.Module]
    fit: Callable[..., nn.Module]


@dataclass(frozen=True)
class ShadowJob:
    """Train one shadow model on `data` with `seed`, then return its logits on `inputs`."""

    trainer: ShadowTrainer
    data: LabelledData
    inputs: torch.Tensor
    seed: int
    device: str = "cpu"


def train_shadow(job: ShadowJob) -> torch.Tensor:
    """Run one ShadowJob (top-level, so that executors can pickle it): logits (len(inputs), classes) on the CPU."""
    model = build_model(job.trainer.model_fn, job.seed).to(job.device)
    model = job.trainer.fit(model, job.data, seed=job.seed)
    with evaluating(model), torch.no_grad():
        return model(job.inputs.to(job.device)).float().cpu()


@dataclass(frozen=True)
class ShadowModels:
    """Logits of each shadow model on the records under attack and on the attacker's population records,
    and which of them each shadow model was trained on."""

    logits: torch.Tensor  # (shadows, n, classes)
    members: torch.Tensor  # bool (shadows, n): record i was in shadow s's training set
    population: LabelledData | None
    population_logits: torch.Tensor | None  # (shadows, m, classes)
    population_members: torch.Tensor | None  # bool (shadows, m)

    @property
    def count(self) -> int:
        return len(self.logits)

    def seen_through(self, answer: Callable[[torch.Tensor], torch.Tensor]) -> ShadowModels:
        """The shadow models' outputs as an API that turns probabilities into `answer(probabilities)` (top-k,
        rounding) would give them: an attacker facing a hardened API hardens its shadow outputs alike."""

        def served(logits: torch.Tensor) -> torch.Tensor:
            probabilities = answer(logits.double().softmax(-1).flatten(0, 1)).view_as(logits)
            return probabilities.clamp_min(TINY_PROBABILITY).log()

        return dataclasses.replace(
            self,
            logits=served(self.logits),
            population_logits=None if self.population_logits is None else served(self.population_logits),
        )


def train_shadows(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    trainer: ShadowTrainer,
    *,
    population: LabelledData | None = None,
    n_shadows: int = 16,
    online: bool = True,
    train_size: int | None = None,
    tasks: TaskRunner | None = None,
    seed: int = 0,
) -> ShadowModels:
    """Train `n_shadows` models with `trainer` to attack `target` on the records (x, y).

    Each model trains on a random `train_size` records (default: half) of the pool: the records under attack
    and the population when `online`, the population alone otherwise (the records are then OUT of every
    model). Membership is balanced as in Carlini et al.: every pool record is IN for the same number of
    models. Each model is then evaluated on the records and on the population. Pick `train_size` equal to
    the victim's training-set size. The models train as jobs of `tasks` (its executor and cache; default: one
    after another in this process). Raises before any training when the target gives labels only or the data
    does not fit it.
    """
    _require_scores(target, "membership inference")
    _check_records(target, x, y, "the records under attack")
    if population is not None:
        _check_records(target, population.x, population.y, "the population")
    elif not online:
        raise BadInputError("offline shadow models train on the attacker's population: give `population`")
    if n_shadows < 2:
        raise BadInputError(f"n_shadows must be at least 2, got {n_shadows}")
    x, y = x.detach().cpu(), y.detach().cpu()
    parts = ([LabelledData(x, y)] if online else []) + ([population] if population is not None else [])
    pool_x = torch.cat([p.x.detach().cpu() for p in parts])
    pool_y = torch.cat([p.y.detach().cpu() for p in parts])
    size = len(pool_x) // 2 if train_size is None else train_size
    ins = round(n_shadows * size / len(pool_x))  # models each pool record is IN
    if not 0 < size < len(pool_x) or not 1 <= ins < n_shadows:
        raise BadInputError(
            f"train_size {size} of a pool of {len(pool_x)} records with {n_shadows} shadow models puts each "
            f"record in {ins} of them; every record needs to be in some models and out of others"
        )
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(n_shadows, len(pool_x), generator=generator).argsort(0) < ins
    seeds = torch.randint(2**31 - 1, (n_shadows,), generator=generator).tolist()
    inputs = x if population is None else torch.cat([x, population.x.detach().cpu()])
    tasks = tasks or TaskRunner()
    jobs = [
        ShadowJob(trainer, LabelledData(pool_x[k], pool_y[k], f"shadow {s}"), inputs, seeds[s], tasks.device)
        for s, k in enumerate(keep)
    ]
    logits = torch.stack(tasks.map(train_shadow, jobs, what="shadow models"))
    n = len(x)
    members = keep[:, :n] if online else torch.zeros(n_shadows, n, dtype=torch.bool)
    return ShadowModels(
        logits=logits[:, :n],
        members=members,
        population=population,
        population_logits=None if population is None else logits[:, n:],
        population_members=None if population is None else keep[:, n:] if online else keep,
    )


def loss_threshold_attack(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    members: torch.Tensor | None = None,
    kind: Literal["loss", "confidence"] = "loss",
) -> MembershipResult:
    """Yeom et al.'s attack: one global threshold on the loss. `kind="loss"` scores -loss of the true label,
    computed as the logit-space score phi (a monotone function of it that does not saturate);
    `kind="confidence"` scores the top class's confidence the same way, without the label."""
    _require_scores(target, "the loss-threshold attack")
    if kind not in ("loss", "confidence"):
        raise BadInputError(f"kind must be 'loss' or 'confidence', got {kind!r}")
    _check_records(target, x, y, "the records under attack")
    _check_members(members, len(x))
    before = target.queries.total
    scores = _query(target, x)
    labels = y.cpu() if kind == "loss" else scores.argmax(-1)
    phi = logit_score(scores, labels, kind=target.score_kind)
    return _result(f"{kind} threshold", phi, members, 0, target.queries.total - before)


def lira(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    shadows: ShadowModels,
    *,
    online: bool = True,
    variance: Literal["auto", "per_example", "global"] = "auto",
    members: torch.Tensor | None = None,
) -> MembershipResult:
    """Carlini et al.'s LiRA on the records (x, y) with `shadows` trained for them.

    Online: the log-likelihood ratio of the target's score phi under the Gaussians fitted to the IN and OUT
    shadow models' scores of the record. Offline (only OUT models, the records never trained on): the
    one-sided test of phi against the OUT Gaussian, scored as (phi - mu_out) / sigma_out, which ranks
    records as 1 - Pr[Z > phi] does without saturating. `variance="auto"` fits one variance shared by all
    records (the mean of the per-record variances) below PER_EXAMPLE_VARIANCE_FROM shadow models, a variance
    per record from there on.
    """
    _require_scores(target, "LiRA")
    if variance not in ("auto", "per_example", "global"):
        raise BadInputError(f"variance must be 'auto', 'per_example' or 'global', got {variance!r}")
    _check_records(target, x, y, "the records under attack")
    _check_members(members, len(x))
    _check_shadows(shadows, len(x))
    inside = shadows.members
    if (~inside).sum(0).min() < 2:
        raise BadInputError("LiRA needs every record out of at least two shadow models; train more of them")
    if online and inside.sum(0).min() < 2:
        raise BadInputError(
            "online LiRA needs every record in at least two shadow models: train them with online=True "
            "(and enough of them), or run offline"
        )
    phi_shadows = logit_score(shadows.logits, y.cpu())
    per_example = variance == "per_example" or (
        variance == "auto" and shadows.count >= PER_EXAMPLE_VARIANCE_FROM
    )
    before = target.queries.total
    phi = logit_score(_query(target, x), y.cpu(), kind=target.score_kind)
    mu_out, var_out = _gaussian_fit(phi_shadows, ~inside, per_example)
    if online:
        mu_in, var_in = _gaussian_fit(phi_shadows, inside, per_example)
        scores = _normal_log_pdf(phi, mu_in, var_in) - _normal_log_pdf(phi, mu_out, var_out)
    else:
        scores = (phi - mu_out) / var_out.sqrt()
    name = "LiRA online" if online else "LiRA offline"
    return _result(name, scores, members, shadows.count, target.queries.total - before)


def rmia(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    shadows: ShadowModels,
    *,
    online: bool = True,
    a: float | None = None,
    temperature: float | None = None,
    gamma: float = 1.0,
    members: torch.Tensor | None = None,
) -> MembershipResult:
    """Zarifzadeh et al.'s RMIA on the records (x, y) with `shadows` (the reference models) trained with a
    population.

    Score(x) = Pr_z[LR(x, z) > gamma] over the population records z, with LR(x, z) = (Pr(x|theta) / Pr(x)) /
    (Pr(z|theta) / Pr(z)), Pr(.|theta) the target's softmax probability of the true label at `temperature`
    and Pr(.) its mean over reference models. Online, Pr(x) = (mean over IN models + mean over OUT models)
    / 2; offline, only OUT models are used and Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2 (the paper's linear
    approximation of the missing IN models). What is left None (`a` offline, `temperature`) is calibrated as
    the authors calibrate `a`: attack one reference model with the others on the population, whose
    membership in it is known, and keep the values with the best AUC. A temperature above 1 keeps apart
    predictions whose probabilities all round to 1 on a confident model. Probabilities are handled in log
    space (from phi), so that ratios of confidences near 1 keep their precision.
    """
    _require_scores(target, "RMIA")
    _check_records(target, x, y, "the records under attack")
    _check_members(members, len(x))
    _check_shadows(shadows, len(x))
    if a is not None and not 0.0 <= a <= 1.0:
        raise BadInputError(f"RMIA's offline coefficient a must be in [0, 1], got {a}")
    if gamma <= 0 or (temperature is not None and temperature <= 0):
        raise BadInputError(f"RMIA's gamma and temperature must be positive, got {gamma} and {temperature}")
    population, pop_logits, pop_members = (
        shadows.population,
        shadows.population_logits,
        shadows.population_members,
    )
    if population is None or pop_logits is None or pop_members is None:
        raise BadInputError(
            "RMIA compares records with population records: train the shadows with a population"
        )
    for what, inside in (("record", shadows.members), ("population record", pop_members)):
        if (~inside).sum(0).min() < 1 or (online and inside.sum(0).min() < 1):
            raise BadInputError(
                f"RMIA needs every {what} out of at least one reference model"
                + (" and, online, in at least one: train the shadows with online=True" if online else "")
            )
    y, pop_y = y.cpu(), population.y.cpu()
    if online:
        a = None
    if temperature is None or (not online and a is None):
        temperature, a = _calibrate(pop_logits, pop_y, pop_members, online, a, temperature, gamma)
    before = target.queries.total
    target_x = _as_logits(_query(target, x), target.score_kind)
    target_z = _as_logits(_query(target, population.x), target.score_kind)
    t = temperature
    scores = _rmia_scores(
        (target_x / t, shadows.logits.double() / t, y, shadows.members),
        (target_z / t, pop_logits.double() / t, pop_y, pop_members),
        a,
        gamma,
    )
    name = f"RMIA online (T={t:g})" if a is None else f"RMIA offline (a={a:g}, T={t:g})"
    return _result(name, scores, members, shadows.count, target.queries.total - before)


# One side of RMIA's comparison: the target's logits (n, classes), the reference models' logits
# (models, n, classes), the labels (n,) and which reference models trained on each record (models, n).
_Side = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _rmia_scores(records: _Side, population: _Side, a: float | None, gamma: float) -> torch.Tensor:
    """Pr_z[LR(x, z) > gamma] for each record x."""
    log_ratio_x, log_ratio_z = (
        nn.functional.logsigmoid(logit_score(own, labels))
        - _log_marginal(logit_score(refs, labels), inside, a)
        for own, refs, labels, inside in (records, population)
    )
    return _fraction_below(log_ratio_z, log_ratio_x - math.log(gamma))


def _log_marginal(phi: torch.Tensor, inside: torch.Tensor, a: float | None) -> torch.Tensor:
    """log Pr(x) per record from the reference models' phi (models, records), in float64: online (IN and OUT
    models) when `a` is None, else offline with coefficient `a`.

    p = sigmoid(phi) and 1 - p = sigmoid(-phi) are both exact, so log Pr(x) is taken as log1p(-(1 - Pr(x)))
    where Pr(x) is near 1 (a confident record) and as log Pr(x) elsewhere."""
    p, q = torch.sigmoid(phi), torch.sigmoid(-phi)
    if a is None:
        prob = (_masked_mean(p, inside) + _masked_mean(p, ~inside)) / 2
        rest = (_masked_mean(q, inside) + _masked_mean(q, ~inside)) / 2
    else:
        prob = ((1 + a) * _masked_mean(p, ~inside) + 1 - a) / 2
        rest = (1 + a) * _masked_mean(q, ~inside) / 2
    return torch.where(rest < 0.5, torch.log1p(-rest), prob.log())


def _calibrate(
    logits: torch.Tensor,
    y: torch.Tensor,
    inside: torch.Tensor,
    online: bool,
    a: float | None,
    temperature: float | None,
    gamma: float,
) -> tuple[float, float | None]:
    """(temperature, a) with the best AUC attacking reference model 0 with the others on the population;
    a given value is kept, `a` stays None online."""
    truth, refs, refs_inside = inside[0], logits[1:].double(), inside[1:]
    if (
        truth.all()
        or not truth.any()
        or (~refs_inside).sum(0).min() < 1
        or (online and refs_inside.sum(0).min() < 1)
    ):
        raise BadInputError(
            "too few shadow models to calibrate RMIA on the population: give `temperature` (and `a` offline)"
        )
    temperatures = _TEMPERATURES if temperature is None else (temperature,)
    coefficients = (None,) if online else _A_GRID if a is None else (a,)

    def auc(t: float, c: float | None) -> float:
        side = (logits[0].double() / t, refs / t, y, refs_inside)
        return roc_curve(_rmia_scores(side, side, c, gamma), truth).auc

    return max(((t, c) for t in temperatures for c in coefficients), key=lambda tc: auc(*tc))


def _as_logits(scores: torch.Tensor, kind: ScoreKind) -> torch.Tensor:
    """Float64 scores whose softmax is the target's probabilities: the logits, or the log-probabilities."""
    return scores.double() if kind == "logits" else scores.double().clamp_min(TINY_PROBABILITY).log()


def _fraction_below(reference: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each value, the fraction of `reference` strictly below it."""
    return torch.searchsorted(reference.sort().values, values, side="left").double() / len(reference)


def _gaussian_fit(
    values: torch.Tensor, mask: torch.Tensor, per_example: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance per record (column) of the masked values; one pooled variance unless per_example."""
    mean = _masked_mean(values, mask)
    var = _masked_mean((values - mean) ** 2, mask)
    if not per_example:
        var = var.mean().expand_as(var)
    return mean, var.clamp_min(_MIN_VARIANCE)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(0) / mask.sum(0)


def _normal_log_pdf(value: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((value - mean) ** 2 / var + var.log() + math.log(2 * math.pi))


def _query(target: Target, x: torch.Tensor) -> torch.Tensor:
    """The target's class scores on x, on the CPU. Counts len(x) queries."""
    return target.scores(x.to(target.device)).detach().cpu()


def _result(
    attack: str, scores: torch.Tensor, members: torch.Tensor | None, shadows: int, queries: int
) -> MembershipResult:
    truth = None if members is None else members.detach().bool().cpu()
    roc = None if truth is None else roc_curve(scores, truth)
    return MembershipResult(attack, scores, truth, roc, shadows, queries)


def _require_scores(target: Target, attack: str) -> None:
    if not target.access.allows(Access.SCORES):
        raise CapabilityError(f"{attack} needs class scores; {target.describe()} gives labels only")


def _check_records(target: Target, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if len(x) == 0:
        raise DataError(f"{what}: no samples")
    target.spec.check(x, what=what)
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(f"{what}: {len(x)} inputs but labels of shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.min() < 0 or y.max() >= target.spec.num_classes:
        raise DataError(f"{what}: labels must be class indices in [0, {target.spec.num_classes})")


def _check_members(members: torch.Tensor | None, n: int) -> None:
    if members is not None and members.shape != (n,):
        raise DataError(f"membership labels have shape {tuple(members.shape)}, expected ({n},)")


def _check_shadows(shadows: ShadowModels, n: int) -> None:
    if shadows.logits.shape[1] != n:
        raise BadInputError(f"the shadow models were evaluated on {shadows.logits.shape[1]} records, not {n}")
