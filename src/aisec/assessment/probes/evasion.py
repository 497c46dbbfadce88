"""The evasion probe: robust accuracy at each budget under the strongest attack the threat model allows.

Steps: (1) the attack cascade over all budgets (per-sample worst case); (2) per-sample minimal perturbation;
(3) gradient-masking checks; (4) findings with the figures, their confidence intervals and provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aisec.assessment.finding import (
    Chart,
    Estimate,
    Example,
    Finding,
    Metric,
    PolicyCheck,
    Provenance,
    Series,
    Table,
)
from aisec.assessment.images import is_image, pixels
from aisec.assessment.masking import MaskingCheck, run_checks
from aisec.assessment.plan import EvasionProbeSection, PolicySection
from aisec.assessment.probe import AssessmentContext
from aisec.assessment.rules import MASKING, NO_MASKING, ROBUSTNESS
from aisec.assessment.stats import wilson
from aisec.attacks.evasion.cascade import CascadeResult, run_cascade
from aisec.attacks.evasion.minimal import MinimalPerturbation, minimal_perturbation
from aisec.attacks.evasion.registry import ATTACKS, STRONGEST
from aisec.core.attack_class import AttackClass
from aisec.core.errors import CapabilityError
from aisec.core.severity import Severity
from aisec.targets.base import Access, Target
from aisec.targets.views import RestrictedView


@dataclass
class EvasionProbe:
    config: EvasionProbeSection
    attack_class: AttackClass = AttackClass.EVASION
    name: str = "evasion"

    def check(self, context: AssessmentContext) -> None:
        target, _ = attacker_view(context.target, context.threat_model.knowledge)
        for name in self.config.attacks or STRONGEST[target.access]:
            if not target.access.allows(ATTACKS[name].needs):
                raise CapabilityError(
                    f"probes.evasion.attacks: {name} needs {ATTACKS[name].needs.value} access, but the attacker "
                    f"has {target.access.value}"
                )
        if context.defences is not None and context.defences.robustness:
            from aisec.assessment.probes.hardening import check_hardening

            check_hardening(context)

    def run(self, context: AssessmentContext) -> list[Finding]:
        tm = context.threat_model
        target, knowledge_note = attacker_view(context.target, tm.knowledge)
        x, y = context.data.x.to(target.device), context.data.y.to(target.device)
        queries_before = context.target.queries.total
        evaluation = evaluate(target, x, y, self.config, context)
        provenance = context.provenance(
            len(x),
            {
                **evaluation.settings(tm.query_budget, self.config.batch_size),
                "queries_spent": context.target.queries.total - queries_before,
            },
        )
        fired = evaluation.fired
        findings = [
            _robustness_finding(
                context,
                evaluation.cascade,
                evaluation.minimal,
                fired,
                provenance,
                knowledge_note,
                x,
                y,
                self.config,
                target,
            )
        ]
        if evaluation.checks:
            findings.append(
                _masking_finding(evaluation.checks, fired, provenance, context.policy.fail_on_unreliable)
            )
        if context.defences is not None and context.defences.robustness:
            from aisec.assessment.probes.hardening import hardening_findings

            findings += hardening_findings(context, self.config, evaluation)
        return findings


@dataclass(frozen=True)
class Evaluation:
    """What the evasion probe measured on one model: the cascade over the threat model's budgets, each
    sample's minimal perturbation, and the gradient-masking checks."""

    target: Target
    attacks: tuple[str, ...]
    cascade: CascadeResult
    minimal: MinimalPerturbation | None
    checks: list[MaskingCheck]

    @property
    def fired(self) -> list[MaskingCheck]:
        return [c for c in self.checks if c.fired]

    def settings(self, query_budget: int, batch_size: int) -> dict[str, object]:
        """How the figures were obtained, for a finding's provenance."""
        return {
            "knowledge": self.target.access.value,
            "norm": self.cascade.norm,
            "budgets": [o.eps for o in self.cascade.outcomes],
            "attacks": list(self.attacks),
            "query_budget": query_budget,
            "batch_size": batch_size,
            "minimal_perturbation": "PGD-20 bisection, 8 steps"
            if self.target.access is Access.WHITE_BOX
            else "HopSkipJump, minimal norm",
            "torch": torch.__version__,
            "device": str(self.target.device),
        }


def evaluate(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    config: EvasionProbeSection,
    context: AssessmentContext,
    *,
    label: str = "",
) -> Evaluation:
    """The evasion probe's measurement of `target` (as the attacker sees it): the cascade at every budget of
    the threat model, then what the section asks for of the minimal perturbations and masking checks."""
    tm = context.threat_model
    attacks = config.attacks or STRONGEST[target.access]
    generator = torch.Generator(device=target.device).manual_seed(context.seed)
    prefix = f"{label}: " if label else ""
    cascade = run_cascade(
        target,
        x,
        y,
        tm.budgets,
        tm.norm,
        attacks,
        query_budget=tm.query_budget,
        generator=generator,
        batch_size=config.batch_size,
        progress=context.progress,
    )
    minimal = None
    if config.minimal_perturbation:
        with context.progress.task(f"{prefix}minimal perturbation per sample", total=1) as task:
            minimal = _minimal(target, x, y, cascade, tm.query_budget, generator)
            task.advance()
    checks: list[MaskingCheck] = []
    if config.masking_checks:
        with context.progress.task(f"{prefix}gradient-masking checks", total=1) as task:
            checks = run_checks(target, x, y, cascade, generator)
            task.advance()
    return Evaluation(target, tuple(attacks), cascade, minimal, checks)


def attacker_view(target: Target, knowledge: Access) -> tuple[Target, str]:
    """The target as the threat model's attacker sees it; a note when the target offers less than assumed."""
    if target.access is knowledge:
        return target, ""
    if target.access.allows(knowledge):
        return RestrictedView(target, knowledge), ""
    return target, (
        f"The threat model assumes {knowledge.value} knowledge, but the model only offers {target.access.value}; "
        f"it was assessed with {target.access.value}, so a stronger attacker may do better than reported."
    )


def _minimal(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    cascade: CascadeResult,
    query_budget: int,
    generator: torch.Generator,
) -> MinimalPerturbation:
    """Minimal perturbation, starting from the cascade's adversarial examples and bracketed below by the
    largest budget at which each point stayed robust."""
    robust_at = torch.zeros(len(x), device=x.device)
    for outcome in cascade.outcomes:
        robust_at = torch.where(outcome.robust, torch.full_like(robust_at, outcome.eps), robust_at)
    last = cascade.outcomes[-1]
    return minimal_perturbation(
        target,
        x,
        y,
        cascade.norm,
        known_adv=last.x_adv,
        known_fooled=~last.robust & cascade.clean_correct,
        robust_at=robust_at,
        query_budget=query_budget,
        generator=generator,
    )


def _robustness_finding(
    context: AssessmentContext,
    cascade: CascadeResult,
    minimal: MinimalPerturbation | None,
    fired: list[MaskingCheck],
    provenance: Provenance,
    knowledge_note: str,
    x: torch.Tensor,
    y: torch.Tensor,
    config: EvasionProbeSection,
    target: Target,
) -> Finding:
    n = len(x)
    tm, policy = context.threat_model, context.policy
    clean = wilson(int(cascade.clean_correct.sum()), n)
    robust = {o.eps: wilson(o.robust_count, n) for o in cascade.outcomes}
    ref_eps = reference_budget(tm.budgets, policy)
    ratio = robust[ref_eps].value / clean.value if clean.value else 0.0
    severity = Severity.HIGH if ratio < 0.5 else Severity.MEDIUM if ratio < 0.95 else Severity.LOW

    metrics = [
        Metric(
            "clean accuracy",
            clean,
            id="clean_accuracy",
            description="share of samples classified correctly without attack",
        )
    ]
    metrics += [
        Metric(
            f"robust accuracy at {tm.norm} eps={eps:g}",
            est,
            id=f"robust_accuracy@{eps:g}",
            description="share still correct under every attack",
        )
        for eps, est in robust.items()
    ]
    median_min = None
    if minimal is not None:
        correct = cascade.clean_correct
        median_min = float(minimal.norm[correct].median()) if correct.any() else None
        metrics.append(
            Metric(
                f"median minimal {tm.norm} perturbation",
                _finite_or_none(median_min),
                tm.norm,
                "over correctly classified samples; the smallest budget found to fool each (lower is worse)",
                id="median_minimal_perturbation",
            )
        )
    last = cascade.outcomes[-1]
    spent = last.queries[~last.robust & cascade.clean_correct]
    if len(spent):
        black_box = target.access is not Access.WHITE_BOX
        metrics.append(
            Metric(
                "median queries to success" if black_box else "median forward-backward passes to success",
                float(spent.float().median()),
                "queries",
                "over fooled samples: queries the cascade spent on each at the smallest budget that fooled it",
                id="median_queries_to_success",
            )
        )

    checks = []
    if policy.min_clean_accuracy is not None:
        checks.append(
            PolicyCheck(
                "min_clean_accuracy",
                policy.min_clean_accuracy,
                clean.value,
                clean.value >= policy.min_clean_accuracy,
            )
        )
    for eps, threshold in sorted(policy.min_robust_accuracy.items()):
        observed = robust[eps].value
        checks.append(
            PolicyCheck(
                f"min_robust_accuracy@{eps:g}",
                threshold,
                observed,
                observed >= threshold,
                f"robust accuracy at {tm.norm} eps={eps:g}",
            )
        )

    rows = tuple(
        (
            f"{o.eps:g}",
            round(robust[o.eps].value, 4),
            f"{robust[o.eps].lower:.3f}–{robust[o.eps].upper:.3f}",
            *(o.broken_per_attack[a] for a in cascade.attacks),
        )
        for o in cascade.outcomes
    )
    table = Table(
        "Robust accuracy by budget, and the points each attack fooled first",
        ("budget", "robust accuracy", "95% CI", *cascade.attacks),
        rows,
    )
    charts = [_robustness_chart(tm.norm, clean, robust, minimal, cascade)]
    examples = _examples(target, x, y, cascade, config.examples)

    ref = robust[ref_eps]
    message = (
        f"Under {tm.norm} perturbations of size {ref_eps:g}, robust accuracy is {ref.value:.1%} "
        f"(95% CI {ref.lower:.1%}–{ref.upper:.1%}, n={n}) against clean accuracy {clean.value:.1%}; "
        f"at {tm.budgets[-1]:g} it is {robust[tm.budgets[-1]].value:.1%}."
    )
    if median_min is not None:
        message += f" Half of the correctly classified inputs are fooled by a perturbation of {tm.norm} size {median_min:.3g} or less."
    if knowledge_note:
        message += " " + knowledge_note
    if fired:
        message += (
            " These figures are UNRELIABLE: gradient masking is suspected ("
            + "; ".join(c.name for c in fired)
            + ")."
        )
    return Finding(
        rule_id=ROBUSTNESS.id,
        title=f"Robust accuracy under {tm.norm} evasion ({target.access.value} attacker)",
        attack_class=ROBUSTNESS.attack_class,
        severity=severity,
        message=message,
        recommendation=_recommendation(severity, target.access),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=(table,),
        charts=tuple(charts),
        examples=tuple(examples),
        policy=tuple(checks),
        reliable=not fired,
        headline=f"robust_accuracy@{ref_eps:g}",
    )


def reference_budget(budgets: tuple[float, ...], policy: PolicySection) -> float:
    """The budget a finding's severity and headline are judged at: the smallest one the policy sets a
    threshold for, else the middle of the assessed budgets. Severity is the robust/clean accuracy ratio
    there: below 0.5 high, below 0.95 medium, else low."""
    if policy.min_robust_accuracy:
        return min(policy.min_robust_accuracy)
    return budgets[len(budgets) // 2]


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _recommendation(severity: Severity, access: Access) -> str:
    text = (
        "Train with adversarial examples at the budget you must withstand (PGD adversarial training, Madry et al. "
        "2018, or TRADES) and re-run this assessment; input transformations that only hide gradients are not a "
        "defence. Consider certified defences (randomised smoothing) where a guarantee is needed."
    )
    if access is not Access.WHITE_BOX:
        text += " Against black-box attackers, limit and monitor queries per client and return labels, not scores."
    if severity is Severity.LOW:
        text = "Robustness at the assessed budgets is close to clean accuracy; keep this assessment in CI to catch regressions."
    return text


def _robustness_chart(
    norm: str,
    clean: Estimate,
    robust: dict[float, Estimate],
    minimal: MinimalPerturbation | None,
    cascade: CascadeResult,
) -> Chart:
    budgets = (0.0, *robust)
    ests = (clean, *robust.values())
    series = [
        Series(
            "robust accuracy (cascade)",
            budgets,
            tuple(e.value for e in ests),
            tuple(e.lower for e in ests),
            tuple(e.upper for e in ests),
        )
    ]
    if minimal is not None:
        top = max(robust) * 1.5
        grid = tuple(top * i / 60 for i in range(61))
        norms = minimal.norm
        n = len(norms)
        series.append(
            Series(
                "accuracy if each sample's minimal perturbation fits the budget",
                grid,
                tuple(float((norms > g).sum()) / n for g in grid),
            )
        )
    return Chart(
        "robust-accuracy", f"Robust accuracy vs {norm} budget", f"{norm} budget", "accuracy", tuple(series)
    )


def _examples(
    target: Target, x: torch.Tensor, y: torch.Tensor, cascade: CascadeResult, count: int
) -> list[Example]:
    """Up to `count` samples fooled at the smallest budget where any was, as images when the input is one."""
    if count == 0 or not is_image(tuple(x.shape[1:])):
        return []
    outcome = next((o for o in cascade.outcomes if (o.broken_by >= 0).any()), None)
    if outcome is None:
        return []
    idx = (outcome.broken_by >= 0).nonzero().squeeze(1)[:count]
    with torch.no_grad():
        adv_pred = target.labels(outcome.x_adv[idx])
        clean_pred = target.labels(x[idx])
    from aisec.attacks.evasion.norms import batch_norm

    norms = batch_norm(outcome.x_adv[idx] - x[idx], cascade.norm)

    return [
        Example(
            caption=f"sample {int(i)} at eps={outcome.eps:g} ({cascade.attacks[int(outcome.broken_by[i])]})",
            original=pixels(x[i], target.spec),
            adversarial=pixels(outcome.x_adv[i], target.spec),
            true_label=int(y[i]),
            original_prediction=int(clean_pred[k]),
            adversarial_prediction=int(adv_pred[k]),
            perturbation_norm=float(norms[k]),
            budget=outcome.eps,
        )
        for k, i in enumerate(idx)
    ]


def _masking_finding(
    checks: list[MaskingCheck], fired: list[MaskingCheck], provenance: Provenance, fail_on_unreliable: bool
) -> Finding:
    table = Table(
        "Gradient-masking checks",
        ("check", "fired", "observed", "threshold", "detail"),
        tuple(
            (c.name, "yes" if c.fired else "no", round(c.observed, 4), c.threshold, c.detail) for c in checks
        ),
    )
    if not fired:
        return Finding(
            rule_id=NO_MASKING.id,
            title=NO_MASKING.title,
            attack_class=NO_MASKING.attack_class,
            severity=Severity.INFO,
            message=f"All {len(checks)} gradient-masking checks passed; the white-box figures can be relied upon "
            "as far as these symptoms tell.",
            recommendation="None needed.",
            provenance=provenance,
            tables=(table,),
        )
    policy = (
        (
            PolicyCheck(
                "fail_on_unreliable", 0, len(fired), False, "gradient masking makes the figures unreliable"
            ),
        )
        if fail_on_unreliable
        else ()
    )
    return Finding(
        rule_id=MASKING.id,
        title=MASKING.title,
        attack_class=MASKING.attack_class,
        severity=Severity.HIGH,
        message="The model shows symptoms of gradient masking, so gradient-based attacks under-estimate what an "
        "adaptive attacker achieves: " + "; ".join(c.detail for c in fired) + ".",
        recommendation=(
            "Treat the reported robust accuracy as an upper bound. Evaluate with adaptive attacks: replace "
            "non-differentiable or saturating layers by a differentiable approximation in the backward pass (BPDA, "
            "Athalye et al. 2018), average gradients over the model's randomness (EOT), and rely on the black-box "
            "attacks' figures. Remove the masking component if it is meant as a defence: it is not one."
        ),
        provenance=provenance,
        tables=(table,),
        policy=policy,
        reliable=False,
    )
