"""A probe turns an attack's results into findings; it writes nothing (the report layer does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aisec.assess.progress import NullProgress, Progress

if TYPE_CHECKING:
    from aisec.assess.finding import Finding
    from aisec.assess.plan import PolicySection
    from aisec.assess.threat_model import ThreatModel
    from aisec.attacks import AttackClass
    from aisec.data.dataset import LabelledData
    from aisec.targets.base import Target


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


class Probe(Protocol):
    attack_class: AttackClass
    name: str

    def run(self, context: AssessmentContext) -> list[Finding]: ...
