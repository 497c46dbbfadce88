"""The installed version of aisec, which every report and provenance record states."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aisec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
