"""What a served model's controls did to the probes: a probe the service stopped (blocked, or limited beyond
what the attacker waits for) is a finding of its own, and a plan with a `baseline` (the same model without the
service's controls) sets every probe's headline figure against the bare and the served model side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisec.assessment.finding import Assessment, Finding, Metric, Provenance, Table
from aisec.assessment.rules import SERVICE_EFFECT, STOPPED_BY_SERVICE, headline_metric
from aisec.core.severity import Severity
from aisec.core.version import __version__

if TYPE_CHECKING:
    from aisec.targets.http_target import ServiceRefused


def stopped_by_service(probe: str, refused: ServiceRefused, provenance: Provenance) -> Finding:
    """The finding for a probe the service refused to go on answering."""
    return Finding(
        rule_id=STOPPED_BY_SERVICE.id,
        title=f"{STOPPED_BY_SERVICE.title}: {probe}",
        attack_class=STOPPED_BY_SERVICE.attack_class,
        severity=Severity.INFO,
        message=(
            f"The service stopped probe {probe} with HTTP {refused.status} ({refused.reason}) after answering "
            f"{refused.answered} quer{'y' if refused.answered == 1 else 'ies'}: the attack could not finish."
        ),
        recommendation=(
            "Keep the control that stopped it; check with a baseline (the bare model) how far the attack gets "
            "without it, and that benign clients are not stopped (docs/guard.md)."
        ),
        provenance=provenance,
        metrics=(
            Metric(id="queries_answered", name="Queries answered before the refusal", value=refused.answered),
            Metric(id="refusal_status", name="HTTP status of the refusal", value=refused.status),
        ),
    )


def side_by_side(bare: Assessment, served: Assessment, *, seed: int) -> Finding:
    """Each finding's headline figure against the bare model and against the served one, matched by rule and
    title in the order of the served assessment; for a probe the service stopped, the bare model's figures of
    its attack class beside where the service stopped it."""
    bare_figures = {(f.rule_id, f.title): f for f in bare.findings}
    rows: list[tuple[object, ...]] = []
    for finding in served.findings:
        if finding.rule_id == STOPPED_BY_SERVICE.id:  # the bare model's figures of that probe's attack class
            stopped = f"stopped after {finding.metric('queries_answered').value} queries"
            attack_class = finding.provenance.settings.get("attack_class")
            for other in bare.findings:
                figure = headline_metric(other)
                if other.attack_class.value == attack_class and figure is not None:
                    rows.append((other.title, figure.name, _plain(figure.value), stopped))
            continue
        figure = headline_metric(finding)
        if figure is None:
            continue
        match = bare_figures.get((finding.rule_id, finding.title))
        before = headline_metric(match) if match is not None else None
        rows.append(
            (finding.title, figure.name, _plain(before.value) if before else None, _plain(figure.value))
        )
    return Finding(
        rule_id=SERVICE_EFFECT.id,
        title=SERVICE_EFFECT.title,
        attack_class=SERVICE_EFFECT.attack_class,
        severity=Severity.INFO,
        message=(
            f"The same probes ran against the bare model ({bare.subject.model_source}) and the served one "
            f"({served.subject.model_source}); the table sets their headline figures side by side."
        ),
        recommendation="Read each row: a control holds where the served figure is better for you than the bare one.",
        provenance=Provenance(
            tool_version=__version__,
            seed=seed,
            samples=served.subject.data_samples,
            model_sha256=served.subject.model_sha256,
            data_sha256=served.subject.data_sha256,
            settings={"baseline": bare.subject.model_source},
        ),
        tables=(
            Table("Bare and served model", ("finding", "figure", "bare model", "served model"), tuple(rows)),
        ),
    )


def _plain(value: object) -> object:
    """A metric's value for a table cell: an estimate's point value."""
    return getattr(value, "value", value)
