"""The five classes of attack on AI systems, the vocabulary every finding and report is filed under."""

from __future__ import annotations

import enum


class AttackClass(str, enum.Enum):
    """The five classes of attack on AI systems (AIVD, "Develop AI systems securely")."""

    POISONING = "poisoning"
    EVASION = "evasion"
    BACKDOOR = "backdoor"
    EXTRACTION = "extraction"
    INFERENCE = "inference"
