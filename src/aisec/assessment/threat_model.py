"""The threat model: what the attacker knows, what it may change, and how much it may spend.

After the BSI's best practices for adversarial deep learning: knowledge (white box, grey box with scores,
black box with labels only), the attacker's capability (a norm and budgets for its perturbation), the query
budget, and the life-cycle stage the attack happens in.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aisec.targets.base import Access


class Stage(str, enum.Enum):
    DATA = "data"
    TRAINING = "training"
    DEPLOYMENT = "deployment"
    OPERATION = "operation"


class ThreatModel(BaseModel):
    """An attacker's knowledge, perturbation budgets and query budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    knowledge: Access = Field(
        Access.WHITE_BOX,
        description="white_box: weights and gradients; scores: class scores; labels: labels only",
    )
    norm: Literal["linf", "l2"] = Field("linf", description="how the size of a perturbation is measured")
    budgets: tuple[float, ...] = Field(
        (0.05, 0.1, 0.15, 0.2, 0.3),
        min_length=1,
        description="perturbation sizes to evaluate, in input units",
    )
    query_budget: int = Field(
        5000, gt=0, description="model queries a black-box attacker may make per sample"
    )
    stage: Stage = Stage.OPERATION

    @field_validator("budgets")
    @classmethod
    def _positive_sorted(cls, budgets: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (b > 0) for b in budgets):
            raise ValueError("every budget must be a positive number")
        if len(set(budgets)) != len(budgets):
            raise ValueError("budgets must be distinct")
        return tuple(sorted(budgets))
