"""The membership probe: can an attacker tell the model's training records from other records?

Records under attack: `records` members drawn from the training set and as many non-members from the
assessment data; the rest of the assessment data is the attacker's population (shadow models train on it and,
online, on the records). The attacks (aisec.attacks.inference) run against the API as served, then against
each output-hardening variant of the plan (the attacker hardens its shadow outputs alike), and, with
`defences.dp_training`, against the model retrained with DP-SGD, whose shadow models the attacker trains with
the same DP recipe. Severity follows the strongest attack's TPR at 0.1 % FPR, the figure Carlini et al. (2022)
argue matters: the lower end of its 95 % Wilson interval as a multiple of that FPR (of 1/non-members when
fewer than 1,000 non-members cannot measure 0.1 %): at least 10x high, at least 3x medium, else low.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aisec.assessment.finding import Chart, Finding, Metric, PolicyCheck, Provenance, Series, Table
from aisec.assessment.plan import DPTrainingSection, MembershipProbeSection
from aisec.assessment.probe import AssessmentContext, Training
from aisec.assessment.probes.served import api_label, api_view, cell, hardened_views, split
from aisec.assessment.rules import MEMBERSHIP, MEMBERSHIP_DEFENCES
from aisec.assessment.stats import wilson
from aisec.attacks.inference.label_only import gap_attack, noise_robustness_attack
from aisec.attacks.inference.membership import (
    LOW_FPRS,
    MembershipResult,
    ShadowModels,
    ShadowTrainer,
    lira,
    loss_threshold_attack,
    rmia,
    train_shadows,
)
from aisec.attacks.inference.roc import Roc
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model
from aisec.core.severity import Severity
from aisec.defend.robustness.dp_training import fit_with_dp, train_dp
from aisec.targets.base import Access, Target
from aisec.targets.torch_target import TorchTarget

MIN_POPULATION = 50  # population records the attacker keeps beside the non-members under attack
SHADOW_ATTACKS = ("lira", "rmia")
LABEL_ONLY_ATTACKS = ("gap", "noise")
# The noise-robustness attack's noise, as a share of the input range: 0.1 was the strongest of 0.02-0.8 on
# digits (tests/test_label_only_membership.py).
NOISE_SIGMA = 0.1


@dataclass
class MembershipProbe:
    config: MembershipProbeSection
    attack_class: AttackClass = AttackClass.INFERENCE
    name: str = "membership"

    def attacks(self, access: Access) -> tuple[str, ...]:
        """The configured attacks, or by default the strongest the attacker's access allows."""
        if self.config.attacks is not None:
            return self.config.attacks
        return ("loss", *SHADOW_ATTACKS) if access.allows(Access.SCORES) else LABEL_ONLY_ATTACKS

    def check(self, context: AssessmentContext) -> None:
        training = _training(context)
        view, _ = api_view(context.target, context.threat_model.knowledge)
        wanted = set(self.attacks(view.access))
        if wanted & set(SHADOW_ATTACKS) and (training.model_fn is None or training.fit is None):
            raise BadInputError(
                "LiRA and RMIA train shadow models: give the target's factory and `training.recipe`"
            )
        if wanted - set(LABEL_ONLY_ATTACKS):
            context.require_scores(
                f"probes.membership.attacks: {', '.join(sorted(wanted - set(LABEL_ONLY_ATTACKS)))} need",
                advice=f"use the label-only attacks ({', '.join(LABEL_ONLY_ATTACKS)})",
            )
        records = self.config.records
        if len(training.data) < records:
            raise BadInputError(
                f"probes.membership.records: {records} members wanted, the training set has {len(training.data)}"
            )
        if len(context.data) < records + MIN_POPULATION:
            raise BadInputError(
                f"probes.membership.records: {records} non-members and a population of at least {MIN_POPULATION} "
                f"come from `data`, which has {len(context.data)} samples"
            )
        dp = context.defences.dp_training if context.defences else None
        if dp is not None and not (isinstance(context.target, TorchTarget) and training.model_fn is not None):
            raise BadInputError(
                "defences.dp_training retrains the model: it needs a torch target with `factory`"
            )

    def run(self, context: AssessmentContext) -> list[Finding]:
        training = _training(context)
        config, seed = self.config, context.seed
        view, note = api_view(context.target, context.threat_model.knowledge)
        attacks = self.attacks(view.access)
        members = training.data.subset(config.records, seed=seed)
        non_members, population = split(context.data, config.records, seed + 1)
        x, y = torch.cat([members.x, non_members.x]), torch.cat([members.y, non_members.y])
        truth = torch.arange(len(x)) < config.records
        train_size = min(len(training.data), (len(x) + len(population)) // 2)

        def shadows_for(target: Target, fit: Callable[..., nn.Module] | None) -> ShadowModels | None:
            if not set(attacks) & set(SHADOW_ATTACKS) or not target.access.allows(Access.SCORES):
                return None
            assert training.model_fn is not None and fit is not None  # check() made sure
            trainer = ShadowTrainer(training.model_fn, fit)
            return train_shadows(target, x, y, trainer, population=population, n_shadows=config.shadows,
                                 train_size=train_size, tasks=context.tasks, seed=seed)  # fmt: skip

        shadows = shadows_for(view, training.fit)
        rows: list[_Row] = []
        with context.progress.task("membership inference", total=1) as task:
            served = _run_attacks(attacks, view, x, y, truth, shadows)
            rows += [_Row(api_label(view), r) for r in served]
            for hardened in hardened_views(view, context.defences):
                seen = (
                    shadows.seen_through(hardened.answer)
                    if shadows and hardened.access is Access.SCORES
                    else None
                )
                results = _run_attacks(attacks, hardened, x, y, truth, seen)
                rows += [_Row(api_label(hardened), r) for r in results]
            task.advance()
        dp_summary = None
        dp = context.defences.dp_training if context.defences else None
        if dp is not None:
            dp_target, dp_summary = _retrain_with_dp(context, training, dp, view.access)
            dp_shadows = shadows_for(dp_target, functools.partial(fit_with_dp, **_dp_arguments(dp)))
            results = _run_attacks(attacks, dp_target, x, y, truth, dp_shadows)
            rows += [_Row(dp_summary.label, r) for r in results]

        provenance = context.provenance(
            len(x),
            {
                "records": f"{config.records} members (training set) + {config.records} non-members (data)",
                "population": len(population),
                "attacks": list(attacks),
                "shadow_models": config.shadows if shadows else 0,
                "shadow_train_size": train_size,
                "attacker_access": view.access.value,
                "training_data_sha256": training.data.sha256,
            },
        )
        if shadows is not None and train_size < len(training.data):
            note = (
                f"{note} The shadow models train on {train_size} records (half the attacker's pool), fewer than the "
                f"model's {len(training.data)}: an attacker with more data fits them better and may do better."
            ).strip()
        findings = [_membership_finding(context, served, rows, dp_summary, provenance, note)]
        if len(rows) > len(served):
            findings.append(_defences_finding(served, rows, dp_summary, provenance))
        return findings


def _run_attacks(
    attacks: tuple[str, ...],
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    truth: torch.Tensor,
    shadows: ShadowModels | None,
) -> list[MembershipResult]:
    """The attacks this target's access allows (LiRA and RMIA where there are shadow models); the label-only
    attacks in place of the score-based ones when it answers labels only (a label-only API)."""
    if not target.access.allows(Access.SCORES):
        attacks = LABEL_ONLY_ATTACKS
    results: list[MembershipResult] = []
    for name in attacks:
        if name == "loss":
            results.append(loss_threshold_attack(target, x, y, members=truth))
        elif name == "gap":
            results.append(gap_attack(target, x, y, members=truth))
        elif name == "noise":
            lo, hi = target.spec.bounds(x)
            sigma = NOISE_SIGMA * float((hi - lo).mean())
            results.append(noise_robustness_attack(target, x, y, sigma=sigma, members=truth))
        elif shadows is not None:
            attack = lira if name == "lira" else rmia
            results.append(attack(target, x, y, shadows, members=truth))
    return results


@dataclass(frozen=True)
class _Row:
    api: str
    result: MembershipResult


@dataclass(frozen=True)
class _DPSummary:
    label: str  # how the table names the DP-SGD model
    epsilon: float
    delta: float
    accuracy: float
    baseline_accuracy: float


def _dp_arguments(dp: DPTrainingSection) -> dict[str, Any]:
    return dp.model_dump(exclude_none=True)


def _retrain_with_dp(
    context: AssessmentContext, training: Training, dp: DPTrainingSection, access: Access
) -> tuple[Target, _DPSummary]:
    """The model retrained on its training set with DP-SGD, served like the original, and what it cost."""
    from aisec.targets.views import RestrictedView

    assert training.model_fn is not None and isinstance(context.target, TorchTarget)
    with context.progress.task(f"retraining with DP-SGD (epsilon {dp.target_epsilon:g})", total=1) as task:
        model = build_model(training.model_fn, context.seed)
        result = train_dp(model, training.data, seed=context.seed, **_dp_arguments(dp))
        task.advance()
    dp_model = TorchTarget(result.model, context.target.spec, device=str(context.target.device))
    x, y = context.data.x.to(dp_model.device), context.data.y.to(dp_model.device)
    summary = _DPSummary(
        label=f"DP-SGD, epsilon {result.epsilon:.3g}",
        epsilon=result.epsilon,
        delta=result.delta,
        accuracy=float((dp_model.labels(x) == y).float().mean()),
        baseline_accuracy=float((context.target.labels(x) == y).float().mean()),
    )
    return RestrictedView(dp_model, access), summary


def _training(context: AssessmentContext) -> Training:
    if context.training is None:
        raise BadInputError("probes.membership needs `training.data`, the records the model was trained on")
    return context.training


def _best(results: list[MembershipResult]) -> MembershipResult:
    """The attack with the highest TPR at 0.1 % FPR, ties broken by AUC."""
    return max(results, key=lambda r: (r.tpr_at[LOW_FPRS[0]], r.auc or 0.0))


def _membership_finding(
    context: AssessmentContext,
    served: list[MembershipResult],
    rows: list[_Row],
    dp: _DPSummary | None,
    provenance: Provenance,
    note: str,
) -> Finding:
    best = _best(served)
    low = best.tpr_at[LOW_FPRS[0]]
    members = int(best.members.sum()) if best.members is not None else 0
    non_members = len(best.scores) - members
    floor = max(LOW_FPRS[0], 1 / non_members)  # the lowest FPR these non-members can measure
    tpr = wilson(round(low * members), members)
    # judged on the interval's lower end: a few members above every non-member is noise
    lift = tpr.lower / floor
    severity = Severity.HIGH if lift >= 10 else Severity.MEDIUM if lift >= 3 else Severity.LOW
    auc = max(r.auc or 0.0 for r in served)
    metrics = [
        Metric("highest ROC AUC (any attack)", auc, id="highest_auc", description="0.5 is chance"),
        Metric(
            f"TPR at {LOW_FPRS[0]:.1%} FPR ({best.attack})",
            tpr,
            id=f"tpr_at_fpr@{LOW_FPRS[0]:g}",
            description=f"chance is {floor:.2%}",
        ),
        Metric(
            f"TPR at {LOW_FPRS[1]:.0%} FPR ({best.attack})",
            best.tpr_at[LOW_FPRS[1]],
            id=f"tpr_at_fpr@{LOW_FPRS[1]:g}",
            description="chance is 1%",
        ),
    ]
    checks = []
    limit = context.policy.max_membership_auc
    if limit is not None:
        checks.append(
            PolicyCheck("max_membership_auc", limit, auc, auc <= limit, "highest membership ROC AUC")
        )
    message = (
        f"The strongest attack ({best.attack}) finds {low:.1%} of the training records (95% CI "
        f"{tpr.lower:.1%}-{tpr.upper:.1%}) at a 0.1% false-positive rate, with ROC AUC {best.auc:.3f}, on "
        f"{members} members and {non_members} non-members; the interval's lower end is {lift:.1f}x the "
        f"{floor:.2%} false-positive rate it is measured at."
    )
    if floor > LOW_FPRS[0]:
        message += (
            f" With {non_members} non-members no FPR below 1/{non_members} can be measured: give more `data` "
            "for a figure at 0.1%."
        )
    if note:
        message += " " + note
    # The served API's curves, and the DP-SGD model's when measured (hardened APIs are in the table only: the
    # chart keeps to the palette's seven colours).
    curves: dict[str, Roc] = {
        f"{row.result.attack} ({row.api})": row.result.roc
        for row in rows
        if row.result.roc is not None and (row.api == rows[0].api or (dp is not None and row.api == dp.label))
    }
    return Finding(
        rule_id=MEMBERSHIP.id,
        title="Membership inference: training records can be told apart"
        if severity is not Severity.LOW
        else "Membership inference: little leakage at low false-positive rates",
        attack_class=MEMBERSHIP.attack_class,
        severity=severity,
        message=message,
        recommendation=_recommendation(severity),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=(_table(rows),),
        charts=(roc_chart(curves),),
        policy=tuple(checks),
    )


def _table(rows: list[_Row]) -> Table:
    return Table(
        "Membership attacks: ROC AUC and true-positive rate at low false-positive rates",
        ("model / API", "attack", "ROC AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "shadow models", "queries"),
        tuple(
            (
                row.api,
                r.attack,
                cell(r.auc),
                cell(r.tpr_at[0.001]),
                cell(r.tpr_at[0.01]),
                r.shadows,
                r.queries,
            )
            for row in rows
            for r in [row.result]
        ),
    )


def _defences_finding(
    served: list[MembershipResult], rows: list[_Row], dp: _DPSummary | None, provenance: Provenance
) -> Finding:
    """One row per defended variant: its strongest attack against the undefended one's, and what it cost."""
    baseline = _best(served)
    by_api: dict[str, list[MembershipResult]] = {}
    for row in rows[len(served) :]:
        by_api.setdefault(row.api, []).append(row.result)
    table_rows = [
        ("none (as served)", baseline.attack, cell(baseline.auc), cell(baseline.tpr_at[0.001]), "—")
    ]
    for api, results in by_api.items():
        best = _best(results)
        cost = "—"
        if dp is not None and api == dp.label:
            cost = f"test accuracy {dp.accuracy:.1%} vs {dp.baseline_accuracy:.1%}; (epsilon, delta) = ({dp.epsilon:.3g}, {dp.delta:.2g})"
        table_rows.append((api, best.attack, cell(best.auc), cell(best.tpr_at[0.001]), cost))
    message = "Each defence re-ran the same attacks; the table gives the strongest attack against each."
    metrics: list[Metric] = []
    if dp is not None:
        dp_best = _best(by_api[dp.label])
        message += (
            f" DP-SGD at epsilon {dp.epsilon:.3g} brings the strongest attack to ROC AUC {dp_best.auc:.3f} and "
            f"{dp_best.tpr_at[0.001]:.1%} TPR at 0.1% FPR (from {baseline.auc:.3f} and {baseline.tpr_at[0.001]:.1%}), "
            f"for test accuracy {dp.accuracy:.1%} instead of {dp.baseline_accuracy:.1%}."
        )
        metrics = [
            Metric(
                "DP-SGD epsilon spent", dp.epsilon, id="dp_epsilon", description=f"at delta {dp.delta:.2g}"
            ),
            Metric(
                "accuracy paid for DP-SGD",
                dp.baseline_accuracy - dp.accuracy,
                id="dp_accuracy_cost",
                description="test accuracy lost",
            ),
        ]
    return Finding(
        rule_id=MEMBERSHIP_DEFENCES.id,
        title=MEMBERSHIP_DEFENCES.title,
        attack_class=MEMBERSHIP_DEFENCES.attack_class,
        severity=Severity.INFO,
        message=message,
        recommendation=(
            "Rounding and top-k outputs barely slow a shadow-model attacker and label-only answers leave the "
            "label-only attacks; only training with differential privacy bounds what any attack can learn. Pick "
            "the epsilon whose accuracy cost you can accept, and keep this comparison in the assessment."
        ),
        provenance=provenance,
        metrics=tuple(metrics),
        tables=(
            Table(
                "Strongest membership attack against each defence",
                ("defence", "strongest attack", "ROC AUC", "TPR @ 0.1% FPR", "cost"),
                tuple(table_rows),
            ),
        ),
    )


def _recommendation(severity: Severity) -> str:
    if severity is Severity.LOW:
        return "Leakage at low false-positive rates is close to chance; keep this probe in the assessment."
    return (
        "The model memorises its training records. Train with differential privacy (DP-SGD, "
        "aisec.defend.robustness.dp_training) at an epsilon you can defend, regularise and stop training before it "
        "fits the training set perfectly, and do not rely on rounding or top-k outputs: measure each with this "
        "probe's `defences` section."
    )


def roc_chart(curves: Mapping[str, Roc], *, points: int = 25) -> Chart:
    """The curves on log-log axes, read at `points` FPRs spaced evenly in log from 1/negatives to 1, with
    chance (TPR = FPR) for reference; points with TPR 0 have no place on a log axis and are left out."""
    if not curves:
        raise ValueError("a ROC chart needs at least one curve")
    lowest = 1.0 / max(roc.negatives for roc in curves.values())
    grid = [lowest ** (1 - i / (points - 1)) for i in range(points)]
    series = []
    for name, roc in curves.items():
        read = [(f, roc.tpr_at(f)) for f in grid if f >= 1.0 / roc.negatives]
        read = [(f, t) for f, t in read if t > 0]
        series.append(Series(name, tuple(f for f, _ in read), tuple(t for _, t in read)))
    series.append(Series("chance", tuple(grid), tuple(grid)))
    return Chart(
        id="membership-roc",
        title="Membership inference ROC (log-log)",
        x_label="false-positive rate",
        y_label="true-positive rate",
        series=tuple(series),
        log_x=True,
        log_y=True,
    )
