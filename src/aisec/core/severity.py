"""How bad a finding is: one scale for assessment findings and scan findings alike."""

from __future__ import annotations

import enum


class Severity(str, enum.Enum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)
