"""The user's own code that a plan names as `package.module:function` (a model factory, a training recipe).

Importing it runs it: that is the point (it is the user's code, like a test suite's). Model files, by
contrast, are never executed (docs/supply-chain.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from aisec.core.errors import PlanError


def import_callable(reference: str, field: str) -> Callable[..., Any]:
    """The callable `package.module:function` named by plan field `field`; PlanError if it cannot be had."""
    module_name, _, attr = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise PlanError(f"{field} {reference!r} cannot be imported: {e}") from None
    if not callable(found):
        raise PlanError(f"{field} {reference!r} is a {type(found).__name__}, not a function")
    return found
