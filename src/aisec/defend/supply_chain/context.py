"""The state a format scanner works in: where it is, what it may spend, and where its findings go.

A format scanner is a function `scan_<format>(data: memoryview, ctx: ScanContext) -> str | None`
(returning a more precise format name, e.g. "joblib" for a pickle, or None). It reads
`data` (the whole part it was given: a file, an archive member, a decompressed stream), never executes
or imports anything from it, records what it finds with `ctx.add`, hands embedded parts (archive members,
nested payloads) to `ctx.scan_nested`, and raises `Unparseable` (or lets the scanner catch any error)
when the bytes do not parse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aisec.core.severity import Severity
from aisec.defend.supply_chain.limits import ScanLimits
from aisec.defend.supply_chain.result import ScanFinding
from aisec.defend.supply_chain.rules import RULES


class Unparseable(Exception):
    """The bytes do not parse as the format the scanner expected; the message says where and why."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class LimitExceeded(Exception):
    """A resource limit was reached; the scan of the current part stops with an AISEC-SC-003 finding."""


@dataclass
class Budget:
    """What the whole top-level file's scan has spent so far (shared by every nested part)."""

    limits: ScanLimits
    members: int = 0
    unpacked_bytes: int = 0
    nested_payloads: int = 0

    def charge_members(self, n: int = 1) -> None:
        self.members += n
        if self.members > self.limits.max_members:
            raise LimitExceeded(f"more than {self.limits.max_members} archive members")

    def charge_unpacked(self, n: int) -> None:
        self.unpacked_bytes += n
        if self.unpacked_bytes > self.limits.max_unpacked_bytes:
            raise LimitExceeded(f"more than {self.limits.max_unpacked_bytes} bytes decompressed")

    def charge_nested_payload(self) -> None:
        self.nested_payloads += 1
        if self.nested_payloads > self.limits.max_nested_payloads:
            raise LimitExceeded(f"more than {self.limits.max_nested_payloads} nested payloads")


NestedScanner = Callable[[memoryview, "ScanContext"], str]


@dataclass
class ScanContext:
    """Where a format scanner is (`location`), how deep, and the shared findings list and budget."""

    location: str
    budget: Budget
    findings: list[ScanFinding]
    dispatch: NestedScanner
    depth: int = 0
    name: str = ""  # the part's file name (extension checks), "" when it has none
    # "torchscript" inside a TorchScript archive, whose pickles name the archive's own compiled classes
    # (`__torch__.*`) and TorchScript's list builders, resolved by torch's C++ unpickler, not imported.
    pickle_dialect: str = ""
    # The folder of the file on disk (top level only: an archive member has none), for formats that refer to
    # files beside the model (ONNX external data).
    base_dir: Path | None = None

    @property
    def limits(self) -> ScanLimits:
        return self.budget.limits

    def add(
        self, rule_id: str, message: str, offset: int | None = None, severity: Severity | None = None
    ) -> None:
        """Record a finding of `rule_id` at `offset` of this part (severity defaults to the rule's)."""
        rule = RULES[rule_id]
        where = self.location if offset is None else f"{self.location}@{offset}"
        self.findings.append(ScanFinding(rule_id, message, where, severity or rule.severity))

    def child(self, part: str, name: str | None = None) -> ScanContext:
        """The context of an embedded part called `part` (an archive member, `pickle@123`, ...)."""
        if self.depth + 1 > self.limits.max_depth:
            raise LimitExceeded(f"containers nested deeper than {self.limits.max_depth}")
        return ScanContext(
            location=f"{self.location}!{part}",
            budget=self.budget,
            findings=self.findings,
            dispatch=self.dispatch,
            depth=self.depth + 1,
            name=part if name is None else name,
            pickle_dialect=self.pickle_dialect,
        )

    def scan_nested(self, data: memoryview, part: str, name: str | None = None) -> str:
        """Sniff and scan an embedded part with the whole scanner; returns the format it was found to be."""
        return self.dispatch(data, self.child(part, name))
