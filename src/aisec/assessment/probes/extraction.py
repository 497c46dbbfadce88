"""The extraction probe: how good a copy of the model can an attacker steal through its API?

The assessment data is cut in two: the attacker's natural data (the pool its natural and active queries are
drawn from, and the seeds its perturbation queries grow from) and held-out data on which the copy is judged:
agreement with the model (fidelity) and accuracy. Learning-based extraction runs each configured strategy
within the query budget (aisec.attacks.extraction); a linear scikit-learn model is also extracted by equation
solving (exact scores, rounded scores, or labels, whichever the API gives). The strongest copy is then used to
craft PGD examples, and the share that fool the model (at the budget the evasion finding is judged at, for an
L-inf threat model) measures what the stolen copy buys an evasion attacker. Each attack's query stream is
replayed through the PRADA detector (aisec.defend.robustness.prada) to show whether a server-side monitor
would have caught it, and the strongest strategy is re-run against each output-hardening variant of the plan.

Severity follows the best agreement: at least 90 % high, at least 70 % medium, else low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch

from aisec.assessment.finding import Finding, Metric, PolicyCheck, Provenance, Table
from aisec.assessment.plan import ExtractionProbeSection
from aisec.assessment.probe import AssessmentContext
from aisec.assessment.probes.evasion import reference_budget
from aisec.assessment.probes.served import api_label, api_view, cell, hardened_views, split
from aisec.assessment.rules import EXTRACTION
from aisec.attacks.extraction.equation_solving import extract_linear, extract_linear_adaptive
from aisec.attacks.extraction.equation_solving_labels import extract_linear_from_labels
from aisec.attacks.extraction.learning import LearningConfig, Source, extract_surrogate
from aisec.attacks.extraction.metrics import (
    TransferResult,
    accuracy,
    agreement,
    parameter_error,
    transfer_rate,
)
from aisec.attacks.extraction.result import ExtractionResult
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.output_hardening import HardenedTarget
from aisec.defend.robustness.prada import replay
from aisec.targets.base import Access, Target
from aisec.targets.sklearn_models import LINEAR_CLASSIFIERS, SklearnTorchTarget
from aisec.targets.views import QueryLog

MIN_HELD_OUT = 20


@dataclass
class ExtractionProbe:
    config: ExtractionProbeSection
    attack_class: AttackClass = AttackClass.EXTRACTION
    name: str = "extraction"

    def check(self, context: AssessmentContext) -> None:
        view, _ = api_view(context.target, context.threat_model.knowledge)
        budget = self.config.query_budget
        rounds = LearningConfig().rounds
        if "active" in self.config.strategies and budget < rounds:
            raise BadInputError(f"probes.extraction.query_budget: active extraction needs at least "
                                f"{rounds} queries (one per round), got {budget}")  # fmt: skip
        if "perturbation" in self.config.strategies and budget < rounds + 1:
            raise BadInputError(f"probes.extraction.query_budget: perturbation extraction needs at least "
                                f"{rounds + 1} queries (seeds, then one per round), got {budget}")  # fmt: skip
        for api in (view, *hardened_views(view, context.defences)):  # a linear model is solved through each
            needed = _equation_solving_queries(context.target, api)
            if needed is not None and budget < needed:
                raise BadInputError(
                    f"probes.extraction.query_budget: equation solving of this linear model from "
                    f"{api.access.value} ({api_label(api)}) needs at least {needed} queries, got {budget}"
                )
        if len(context.data) < 2 * MIN_HELD_OUT:
            raise BadInputError(
                f"probes.extraction: `data` has {len(context.data)} samples; the attacker's pool and the held-out "
                f"set need at least {MIN_HELD_OUT} each"
            )

    def run(self, context: AssessmentContext) -> list[Finding]:
        config, seed = self.config, context.seed
        view, note = api_view(context.target, context.threat_model.knowledge)
        pool, held_out = split(context.data, len(context.data) // 2, seed)
        generator = torch.Generator().manual_seed(seed)
        attempts: list[_Attempt] = []
        with context.progress.task("model extraction", total=len(config.strategies) + 1) as task:
            for strategy in config.strategies:
                attempts.append(_learn(view, strategy, config.query_budget, pool, held_out, generator))
                task.advance()
            if _equation_solving_queries(context.target, view) is not None:
                attempts.append(_solve(view, config.query_budget, held_out, generator))
            task.advance()
        strongest = max(attempts, key=lambda a: a.agreement)
        for hardened in hardened_views(view, context.defences):
            if strongest.result.method.startswith("learning/"):  # "learning/<source>", see _learn
                learned = cast(Source, strongest.result.method.removeprefix("learning/"))
                attempts.append(_learn(hardened, learned, config.query_budget, pool, held_out, generator))
            else:
                attempts.append(_solve(hardened, config.query_budget, held_out, generator))

        transfer = None
        tm = context.threat_model
        eps = reference_budget(tm.budgets, context.policy) if tm.norm == "linf" else None
        if config.transfer and eps is not None:
            with context.progress.task("transfer of surrogate adversarial examples", total=1) as task:
                transfer = transfer_rate(
                    strongest.result, view, held_out.x, held_out.y, eps, generator=generator
                )
                task.advance()

        provenance = context.provenance(
            len(context.data),
            {
                "query_budget": config.query_budget,
                "strategies": list(config.strategies),
                "attacker_pool": len(pool),
                "held_out": len(held_out),
                "attacker_access": view.access.value,
                "transfer_attack": f"PGD-40, L-inf eps={eps:g}" if transfer else "not run",
            },
        )
        return [_finding(context, attempts, strongest, transfer, provenance, note)]


@dataclass(frozen=True)
class _Attempt:
    api: str
    result: ExtractionResult
    agreement: float
    accuracy: float
    detected_at: int | None  # PRADA's alarm: the query that raised it


def _learn(
    target: Target,
    strategy: Source,
    budget: int,
    pool: LabelledData,
    held_out: LabelledData,
    generator: torch.Generator,
) -> _Attempt:
    """Learning-based extraction; active queries come from the pool when it is large enough, else from
    synthetic candidates; perturbation queries grow from seeds drawn from the pool."""
    log = QueryLog(target)
    natural = strategy in ("natural", "perturbation") or (strategy == "active" and len(pool) >= budget)
    data = pool.x if natural else None
    result = extract_surrogate(log, budget, LearningConfig(source=strategy), data=data, generator=generator)
    return _judged(target, log, result, held_out)


def _solve(target: Target, budget: int, held_out: LabelledData, generator: torch.Generator) -> _Attempt:
    """Equation solving with the variant the API allows: exact scores, rounded scores, or labels."""
    log = QueryLog(target)
    if not target.access.allows(Access.SCORES):
        result = extract_linear_from_labels(log, budget, generator=generator)
    elif isinstance(target, HardenedTarget) and (target.decimals is not None or target.top_k is not None):
        result = extract_linear_adaptive(log, budget, generator=generator)
    else:
        result = extract_linear(log, query_budget=budget)
    return _judged(target, log, result, held_out)


def _judged(target: Target, log: QueryLog, result: ExtractionResult, held_out: LabelledData) -> _Attempt:
    """Fidelity and accuracy on held-out data, and whether PRADA flags the attack's query stream."""
    alarm = replay(torch.cat(log.inputs).numpy(), torch.cat(log.answers).numpy()) if log.inputs else None
    return _Attempt(
        api=api_label(target),
        result=result,
        agreement=agreement(result, target, held_out.x),
        accuracy=accuracy(result, held_out),
        detected_at=alarm,
    )


def _equation_solving_queries(model: Target, view: Target) -> int | None:
    """Queries equation solving needs at least, when the model is a linear scikit-learn classifier; else None."""
    if not (isinstance(model, SklearnTorchTarget) and type(model.estimator) in LINEAR_CLASSIFIERS):
        return None
    d = math.prod(model.spec.shape)
    return d + 1 if view.access.allows(Access.SCORES) else model.spec.num_classes * (d + 1)


def _finding(
    context: AssessmentContext,
    attempts: list[_Attempt],
    strongest: _Attempt,
    transfer: TransferResult | None,
    provenance: Provenance,
    note: str,
) -> Finding:
    best = strongest.agreement
    severity = Severity.HIGH if best >= 0.9 else Severity.MEDIUM if best >= 0.7 else Severity.LOW
    metrics = [
        Metric(
            "best agreement with the model",
            best,
            id="best_agreement",
            description="held-out inputs on which the copy predicts as the model does",
        ),
        Metric(
            "accuracy of the best copy",
            strongest.accuracy,
            id="best_copy_accuracy",
            description="on held-out labelled data",
        ),
        Metric("queries spent by the best copy", strongest.result.queries, "queries", id="best_copy_queries"),
    ]
    message = (
        f"With {strongest.result.queries} queries, {strongest.result.method.replace('_', ' ')} builds a copy that "
        f"agrees with the model on {best:.1%} of held-out inputs (accuracy {strongest.accuracy:.1%})."
    )
    if transfer is not None and transfer.fooled_surrogate:
        metrics.append(
            Metric(
                f"transfer rate at L-inf eps={transfer.eps:g}",
                transfer.rate,
                id="transfer_rate",
                description="PGD examples that fool the copy and also fool the model",
            )
        )
        message += (
            f" {transfer.rate:.1%} of the adversarial examples crafted on it at L-inf {transfer.eps:g} "
            "also fool the model."
        )
    caught = [a for a in attempts if a.api == strongest.api and a.detected_at is not None]
    message += (
        f" PRADA flags {len(caught)} of the {sum(a.api == strongest.api for a in attempts)} query streams against the "
        "served API."
    )
    if note:
        message += " " + note
    checks = []
    limit = context.policy.max_extraction_agreement
    if limit is not None:
        checks.append(
            PolicyCheck(
                "max_extraction_agreement", limit, best, best <= limit, "best copy's agreement with the model"
            )
        )
    table = Table(
        "Extraction attempts: fidelity, accuracy and detection",
        ("API", "method", "queries", "agreement", "accuracy", "parameter error", "PRADA alarm at query"),
        tuple(
            (
                a.api,
                a.result.method,
                a.result.queries,
                cell(a.agreement),
                cell(a.accuracy),
                _parameter_error(context.target, a.result),
                a.detected_at if a.detected_at is not None else "not detected",
            )
            for a in attempts
        ),
    )
    return Finding(
        rule_id=EXTRACTION.id,
        title=EXTRACTION.title,
        attack_class=EXTRACTION.attack_class,
        severity=severity,
        message=message,
        recommendation=(
            "Return labels rather than scores where the application allows, limit queries per client and per "
            "time window, and monitor query streams (PRADA catches synthetic, perturbation-based streams; natural-"
            "data streams look benign, so rate limits remain the backstop). Treat the model as exposed to anyone "
            "with this query budget: a stolen copy also gives evasion attackers a white box to craft on."
        ),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=(table,),
        policy=tuple(checks),
    )


def _parameter_error(model: Target, result: ExtractionResult) -> float | None:
    """Relative error of an equation-solved linear model's parameters (None for learned surrogates)."""
    if result.weight is None or not isinstance(model, SklearnTorchTarget):
        return None
    error = parameter_error(
        result, torch.as_tensor(model.estimator.coef_), torch.as_tensor(model.estimator.intercept_)
    )
    return float(f"{error:.3g}")
