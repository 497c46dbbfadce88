"""Evasion attacks: inputs manipulated at inference time so that the model errs.

Each module holds one algorithm: a frozen config dataclass and a function
`attack(target, x, y, config, *, target_labels=None, generator=None) -> EvasionResult`.
`registry.ATTACKS` names them for plans and the cascade.
"""
