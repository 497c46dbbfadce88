"""Evasion attacks by name, as plans and the cascade refer to them.

Importing this module does not import torch: the plan validator needs only the names. Each entry's `run`
adapts the attack to the uniform call the cascade makes: one budget, one norm, one query budget.
To add an attack: write its module, then add an `AttackSpec` here (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aisec.targets.base import Access

if TYPE_CHECKING:
    import torch

    from aisec.attacks.evasion.norms import Norm
    from aisec.attacks.evasion.result import EvasionResult
    from aisec.targets.base import Target

Runner = Callable[
    ["Target", "torch.Tensor", "torch.Tensor", float, "Norm", int, "torch.Generator"], "EvasionResult"
]


@dataclass(frozen=True)
class AttackSpec:
    name: str
    needs: Access
    reference: str
    run: Runner


def _fgsm(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.fgsm import FGSMConfig, fgsm

    return fgsm(target, x, y, FGSMConfig(eps=eps, norm=norm), generator=generator)


def _pgd(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.pgd import PGDConfig, pgd

    # First run from the clean input (as ART and Madry et al.'s evaluation do), then one from a random start.
    config = PGDConfig(eps=eps, norm=norm, steps=40, restarts=1, random_start=False)
    return pgd(target, x, y, config, generator=generator)


def _apgd(loss: Literal["ce", "dlr"]) -> Runner:
    def run(target, x, y, eps, norm, query_budget, generator):
        from aisec.attacks.evasion.apgd import APGDConfig, apgd

        return apgd(target, x, y, APGDConfig(eps=eps, norm=norm, loss=loss), generator=generator)

    return run


def _apgd_t(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.apgd import APGDConfig, apgd_targeted

    return apgd_targeted(target, x, y, APGDConfig(eps=eps, norm=norm, loss="dlr"), generator=generator)


def _fab(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.fab import FABConfig, fab

    return fab(target, x, y, FABConfig(eps=eps, norm=norm), generator=generator)


def _fab_t(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.fab import FABConfig, fab_targeted

    return fab_targeted(target, x, y, FABConfig(eps=eps, norm=norm), generator=generator)


def _square(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.square import SquareConfig, square

    return square(target, x, y, SquareConfig(eps=eps, norm=norm, queries=query_budget), generator=generator)


def _hopskipjump(target, x, y, eps, norm, query_budget, generator):
    from aisec.attacks.evasion.hopskipjump import HSJConfig, hopskipjump

    return hopskipjump(
        target, x, y, HSJConfig(norm=norm, eps=eps, max_queries=query_budget), generator=generator
    )


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("fgsm", Access.WHITE_BOX, "Goodfellow et al., ICLR 2015", _fgsm),
        AttackSpec("pgd", Access.WHITE_BOX, "Madry et al., ICLR 2018", _pgd),
        AttackSpec("apgd-ce", Access.WHITE_BOX, "Croce & Hein, ICML 2020", _apgd("ce")),
        AttackSpec("apgd-dlr", Access.WHITE_BOX, "Croce & Hein, ICML 2020", _apgd("dlr")),
        AttackSpec("apgd-t", Access.WHITE_BOX, "Croce & Hein, ICML 2020", _apgd_t),
        AttackSpec("fab", Access.WHITE_BOX, "Croce & Hein, ICML 2020 (FAB)", _fab),
        AttackSpec("fab-t", Access.WHITE_BOX, "Croce & Hein, ICML 2020 (FAB)", _fab_t),
        AttackSpec("square", Access.SCORES, "Andriushchenko et al., ECCV 2020", _square),
        AttackSpec("hopskipjump", Access.LABELS, "Chen, Jordan & Wainwright, IEEE S&P 2020", _hopskipjump),
    )
}
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS)

# The strongest evaluation each level of knowledge allows: AutoAttack's standard cascade for a white box
# (APGD-CE, APGD-T over the top-9 classes, FAB-T, Square with the query budget), Square with scores only,
# HopSkipJump with labels only.
STRONGEST: dict[Access, tuple[str, ...]] = {
    Access.WHITE_BOX: ("apgd-ce", "apgd-t", "fab-t", "square"),
    Access.SCORES: ("square",),
    Access.LABELS: ("hopskipjump",),
}
