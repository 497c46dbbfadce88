"""The robustness controls of a plan's `defences`, each attacked by the evasion probe's own red team.

A defence that only looked strong against a weak attack is the field's most common failure (Athalye et al.
2018, Tramèr et al. 2020), so every control here is measured by the same evaluation as the model under
assessment, adaptively where it could mask gradients:

- adversarially trained models (PGD-AT, TRADES, fast AT, IBP): the full evasion evaluation (cascade, minimal
  perturbations, masking checks) beside the undefended model, with their cost (clean accuracy, training time,
  latency) -> AISEC-ROB-001; each is saved for deployment as `models/<defence>.pt`;
- certification (IBP or CROWN; randomised smoothing) beside the empirical robust accuracy -> AISEC-ROB-002;
- detectors of manipulated input, against the cascade's examples and an adaptive attack -> AISEC-ROB-003;
- input transformations, with plain gradients and with BPDA -> AISEC-ROB-004;
- NULL labelling: transfer from a substitute, an adaptive white-box attack, NULL answers on clean inputs ->
  AISEC-ROB-005.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from aisec.assessment.finding import Chart, Estimate, Finding, Metric, ModelFile, Series, Table
from aisec.assessment.plan import (
    AdversarialTrainingSection,
    DefencesSection,
    DefenceTrainingSection,
    EvasionProbeSection,
)
from aisec.assessment.probe import AssessmentContext, Training
from aisec.assessment.probes.evasion import Evaluation, evaluate, reference_budget
from aisec.assessment.probes.served import cell, split
from aisec.assessment.rules import CERTIFIED, DETECTORS, HARDENED_MODELS, INPUT_TRANSFORMS, NULL_LABELLING
from aisec.assessment.stats import wilson
from aisec.core.errors import BadInputError
from aisec.core.seeding import build_model, draw_seed
from aisec.core.severity import Severity
from aisec.core.train_jobs import Trained, TrainJob, train_all
from aisec.core.training import TrainingConfig, train
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.null_labelling import (
    NullLabellingConfig,
    train_null_labelling,
    with_null_class,
)
from aisec.defend.robustness.adversarial_training import AdversarialTrainingConfig, adversarial_train
from aisec.defend.robustness.certification.bounds import train_ibp
from aisec.targets.base import Target
from aisec.targets.torch_target import TorchTarget

UNDEFENDED = "undefended (as assessed)"
SMOOTHING_RADII = (
    0.0,
    0.25,
    0.5,
    0.75,
    1.0,
)  # L2 radii randomised smoothing's certified accuracy is given at


def check_hardening(context: AssessmentContext) -> None:
    """Everything the plan's robustness controls need, checked before any training: a torch model, a factory
    and training set for the controls that train, budgets inside the input range, layers bound propagation
    supports. BadInputError (exit 2) naming the field."""
    defences = _defences(context)
    target = context.target
    if not isinstance(target, TorchTarget):
        first = next(
            name
            for name in ("adversarial_training", "randomized_smoothing", "certification", "input_detectors")
            + ("input_transforms", "null_labelling")
            if getattr(defences, name)
        )
        raise BadInputError(
            f"defences.{first} needs a torch model (white box); the target is {target.describe()}"
        )
    if defences.retrains:
        training = context.training
        if training is None or training.model_fn is None:
            raise BadInputError(
                f"defences.{defences.retrains[0]} trains a model like yours: give the target's `factory` and "
                "`training.data`"
            )
    from aisec.defend.robustness.budget import check_budget

    lower, upper = target.spec.bounds(torch.zeros(1))
    for i, section in enumerate(defences.adversarial_training):
        check_budget(section.eps, lower, upper, field=f"defences.adversarial_training[{i}].eps")
    if defences.null_labelling is not None:
        check_budget(defences.null_labelling.eps, lower, upper, field="defences.null_labelling.eps")
    if defences.certification is not None or any(s.method == "ibp" for s in defences.adversarial_training):
        from aisec.defend.robustness.certification.bounds import check_supported

        check_supported(target.module)
    if defences.null_labelling is not None:
        assert context.training is not None and context.training.model_fn is not None
        with_null_class(build_model(context.training.model_fn, 0))


def hardening_findings(
    context: AssessmentContext, config: EvasionProbeSection, undefended: Evaluation
) -> list[Finding]:
    """The findings AISEC-ROB-001 to -005 for the controls the plan asks for, in that order. Every model the
    controls train is one job of a single batch through `context.tasks`, so that an executor trains them in
    parallel and a rerun reads them back from the task cache; each is then attacked here."""
    defences = _defences(context)
    assert isinstance(context.target, TorchTarget)
    x, y = context.data.x.to(context.target.device), context.data.y.to(context.target.device)
    seeds = torch.Generator().manual_seed(context.seed + 12)
    sections = _unique_labels(defences.adversarial_training)
    hardening_seeds = [draw_seed(seeds) for _ in sections]
    certifies = defences.certification is not None or defences.randomized_smoothing is not None
    certified_seed = draw_seed(seeds) if certifies else 0
    detector_seed = draw_seed(seeds) if defences.input_detectors else 0
    null_seed = draw_seed(seeds) if defences.null_labelling is not None else 0
    trained = _trained(context, _training_jobs(context, hardening_seeds, certified_seed, null_seed))
    hardened = [
        _harden(context, config, section, trained[f"adversarial_training[{i}]"], x, y)
        for i, section in enumerate(sections)
    ]
    findings = []
    if hardened:
        findings.append(_hardened_finding(context, undefended, hardened, x, trained))
    if certifies:
        findings.append(_certified_finding(context, undefended, hardened, x, y, certified_seed, trained))
    if defences.input_detectors:
        findings.append(_detector_finding(context, undefended, x, y, detector_seed))
    if defences.input_transforms:
        findings.append(_transform_finding(context, config, undefended, x, y))
    if defences.null_labelling is not None:
        findings.append(_null_finding(context, x, y, null_seed, trained))
    return findings


def _defences(context: AssessmentContext) -> DefencesSection:
    assert context.defences is not None
    return context.defences


# ---------------------------------------------------------------------------------------------------------
# the controls' models: one batch of jobs through the assessment's task runner


def _trained(context: AssessmentContext, jobs: dict[str, TrainJob]) -> dict[str, Trained]:
    """Every job's model by name, trained through `context.tasks` in one batch."""
    trained = train_all(context.tasks, list(jobs.values()), what="training the defended models")
    return dict(zip(jobs, trained, strict=True))


def _training_jobs(
    context: AssessmentContext, hardening_seeds: list[int], certified_seed: int, null_seed: int
) -> dict[str, TrainJob]:
    """The jobs of every control that trains, by name: each adversarially trained model, plain training at
    each of their settings (the yardstick of their cost), the noise-trained base model of randomised
    smoothing, and NULL labelling's three models (NULL-labelled and plain on the defender's half, the
    substitute on the attacker's)."""
    defences = _defences(context)
    if not defences.retrains:
        return {}
    training = _training(context)
    factory, data, device = training.model_fn, training.data, context.tasks.device
    assert factory is not None
    lower, upper = _bounds(context.target, data.x)
    jobs = {}
    for i, (section, seed) in enumerate(zip(defences.adversarial_training, hardening_seeds, strict=True)):
        fit = (
            partial(_fit_ibp, eps=section.eps, training=_config(section), lower=lower, upper=upper)
            if section.method == "ibp"
            else partial(
                _fit_adversarial,
                config=AdversarialTrainingConfig(
                    method=section.method, eps=section.eps, steps=section.steps, beta=section.beta
                ),
                training=_config(section),
                lower=lower,
                upper=upper,
            )
        )
        jobs[f"adversarial_training[{i}]"] = TrainJob(factory, fit, data, seed, device)
    for section in defences.adversarial_training:
        fit = partial(_fit_plain, training=_config(section))
        jobs[f"plain training ({_config_key(section)})"] = TrainJob(factory, fit, data, context.seed, device)
    smoothing = defences.randomized_smoothing
    if smoothing is not None:
        fit = partial(_fit_noise, sigma=smoothing.sigma, training=_config(smoothing))
        jobs["randomized_smoothing"] = TrainJob(factory, fit, data, certified_seed, device)
    null = defences.null_labelling
    if null is not None:
        defender, attacker = _null_halves(training, null_seed)
        low, high = _scalar_bounds(context.target)
        plain = partial(_fit_plain, training=_config(null))
        fit = partial(
            _fit_null,
            factory=factory,
            config=NullLabellingConfig(eps=null.eps),
            training=_config(null),
            lower=low,
            upper=high,
        )
        jobs["null_labelling"] = TrainJob(
            partial(_with_null_output, factory), fit, defender, null_seed, device
        )
        jobs["null_labelling plain"] = TrainJob(factory, plain, defender, null_seed, device)
        jobs["null_labelling substitute"] = TrainJob(factory, plain, attacker, null_seed + 1, device)
    return jobs


def _fit_plain(model: nn.Module, data: LabelledData, *, seed: int, training: TrainingConfig) -> nn.Module:
    """Plain training with aisec's loop."""
    return train(model, data, training, generator=torch.Generator().manual_seed(seed)).model


def _fit_adversarial(
    model: nn.Module,
    data: LabelledData,
    *,
    seed: int,
    config: AdversarialTrainingConfig,
    training: TrainingConfig,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> tuple[nn.Module, str]:
    """PGD-AT, TRADES or fast AT, with the catastrophic-overfitting guard's report as the note."""
    result = adversarial_train(
        model,
        data,
        config,
        training,
        lower=lower,
        upper=upper,
        generator=torch.Generator().manual_seed(seed),
    )
    return result.model, result.guard.message if result.guard is not None else ""


def _fit_ibp(
    model: nn.Module,
    data: LabelledData,
    *,
    seed: int,
    eps: float,
    training: TrainingConfig,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> nn.Module:
    """IBP training (Gowal et al. 2019)."""
    generator = torch.Generator().manual_seed(seed)
    return train_ibp(model, data, eps, training, lower=lower, upper=upper, generator=generator).model


def _fit_noise(
    model: nn.Module, data: LabelledData, *, seed: int, sigma: float, training: TrainingConfig
) -> nn.Module:
    """Training with Gaussian noise, the base model of randomised smoothing (Cohen et al. 2019)."""
    from aisec.defend.robustness.certification.smoothing import train_with_noise  # scipy: imported when used

    generator = torch.Generator().manual_seed(seed)
    return train_with_noise(model, data, sigma, training, generator=generator).model


def _with_null_output(factory: Callable[[], nn.Module]) -> nn.Module:
    """The factory's model with NULL labelling's extra output: the architecture of its trained model."""
    return with_null_class(factory())


def _fit_null(
    model: nn.Module,
    data: LabelledData,
    *,
    seed: int,
    factory: Callable[[], nn.Module],
    config: NullLabellingConfig,
    training: TrainingConfig,
    lower: float,
    upper: float,
) -> nn.Module:
    """NULL labelling (Hosseini et al. 2017). It adds the NULL output to an untrained model itself, so it starts
    from the factory's model of the same seed: `model` (that model with a zero NULL output) gives the device."""
    device = next(model.parameters()).device
    result = train_null_labelling(
        build_model(factory, seed).to(device),
        data,
        config,
        training,
        lower=lower,
        upper=upper,
        generator=torch.Generator().manual_seed(seed),
    )
    return result.model


def _null_halves(training: Training, seed: int) -> tuple[LabelledData, LabelledData]:
    """NULL labelling's split of the training set: the defender's half and the attacker's."""
    return split(training.data, len(training.data) // 2, seed)


# ---------------------------------------------------------------------------------------------------------
# AISEC-ROB-001: hardened models


@dataclass(frozen=True)
class Hardened:
    """One adversarially trained model and what the evasion probe measured on it."""

    label: str
    section: AdversarialTrainingSection
    model: nn.Module
    seconds: float
    evaluation: Evaluation
    file: ModelFile
    note: str  # e.g. the overfitting guard's report


def _unique_labels(
    sections: tuple[AdversarialTrainingSection, ...],
) -> list[tuple[str, AdversarialTrainingSection]]:
    """Each section with its label and file stem: `adversarial_training-<method>`, with the budget added
    when a method appears twice."""
    methods = [s.method for s in sections]
    return [
        (
            f"adversarial_training-{s.method}" + (f"-eps{s.eps:g}" if methods.count(s.method) > 1 else ""),
            s,
        )
        for s in sections
    ]


def _harden(
    context: AssessmentContext,
    config: EvasionProbeSection,
    labelled: tuple[str, AdversarialTrainingSection],
    trained: Trained,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Hardened:
    """The evasion probe's evaluation of one adversarially trained model."""
    from aisec.assessment.probes.evasion import attacker_view

    label, section = labelled
    model = trained.model.to(context.target.device).eval()
    view, _ = attacker_view(TorchTarget(model, context.target.spec), context.threat_model.knowledge)
    evaluation = evaluate(view, x, y, config, context, label=label)
    file = _model_file(label, model, section)
    return Hardened(label, section, model, trained.seconds, evaluation, file, trained.note)


def _hardened_finding(
    context: AssessmentContext,
    undefended: Evaluation,
    hardened: list[Hardened],
    x: torch.Tensor,
    trained: dict[str, Trained],
) -> Finding:
    tm = context.threat_model
    trained_at = [h.section.eps for h in hardened if h.section.eps in tm.budgets]
    # the headline budget: the one the models were hardened for, when the threat model assesses it
    ref = max(trained_at) if trained_at else reference_budget(tm.budgets, context.policy)
    n = len(x)
    training = _training(context)
    # the yardstick of their cost: plain training with aisec's loop at each of their settings (the user's own
    # recipe is not timed by the assessment)
    plain_seconds = {
        _config_key(h.section): trained[f"plain training ({_config_key(h.section)})"].seconds
        for h in hardened
    }
    base_latency = _latency(_module(context.target), x)
    columns = (
        "model",
        "clean accuracy",
        *(f"robust accuracy @{eps:g}" for eps in tm.budgets),
        f"95% CI @{ref:g}",
        "median minimal perturbation",
        "training time (x plain)",
        "latency (x undefended)",
        "masking checks fired",
        "file sha256",
    )
    rows = [_row(UNDEFENDED, undefended, n, ref, None, 1.0, "")]
    ratios = {h.label: h.seconds / plain_seconds[_config_key(h.section)] for h in hardened}
    for h in hardened:
        latency = _latency(h.model, x) / base_latency
        rows.append(_row(h.label, h.evaluation, n, ref, ratios[h.label], latency, h.file.sha256))

    undefended_robust = _robust(undefended, ref, n)
    best = max(hardened, key=lambda h: _robust(h.evaluation, ref, n).value)
    best_robust = _robust(best.evaluation, ref, n)
    gain = best_robust.value - undefended_robust.value
    cost = _clean(undefended, n).value - _clean(best.evaluation, n).value
    unreliable = [h.label for h in hardened if h.evaluation.fired]
    message = (
        f"At {tm.norm} eps={ref:g}, the most robust hardened model ({best.label}) keeps {best_robust.value:.1%} "
        f"robust accuracy (95% CI {best_robust.lower:.1%}–{best_robust.upper:.1%}) against "
        f"{undefended_robust.value:.1%} for the undefended model ({gain:+.1%}), with clean accuracy {0.0 - cost:+.1%} "
        f"and {best.seconds:.0f} s of training ({ratios[best.label]:.1f}x plain training). Each "
        "hardened model was attacked by the same cascade, minimal-perturbation search and masking checks as the "
        "undefended one."
    )
    notes = [f"{h.label}: {h.note}" for h in hardened if h.note]
    if notes:
        message += " " + " ".join(notes)
    if unreliable:
        message += (
            f" Gradient masking is suspected on {', '.join(unreliable)}: treat their figures as upper bounds."
        )
    severity = Severity.INFO if gain >= 0.1 else Severity.MEDIUM
    recommendation = (
        f"Deploy the hardened model that meets your clean-accuracy floor (saved under models/, sha256 in the table) "
        f"if a {gain:+.1%} change in robust accuracy at eps={ref:g} is worth {0.0 - cost:+.1%} of clean accuracy and the "
        "training time shown; re-run this assessment on it in CI. Robust accuracy is an empirical upper bound: "
        "where a guarantee is needed, certify (defences.certification, defences.randomized_smoothing)."
    )
    if gain < 0.1:
        recommendation = (
            f"Adversarial training gained only {gain:+.1%} at eps={ref:g}: train longer, at the budget you must "
            "withstand, or with TRADES; check that the budget is in the input's units."
        )
    return Finding(
        rule_id=HARDENED_MODELS.id,
        title=HARDENED_MODELS.title,
        attack_class=HARDENED_MODELS.attack_class,
        severity=severity,
        message=message,
        recommendation=recommendation,
        provenance=context.provenance(
            n,
            {
                **undefended.settings(tm.query_budget, 0),
                "defences": [h.section.model_dump() for h in hardened],
                "training_data_sha256": training.data.sha256,
                "plain_training_seconds": {k: round(v, 3) for k, v in plain_seconds.items()},
            },
        ),
        metrics=(
            Metric(
                f"best hardened robust accuracy at {tm.norm} eps={ref:g}",
                best_robust,
                id=f"best_robust_accuracy@{ref:g}",
                description=f"{best.label}, under the full cascade",
            ),
            Metric(
                f"robust accuracy gained at eps={ref:g}",
                round(gain, 4),
                description="best hardened model minus the undefended one",
                id=f"robust_accuracy_gain@{ref:g}",
            ),
            Metric(
                "clean accuracy cost",
                round(cost, 4),
                description=f"undefended minus {best.label}",
                id="clean_accuracy_cost",
            ),
        ),
        tables=(Table("Hardened models beside the undefended one", columns, tuple(rows)),),
        charts=_frontier_charts(
            tm.norm,
            tm.budgets,
            ref,
            [(UNDEFENDED, undefended)] + [(h.label, h.evaluation) for h in hardened],
            n,
        ),
        models=tuple(h.file for h in hardened),
        reliable=not unreliable,
    )


def _row(
    label: str,
    evaluation: Evaluation,
    n: int,
    ref: float,
    training_ratio: float | None,
    latency: float,
    sha256: str,
) -> tuple[Any, ...]:
    robust = _robust(evaluation, ref, n)
    minimal = evaluation.minimal
    correct = evaluation.cascade.clean_correct
    median_min = (
        float(minimal.norm[correct].median()) if minimal is not None and bool(correct.any()) else None
    )
    return (
        label,
        cell(_clean(evaluation, n).value),
        *(cell(o.robust_count / n) for o in evaluation.cascade.outcomes),
        f"{robust.lower:.3f}–{robust.upper:.3f}",
        cell(median_min),
        None if training_ratio is None else round(training_ratio, 2),
        round(latency, 2),
        ", ".join(c.name for c in evaluation.fired) or "none",
        sha256 or "(the model assessed)",
    )


def _frontier_charts(
    norm: str, budgets: tuple[float, ...], ref: float, models: list[tuple[str, Evaluation]], n: int
) -> tuple[Chart, ...]:
    """Robust accuracy against budget per model, and the accuracy-robustness frontier at the reference budget."""
    curves = Chart(
        "hardened-robust-accuracy",
        f"Robust accuracy vs {norm} budget, undefended and hardened",
        f"{norm} budget",
        "accuracy",
        tuple(
            Series(
                label,
                (0.0, *budgets),
                (_clean(e, n).value, *(o.robust_count / n for o in e.cascade.outcomes)),
            )
            for label, e in models
        ),
    )
    frontier = Chart(
        "accuracy-robustness-frontier",
        f"Clean accuracy against robust accuracy at eps={ref:g}",
        "clean accuracy",
        f"robust accuracy at eps={ref:g}",
        tuple(Series(label, (_clean(e, n).value,), (_robust(e, ref, n).value,)) for label, e in models),
    )
    return curves, frontier


def _robust(evaluation: Evaluation, eps: float, n: int) -> Estimate:
    outcome = next(o for o in evaluation.cascade.outcomes if o.eps == eps)
    return wilson(outcome.robust_count, n)


def _clean(evaluation: Evaluation, n: int) -> Estimate:
    return wilson(int(evaluation.cascade.clean_correct.sum()), n)


def _latency(module: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of one forward pass over `x` without gradients."""
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return max(statistics.median(times), 1e-9)


# ---------------------------------------------------------------------------------------------------------
# AISEC-ROB-002: certified robustness


def _certified_finding(
    context: AssessmentContext,
    undefended: Evaluation,
    hardened: list[Hardened],
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    trained: dict[str, Trained],
) -> Finding:
    defences = _defences(context)
    tm = context.threat_model
    tables, metrics, notes, models = [], [], [], []
    settings: dict[str, Any] = {}
    broken_certified = 0
    if defences.certification is not None:
        from aisec.defend.robustness.certification.bounds import certify

        method, k = defences.certification.method, min(defences.certification.samples, len(x))
        settings["certification"] = {"method": method, "samples": k}
        lower, upper = _bounds(context.target, x)
        rows = []
        best = (0.0, UNDEFENDED, tm.budgets[0])
        for label, module, evaluation in [(UNDEFENDED, _module(context.target), undefended)] + [
            (h.label, h.model, h.evaluation) for h in hardened
        ]:
            with context.progress.task(f"certifying {label} ({method})", total=len(tm.budgets)) as task:
                for eps in tm.budgets:
                    result = certify(module, x[:k], y[:k], eps, method, lower=lower, upper=upper)
                    outcome = next(o for o in evaluation.cascade.outcomes if o.eps == eps)
                    empirical = int(outcome.robust[:k].sum())
                    certified = int(result.certified.sum())
                    broken_certified += int((result.certified.cpu() & ~outcome.robust[:k].cpu()).sum())
                    rows.append(
                        (
                            label,
                            f"{eps:g}",
                            cell(certified / k),
                            cell(empirical / k),
                            cell((empirical - certified) / k),
                            round(result.seconds, 3),
                        )
                    )
                    if certified / k > best[0] or (certified / k == best[0] and eps > best[2]):
                        best = (certified / k, label, eps)
                    task.advance()
        tables.append(
            Table(
                f"Certified ({method.upper()}) and empirical robust accuracy, first {k} samples",
                ("model", "budget", "certified accuracy", "empirical robust accuracy", "gap", "seconds"),
                tuple(rows),
            )
        )
        ref = reference_budget(tm.budgets, context.policy)
        at_ref = [r for r in rows if r[1] == f"{ref:g}"]
        top = max(at_ref, key=lambda r: r[2] or 0.0)
        metrics.append(
            Metric(
                f"best certified accuracy at {tm.norm} eps={ref:g}",
                wilson(round((top[2] or 0.0) * k), k),
                id=f"best_certified_accuracy@{ref:g}",
                description=f"{top[0]}, by {method.upper()}",
            )
        )
        notes.append(
            f"By {method.upper()}, the best certified accuracy at eps={ref:g} is {top[2] or 0.0:.1%} ({top[0]}) "
            f"where the attacks leave {top[3] or 0.0:.1%}: the gap, {top[4] or 0.0:.1%}, is robustness no "
            "attack found broken but no proof covers."
        )
    if defences.randomized_smoothing is not None:
        table, metric, note, file = _smoothing(context, trained["randomized_smoothing"].model, x, y, seed)
        tables.append(table)
        metrics.append(metric)
        notes.append(note)
        models.append(file)
        settings["randomized_smoothing"] = defences.randomized_smoothing.model_dump()
    if broken_certified:
        notes.append(
            f"{broken_certified} point(s) were certified yet broken by an attack: the certificate or the "
            "attack's bookkeeping is wrong; these figures cannot be relied upon (please report it)."
        )
    return Finding(
        rule_id=CERTIFIED.id,
        title=CERTIFIED.title,
        attack_class=CERTIFIED.attack_class,
        severity=Severity.INFO,
        message=" ".join(notes),
        recommendation=(
            "Quote certified accuracy where a guarantee is needed (it holds for every attack within the budget); "
            "the empirical figure is an upper bound that a stronger attack may lower. To certify more, train for it: "
            "IBP training (adversarial_training method ibp) for bound propagation, Gaussian noise for smoothing."
        ),
        provenance=context.provenance(len(x), settings),
        metrics=tuple(metrics),
        tables=tuple(tables),
        models=tuple(models),
        reliable=broken_certified == 0,
    )


def _smoothing(
    context: AssessmentContext, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
) -> tuple[Table, Metric, str, ModelFile]:
    """The model trained with Gaussian noise, certified by randomised smoothing (Cohen et al. 2019)."""
    from aisec.defend.robustness.certification.smoothing import smoothing_certify

    section = _defences(context).randomized_smoothing
    assert section is not None
    model = model.to(context.target.device).eval()
    k = min(section.samples, len(x))
    with context.progress.task(f"certifying {k} samples by randomised smoothing", total=1) as task:
        result = smoothing_certify(
            model,
            x[:k],
            sigma=section.sigma,
            n0=section.n0,
            n=section.n,
            alpha=section.alpha,
            generator=torch.Generator(device=x.device).manual_seed(seed),
        )
        task.advance()
    yk = y[:k].to(result.prediction.device)
    abstained = float((result.prediction == -1).float().mean())
    rows = tuple(
        (f"{r:g}", cell(result.certified_accuracy(yk, r)), cell(abstained) if r == 0 else None)
        for r in SMOOTHING_RADII
    )
    radius = 0.5 if 0.5 in SMOOTHING_RADII else SMOOTHING_RADII[1]
    certified = result.certified_accuracy(yk, radius)
    label = f"randomized_smoothing-sigma{section.sigma:g}"
    note = (
        f"Randomised smoothing (sigma {section.sigma:g}, n={section.n}, alpha={section.alpha:g}) certifies "
        f"{certified:.1%} of the first {k} samples at L2 radius {radius:g}, abstaining on {abstained:.1%}; the "
        f"noise-trained base model is saved as models/{label}.pt."
    )
    return (
        Table(
            f"Randomised smoothing: certified accuracy by L2 radius, first {k} samples",
            ("L2 radius", "certified accuracy", "abstained"),
            rows,
        ),
        Metric(
            f"certified accuracy of the smoothed classifier at L2 radius {radius:g}",
            wilson(round(certified * k), k),
            id=f"smoothing_certified_accuracy@{radius:g}",
            description="correct, not abstaining, and certified at least this radius (Cohen et al. 2019)",
        ),
        note,
        _model_file(label, model, section),
    )


# ---------------------------------------------------------------------------------------------------------
# AISEC-ROB-003: detectors of manipulated input


def _detector_finding(
    context: AssessmentContext, undefended: Evaluation, x: torch.Tensor, y: torch.Tensor, seed: int
) -> Finding:
    from aisec.attacks.evasion.detector_aware import DetectorAwareConfig, detector_aware_attack

    defences = _defences(context)
    tm = context.threat_model
    module = _module(context.target)
    calibration, evaluation = _halves(len(x), context.seed)
    fit_data = (
        _training(context).data
        if context.training is not None
        else LabelledData(x[calibration].cpu(), y[calibration].cpu(), "assessment data (calibration half)")
    )
    rows, worst = [], (0.0, "", 0.0, 0.0, 0.0)  # drop, detector, eps, non-adaptive, adaptive
    for name in defences.input_detectors:
        detector = _fit_detector(name, module, fit_data, x[calibration])
        clean_flags = detector.flags(x[evaluation])
        for outcome in undefended.cascade.outcomes:
            correct = undefended.cascade.clean_correct[evaluation]
            idx = evaluation[correct.cpu()]
            fooled = ~outcome.robust[idx]
            flagged = detector.flags(outcome.x_adv[idx])
            detection = float(flagged[fooled].float().mean()) if bool(fooled.any()) else float("nan")
            non_adaptive = float((fooled & ~flagged).float().mean()) if len(idx) else 0.0
            with context.progress.task(f"adaptive attack on {name} at eps={outcome.eps:g}", total=1) as task:
                adaptive_result = detector_aware_attack(
                    context.target,  # type: ignore[arg-type]
                    x[idx],
                    y[idx],
                    detector.surrogate_score,
                    detector.threshold,
                    DetectorAwareConfig(eps=outcome.eps, norm=tm.norm),
                    exact_score=detector.score,
                    generator=torch.Generator(device=x.device).manual_seed(seed),
                )
                task.advance()
            adaptive = float(adaptive_result.fooled_undetected.float().mean()) if len(idx) else 0.0
            rows.append(
                (
                    name,
                    f"{outcome.eps:g}",
                    cell(float(clean_flags.float().mean())),
                    cell(detection),
                    cell(non_adaptive),
                    cell(adaptive),
                )
            )
            if adaptive - non_adaptive > worst[0] or not worst[1]:
                worst = (adaptive - non_adaptive, name, outcome.eps, non_adaptive, adaptive)
    _, worst_name, eps, non_adaptive, adaptive = worst
    broken = adaptive >= 0.5
    message = (
        f"Each detector's threshold was set on clean data at a {100 * _FPR:.0f}% false-positive rate. Against the "
        f"cascade's (non-adaptive) examples, the inputs fooled and undetected are listed per budget; an adaptive "
        f"attacker who also minimises the detector's score (BPDA through non-differentiable squeezers, several "
        f"weights, restarts) raises that share for {worst_name} at eps={eps:g} from {non_adaptive:.1%} to "
        f"{adaptive:.1%} of correctly classified inputs."
    )
    return Finding(
        rule_id=DETECTORS.id,
        title=DETECTORS.title,
        attack_class=DETECTORS.attack_class,
        severity=Severity.HIGH if broken else Severity.MEDIUM,
        message=message,
        recommendation=(
            "Do not count a detector as protection on the non-adaptive figure: an attacker who knows it evades it "
            "(Carlini & Wagner 2017; Tramèr et al. 2020). Use detectors as one layer among several (rate limits, "
            "monitoring) and rely on adversarial training or certification for robustness."
        ),
        provenance=context.provenance(
            len(evaluation),
            {
                "detectors": list(defences.input_detectors),
                "false_positive_rate": _FPR,
                "calibration_samples": len(calibration),
                "class_statistics": fit_data.name,
                "adaptive_attack": DetectorAwareConfig(eps=eps, norm=tm.norm).__dict__,
            },
        ),
        metrics=(
            Metric(
                f"fooled and undetected under the adaptive attack ({worst_name}, eps={eps:g})",
                round(adaptive, 4),
                id=f"adaptive_fooled_undetected@{eps:g}",
                description="share of correctly classified inputs the adaptive attacker fools without being flagged",
            ),
            Metric(
                f"fooled and undetected, non-adaptive ({worst_name}, eps={eps:g})",
                round(non_adaptive, 4),
                id=f"non_adaptive_fooled_undetected@{eps:g}",
            ),
        ),
        tables=(
            Table(
                "Detectors: false positives on clean inputs, detection of the cascade's examples, and inputs fooled "
                "and undetected without and with an adaptive attack",
                (
                    "detector",
                    "budget",
                    "clean flagged",
                    "detection rate (non-adaptive)",
                    "fooled & undetected (non-adaptive)",
                    "fooled & undetected (adaptive)",
                ),
                tuple(rows),
            ),
        ),
    )


_FPR = 0.05  # the false-positive rate the detectors' thresholds are set at on clean data


def _fit_detector(name: str, module: nn.Module, fit_data: LabelledData, calibration_x: torch.Tensor) -> Any:
    if name == "feature_squeezing":
        from aisec.defend.robustness.detection.feature_squeezing import fit_feature_squeezing

        return fit_feature_squeezing(module, calibration_x, fpr=_FPR)
    from aisec.defend.robustness.detection.mahalanobis import fit_mahalanobis

    return fit_mahalanobis(module, fit_data, calibration_x, fpr=_FPR)


def _halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of the assessment samples: calibration (the defender's clean data) and evaluation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7))
    return order[: n // 2].sort().values, order[n // 2 :].sort().values


# ---------------------------------------------------------------------------------------------------------
# AISEC-ROB-004: input transformations


def _transform_finding(
    context: AssessmentContext,
    config: EvasionProbeSection,
    undefended: Evaluation,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Finding:
    from aisec.defend.robustness.input_transforms import TransformedModel, transform_from_spec, transform_name

    tm = context.threat_model
    n = len(x)
    module = _module(context.target)
    lower, upper = _scalar_bounds(context.target)
    rows, masked = [], []
    for i, section in enumerate(_defences(context).input_transforms):
        spec = section.model_dump(exclude_none=True)
        name = transform_name(spec)
        transform = transform_from_spec(spec, lower, upper, field=f"defences.input_transforms[{i}]")
        plain = evaluate(
            TorchTarget(TransformedModel(module, transform), context.target.spec),
            x,
            y,
            config,
            context,
            label=name,
        )
        bpda_config = config.model_copy(update={"minimal_perturbation": False, "masking_checks": False})
        bpda = evaluate(
            TorchTarget(TransformedModel(module, transform, bpda=True), context.target.spec),
            x,
            y,
            bpda_config,
            context,
            label=f"{name} (BPDA)",
        )
        outcomes = zip(
            plain.cascade.outcomes, bpda.cascade.outcomes, undefended.cascade.outcomes, strict=True
        )
        overstated = False
        for p, b, u in outcomes:
            # a point counts as robust only if neither attack fooled it: BPDA is the real figure where the
            # transformation masks gradients (bit depth), its own gradients where they are honest (median)
            worst = int((p.robust & b.robust).sum())
            overstated |= p.robust_count > worst + max(2, n // 50)
            rows.append(
                (
                    name,
                    f"{p.eps:g}",
                    cell(_clean(plain, n).value),
                    cell(p.robust_count / n),
                    cell(b.robust_count / n),
                    cell(worst / n),
                    cell(u.robust_count / n),
                    ", ".join(c.name for c in plain.fired) or "none",
                )
            )
        if overstated or plain.fired:
            masked.append(name)
    ref = reference_budget(tm.budgets, context.policy)
    at_ref = [r for r in rows if r[1] == f"{ref:g}"]
    message = (
        "Each transformation was put in front of the model and attacked twice: with the gradients of the wrapped "
        "model (what a naive evaluation reports) and with BPDA (the transformation treated as the identity in the "
        "backward pass, Athalye et al. 2018), success always checked on the real wrapped model. A point counts as "
        "robust only if neither attack fooled it: "
        + "; ".join(
            f"{r[0]} keeps {r[5]:.1%} at eps={ref:g} (plain gradients alone: {r[3]:.1%}, BPDA alone: {r[4]:.1%}; "
            f"undefended {r[6]:.1%})"
            for r in at_ref
        )
        + "."
    )
    if masked:
        message += (
            f" Gradient masking: {', '.join(masked)} looked more robust to plain gradients than it is, or tripped "
            "the masking checks."
        )
    return Finding(
        rule_id=INPUT_TRANSFORMS.id,
        title=INPUT_TRANSFORMS.title,
        attack_class=INPUT_TRANSFORMS.attack_class,
        severity=Severity.HIGH if masked else Severity.LOW,
        message=message,
        recommendation=(
            "Do not deploy an input transformation as a robustness control on the strength of a plain-gradient "
            "evaluation: quote the worst case of plain gradients and BPDA, and prefer adversarial training or "
            "certification."
        ),
        provenance=context.provenance(
            n,
            {
                "transforms": [s.model_dump(exclude_none=True) for s in _defences(context).input_transforms],
                "bpda": "straight-through: the transformation is the identity in the backward pass",
                "attacks": list(undefended.attacks),
            },
        ),
        tables=(
            Table(
                "Robust accuracy of the transformed model: plain gradients against BPDA",
                (
                    "transformation",
                    "budget",
                    "clean accuracy",
                    "robust accuracy (plain gradients)",
                    "robust accuracy (BPDA)",
                    "robust accuracy (worst of both)",
                    "robust accuracy (undefended)",
                    "masking checks fired (plain)",
                ),
                tuple(rows),
            ),
        ),
        reliable=True,
    )


def _scalar_bounds(target: Target) -> tuple[float, float]:
    """The input range as two numbers (the widest, for per-feature bounds)."""
    lower, upper = target.spec.lower, target.spec.upper
    return (
        float(min(lower) if isinstance(lower, tuple) else lower),
        float(max(upper) if isinstance(upper, tuple) else upper),
    )


# ---------------------------------------------------------------------------------------------------------
# AISEC-ROB-005: NULL labelling


def _null_finding(
    context: AssessmentContext, x: torch.Tensor, y: torch.Tensor, seed: int, trained: dict[str, Trained]
) -> Finding:
    """Hosseini et al.'s protocol: the training set cut in a defender's half (a plain and a NULL-labelled model
    are trained on it) and an attacker's half (the substitute), so the substitute's data is disjoint from the
    models'; transferred examples are APGD-CE's on the substitute (it transferred best of PGD, FGSM and APGD)."""
    from dataclasses import replace

    from aisec.attacks.evasion.apgd import APGDConfig, apgd
    from aisec.attacks.evasion.null_aware import null_aware_pgd
    from aisec.defend.data_quality.null_labelling import null_rate

    section = _defences(context).null_labelling
    assert section is not None
    tm, spec = context.threat_model, context.target.spec
    defender, attacker = _null_halves(_training(context), seed)
    null_model, plain, substitute = (
        trained[name].model.to(x.device).eval()
        for name in ("null_labelling", "null_labelling plain", "null_labelling substitute")
    )
    with torch.no_grad():
        null_logits = null_model(x)
        null_right = null_logits.argmax(1) == y
        plain_right = plain(x).argmax(1) == y
    null = null_logits.shape[1] - 1  # the NULL output is the last one
    null_target = TorchTarget(null_model, replace(spec, num_classes=spec.num_classes + 1))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    rows = []
    for eps in tm.budgets:
        transfer = apgd(TorchTarget(substitute, spec), x, y, APGDConfig(eps=eps), generator=generator).x_adv
        with torch.no_grad():
            on_null = null_model(transfer[null_right]).argmax(1)
            on_plain = plain(transfer[plain_right]).argmax(1)
        yn, yp = y[null_right], y[plain_right]
        white_box_plain = apgd(
            TorchTarget(plain, spec), x[plain_right], yp, APGDConfig(eps=eps), generator=generator
        )
        adaptive = null_aware_pgd(null_target, x[null_right], yn, null, eps=eps, generator=generator)
        rows.append(
            (
                f"{eps:g}",
                cell(_mean(on_plain != yp)),
                cell(_mean((on_null != yn) & (on_null != null))),
                cell(_mean(on_null == null)),
                cell(white_box_plain.success_rate),
                cell(adaptive.success_rate),
            )
        )
    clean_null = null_rate(null_model, x, null)
    clean = (_mean(plain_right), _mean(null_right))
    ref = reference_budget(tm.budgets, context.policy)
    r = next(row for row in rows if row[0] == f"{ref:g}")
    message = (
        f"At eps={ref:g}, examples made on a substitute trained on data disjoint from the models' fool a plainly "
        f"trained model on {_pct(r[1])} of the inputs it gets right, and the NULL-labelled model on {_pct(r[2])} (it "
        f"answers NULL to {_pct(r[3])}). A white-box attacker who aims at any wrong class other than NULL succeeds on "
        f"{_pct(r[5])} (on the plain model: {_pct(r[4])}): NULL labelling blocks transfer, not an adaptive attacker. Its "
        f"cost: {clean_null:.1%} of clean inputs answered NULL; clean accuracy {clean[1]:.1%} against "
        f"{clean[0]:.1%} for the plain model trained on the same half."
    )
    label = f"null_labelling-eps{section.eps:g}"
    return Finding(
        rule_id=NULL_LABELLING.id,
        title=NULL_LABELLING.title,
        attack_class=NULL_LABELLING.attack_class,
        severity=Severity.HIGH if (r[5] or 0.0) >= 0.5 else Severity.MEDIUM,
        message=message,
        recommendation=(
            "Use NULL labelling against black-box attackers who transfer examples from a substitute, together with "
            "rate limits and query monitoring; it does not stop an attacker with the model's gradients. Treat NULL "
            "answers as rejections in the application and watch their rate on clean traffic."
        ),
        provenance=context.provenance(
            len(x),
            {
                "null_labelling": section.model_dump(),
                "training_split": f"{len(defender)} training records for the defender's models, {len(attacker)} "
                "for the attacker's substitute (the factory's model, same training settings)",
                "transfer_attack": "APGD-CE (100 steps) on the substitute",
                "adaptive_attack": "PGD-100 with a restart on max wrong non-NULL logit minus max(true, NULL) logits",
                "white_box_plain": "APGD-CE (100 steps) on the plain model",
            },
        ),
        metrics=(
            Metric(
                f"transfer success against the NULL-labelled model at eps={ref:g}",
                r[2],
                id=f"transfer_success@{ref:g}",
            ),
            Metric(f"adaptive white-box success at eps={ref:g}", r[5], id=f"adaptive_success@{ref:g}"),
            Metric("clean inputs answered NULL", round(clean_null, 4), id="clean_null_rate"),
        ),
        tables=(
            Table(
                "NULL labelling: transfer from a substitute, white-box and adaptive attacks, over the inputs each "
                "model gets right",
                (
                    "budget",
                    "transfer success (plain)",
                    "transfer success (NULL model)",
                    "NULL answers to transferred examples",
                    "white-box success (plain)",
                    "adaptive success (NULL model)",
                ),
                tuple(rows),
            ),
        ),
        models=(
            _model_file(
                label,
                null_model,
                section,
                extra="the factory's model with one more output (NULL, the last) in its final Linear layer",
            ),
        ),
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if len(flags) else float("nan")


# ---------------------------------------------------------------------------------------------------------
# shared


def _training(context: AssessmentContext) -> Training:
    training = context.training
    if training is None or training.model_fn is None:
        raise BadInputError(
            "the robustness controls that train need the target's `factory` and `training.data`"
        )
    return training


def _config(section: DefenceTrainingSection) -> TrainingConfig:
    return TrainingConfig(
        epochs=section.epochs, lr=section.lr, batch_size=section.batch_size, optimizer=section.optimizer
    )


def _config_key(section: DefenceTrainingSection) -> str:
    return f"epochs {section.epochs}, lr {section.lr:g}, batch {section.batch_size}, {section.optimizer}"


def _bounds(target: Target, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return target.spec.bounds(like)


def _module(target: Target) -> nn.Module:
    assert isinstance(target, TorchTarget)
    return target.module


def _model_file(label: str, model: nn.Module, section: Any, extra: str = "") -> ModelFile:
    """The model's state dict as `<label>.pt`, loadable with torch.load(weights_only=True) into the factory's
    module (or as `extra` says)."""
    import hashlib

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    content = buffer.getvalue()
    settings = ", ".join(f"{k} {v}" for k, v in section.model_dump().items())
    description = f"{label}: state dict for the target's factory ({settings})"
    if extra:
        description += f"; {extra}"
    return ModelFile(f"{label}.pt", hashlib.sha256(content).hexdigest(), description, content)
