"""The version of aisec, which every report and provenance record states.

A literal, not a lookup in the installed package's metadata: `importlib.metadata` costs `aisec scan` about a
tenth of its start-up (docs/benchmarks.md). pyproject.toml reads the package's version from here.
"""

from __future__ import annotations

__version__ = "0.1.0"
