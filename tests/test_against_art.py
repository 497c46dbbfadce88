"""Correctness anchor: our attacks are at least as strong as IBM ART's at the same budget."""

import numpy as np
import pytest
import torch

from aisec.attacks.evasion.cascade import run_cascade
from aisec.attacks.evasion.pgd import PGDConfig, pgd
from aisec.attacks.evasion.registry import STRONGEST
from aisec.targets.base import Access

pytestmark = pytest.mark.training  # its figures depend on trained models

art = pytest.importorskip("art")
BUDGETS = (0.05, 0.1, 0.15)


@pytest.fixture(scope="module")
def art_classifier(digits_model):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        digits_model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


def art_robust_count(model, attack, x, y) -> int:
    """Points ART's attack leaves correctly classified (counts, so that equal strength compares equal)."""
    x_adv = torch.as_tensor(attack.generate(x.numpy(), y.numpy()))
    with torch.no_grad():
        return int((model(x_adv).argmax(1) == y).sum())


@pytest.mark.parametrize("eps", BUDGETS)
def test_pgd_at_least_as_strong_as_art(digits, digits_model, digits_target, art_classifier, eps):
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    x, y = digits.test.x[:300], digits.test.y[:300]
    art_pgd = ProjectedGradientDescentPyTorch(
        art_classifier, eps=eps, eps_step=2.5 * eps / 40, max_iter=40, batch_size=300, verbose=False
    )
    theirs = art_robust_count(digits_model, art_pgd, x, y)
    # the configuration assessments run: PGD-40 from the clean input (as ART), then one random restart;
    # success at any iterate
    config = PGDConfig(eps=eps, restarts=1, random_start=False)
    result = pgd(digits_target, x, y, config, generator=torch.Generator().manual_seed(0))
    ours = int((~result.success).sum())
    assert ours <= theirs, (ours, theirs)


def test_cascade_at_least_as_strong_as_art_apgd(digits, digits_model, digits_target, art_classifier):
    from art.attacks.evasion import AutoProjectedGradientDescent

    x, y = digits.test.x[:300], digits.test.y[:300]
    cascade = run_cascade(
        digits_target,
        x,
        y,
        BUDGETS,
        "linf",
        STRONGEST[Access.WHITE_BOX],
        query_budget=1000,
        generator=torch.Generator().manual_seed(0),
    )
    for outcome in cascade.outcomes:
        art_apgd = AutoProjectedGradientDescent(
            art_classifier,
            norm=np.inf,
            eps=outcome.eps,
            eps_step=2 * outcome.eps,
            max_iter=100,
            nb_random_init=1,
            batch_size=300,
            verbose=False,
        )
        theirs = art_robust_count(digits_model, art_apgd, x, y)
        assert outcome.robust_count <= theirs, (outcome.eps, outcome.robust_count, theirs)


@pytest.mark.slow
def test_cascade_at_least_as_strong_as_art_autoattack(digits, digits_model, digits_target, art_classifier):
    from art.attacks.evasion import AutoAttack

    x, y = digits.test.x[:100], digits.test.y[:100]
    cascade = run_cascade(
        digits_target,
        x,
        y,
        BUDGETS,
        "linf",
        STRONGEST[Access.WHITE_BOX],
        query_budget=5000,
        generator=torch.Generator().manual_seed(0),
    )
    for outcome in cascade.outcomes:
        attack = AutoAttack(
            art_classifier, norm=np.inf, eps=outcome.eps, eps_step=2.5 * outcome.eps / 100, batch_size=100
        )
        theirs = art_robust_count(digits_model, attack, x, y)
        assert outcome.robust_count <= theirs, (outcome.eps, outcome.robust_count, theirs)
