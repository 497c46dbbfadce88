"""Probes by name, as plans and the runner refer to them.

Each probe's plan section registers itself with `register("name", probe="module:Class")` (see plan.py): the
plan's `probes` section then offers it as `probes.<name>`, and the runner builds `Class(section)` when a plan
enables it. Probes run, and their findings are reported, in the order their sections are registered. Importing
this module imports no probe (nor torch): a probe's module is imported only when the probe is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from aisec.assessment.plan import ProbeSection
    from aisec.assessment.probe import Probe

S = TypeVar("S", bound="type[ProbeSection]")


@dataclass(frozen=True)
class ProbeSpec:
    name: str  # the key under `probes:` in a plan
    section: type[ProbeSection]
    probe: str  # "package.module:Class", constructed with the section

    def build(self, section: ProbeSection) -> Probe:
        module, _, cls = self.probe.partition(":")
        probe: Probe = getattr(importlib.import_module(module), cls)(section)
        return probe


PROBES: dict[str, ProbeSpec] = {}


def register(name: str, *, probe: str) -> Callable[[S], S]:
    """Class decorator of a probe's plan section: `probes.<name>` in plans, built into `probe` by the runner."""

    def add(section: S) -> S:
        if name in PROBES:
            raise ValueError(f"probe {name!r} is registered twice")
        PROBES[name] = ProbeSpec(name, section, probe)
        return section

    return add
