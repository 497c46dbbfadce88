"""The five attack classes. Each attack is a function over batched tensors with a small frozen config."""

import enum


class AttackClass(str, enum.Enum):
    """The five classes of attack on AI systems (AIVD, "Develop AI systems securely")."""

    POISONING = "poisoning"
    EVASION = "evasion"
    BACKDOOR = "backdoor"
    EXTRACTION = "extraction"
    INFERENCE = "inference"
