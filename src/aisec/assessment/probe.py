"""A probe turns an attack's results into findings; it writes nothing (the report layer does).

The runner calls every probe's `check` before any probe's `run`, so that a plan one probe cannot carry out
(missing access, a query budget below what its attack needs) fails before any work is spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aisec.assessment.finding import Provenance
from aisec.core.errors import CapabilityError
from aisec.core.progress import NullProgress, Progress
from aisec.core.tasks import TaskRunner
from aisec.core.version import __version__
from aisec.targets.base import Access

if TYPE_CHECKING:
    from aisec.assessment.finding import Finding
    from aisec.assessment.plan import DefencesSection, PolicySection
    from aisec.assessment.threat_model import ThreatModel
    from aisec.core.attack_class import AttackClass
    from aisec.data.dataset import LabelledData
    from aisec.targets.base import Target


@dataclass(frozen=True)
class Training:
    """How the model was trained, as far as the plan tells: its training set, and for retraining (shadow
    models, DP-SGD) a function building an untrained model and the recipe fit(model, data, seed=...)."""

    data: LabelledData
    model_fn: Callable[[], Any] | None = None
    fit: Callable[..., Any] | None = None


@dataclass
class AssessmentContext:
    """Everything a probe may use: the model as the attacker sees it, the data, the threat model, the policy."""

    target: Target
    data: LabelledData
    threat_model: ThreatModel
    policy: PolicySection
    seed: int = 0
    model_sha256: str | None = None
    progress: Progress = field(default_factory=NullProgress)
    training: Training | None = None
    defences: DefencesSection | None = None
    # Where independent jobs (shadow models, retrained and defended models) run, and the cache a rerun resumes from.
    tasks: TaskRunner = field(default_factory=TaskRunner)

    def provenance(
        self, samples: int, settings: dict[str, Any], *, data: LabelledData | None = None
    ) -> Provenance:
        """How a finding's figures were obtained: this run's seed and model, the probe's settings, and the data
        they rest on (`data` when it is not the assessment data)."""
        return Provenance(
            tool_version=__version__,
            seed=self.seed,
            samples=samples,
            model_sha256=self.model_sha256,
            data_sha256=(self.data if data is None else data).sha256,
            settings=settings,
        )

    def require_scores(self, who_needs: str, *, advice: str = "") -> None:
        """CapabilityError "<who_needs> class scores, but the attacker has labels[; advice]" unless the threat
        model's attacker sees class scores (its knowledge, or what the model offers when that is less)."""
        knowledge, offered = self.threat_model.knowledge, self.target.access
        access = knowledge if offered.allows(knowledge) else offered
        if not access.allows(Access.SCORES):
            raise CapabilityError(
                f"{who_needs} class scores, but the attacker has {access.value}"
                + (f"; {advice}" if advice else "")
            )


class Probe(Protocol):
    attack_class: AttackClass
    name: str

    def check(self, context: AssessmentContext) -> None:
        """Raise a BadInputError if the probe cannot run in this context; spend nothing."""

    def run(self, context: AssessmentContext) -> list[Finding]:
        """The probe's findings; called only after `check` passed on the same context."""
        ...
