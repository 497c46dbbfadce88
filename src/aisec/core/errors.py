"""Errors that reach the user, each with the exit code the CLI returns for it.

Exit codes (documented in docs/cli.md):
    0  the assessment ran and every policy threshold held (or a command succeeded)
    1  the assessment ran and a finding breaks a policy threshold
    2  bad input: plan, model file, data, configuration or arguments; nothing was written
    3  an internal error (a bug in aisec); nothing was written
  130  interrupted by the user; nothing was written
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_POLICY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class AisecError(Exception):
    """Base of every error aisec raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code: int = EXIT_INTERNAL


class BadInputError(AisecError, ValueError):
    """Input the user gave is wrong; the message names the file, field or value."""

    exit_code = EXIT_BAD_INPUT


class PlanError(BadInputError):
    """An assessment plan that does not validate."""


class ModelLoadError(BadInputError):
    """A model file that cannot be loaded, or may not be loaded without being declared trusted."""


class DataError(BadInputError):
    """Data that does not fit the model: wrong shape, NaN, out of bounds, bad labels."""


class CapabilityError(BadInputError):
    """An attack needs more access to the model than the target gives (e.g. scores from a label-only API)."""
