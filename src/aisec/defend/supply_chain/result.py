"""What a scan produces: findings located in a file, a verdict per file, and the scan as a whole."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from aisec.core.severity import Severity
from aisec.defend.supply_chain.rules import RULES


class Verdict(str, enum.Enum):
    """A file's verdict, from best to worst for the user: only `safe` means "the scanner vouches for it"."""

    SAFE = "safe"
    SUSPICIOUS = "suspicious"
    ERROR = "error"
    UNSAFE = "unsafe"

    @property
    def rank(self) -> int:
        return list(Verdict).index(self)


@dataclass(frozen=True)
class ScanFinding:
    """One thing the scanner found. `location` names the part of the file: `archive/data.pkl@1234` means
    byte offset 1234 of that archive member; nested parts are joined with `!`."""

    rule_id: str
    message: str
    location: str
    severity: Severity

    @property
    def is_error(self) -> bool:
        return RULES[self.rule_id].is_error


def verdict_of(findings: list[ScanFinding] | tuple[ScanFinding, ...]) -> Verdict:
    """Unsafe if any finding is high or critical; else error if any part could not be analysed; else
    suspicious if any finding is low or medium; else safe (info findings do not change the verdict)."""
    if any(f.severity.rank >= Severity.HIGH.rank for f in findings):
        return Verdict.UNSAFE
    if any(f.is_error for f in findings):
        return Verdict.ERROR
    if any(f.severity.rank >= Severity.LOW.rank for f in findings):
        return Verdict.SUSPICIOUS
    return Verdict.SAFE


@dataclass(frozen=True)
class FileScan:
    """The scan of one file: what it is, its hash, and what was found."""

    path: str
    format: str
    size: int
    sha256: str | None  # None when the scan was asked not to hash
    findings: tuple[ScanFinding, ...]
    duration_s: float

    @property
    def verdict(self) -> Verdict:
        return verdict_of(self.findings)

    @property
    def max_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)


@dataclass(frozen=True)
class ScanReport:
    """The scan of every file under the paths the user gave."""

    files: tuple[FileScan, ...]
    tool_version: str
    started_at: str
    duration_s: float
    limits: dict[str, int] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        return max((f.verdict for f in self.files), key=lambda v: v.rank, default=Verdict.SAFE)

    def fails(self, fail_on: Severity | None) -> bool:
        """Whether the scan should fail a pipeline: with `fail_on` None, any file not safe; otherwise any
        finding at or above that severity, or any file that could not be analysed."""
        if fail_on is None:
            return any(f.verdict is not Verdict.SAFE for f in self.files)
        return any(f.verdict is Verdict.ERROR for f in self.files) or any(
            finding.severity.rank >= fail_on.rank for f in self.files for finding in f.findings
        )
