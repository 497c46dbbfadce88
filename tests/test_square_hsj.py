"""Square Attack (scores only) and HopSkipJump (labels only): access, budgets and bounds kept, and strength
measured against white-box PGD on the same points of the digits CNN.

Thresholds sit below the figures measured over several runs (noted next to each); the CNN's training is not
bit-reproducible from run to run, so the figures move a little.
"""

import functools

import pytest
import torch
from torch import nn

from aisec.attacks.evasion.hopskipjump import HSJConfig, hopskipjump
from aisec.attacks.evasion.inputs import prepare
from aisec.attacks.evasion.norms import Norm, batch_norm
from aisec.attacks.evasion.pgd import PGDConfig, pgd, pgd_per_sample
from aisec.attacks.evasion.result import EvasionResult
from aisec.attacks.evasion.square import SquareConfig, square
from aisec.core.errors import CapabilityError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.targets.base import Access, InputSpec
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import label_only, scores_only

pytestmark = pytest.mark.training  # its figures depend on trained models


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def clean(digits, digits_model) -> LabelledData:
    """The first 200 test digits that the CNN classifies correctly."""
    x, y = digits.test.x[:200], digits.test.y[:200]
    with torch.no_grad():
        right = digits_model(x).argmax(1) == y
    return LabelledData(x[right], y[right], "digits/clean-correct")


def check_result(
    r: EvasionResult,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    budget: int,
    t: torch.Tensor | None = None,
) -> None:
    """What every result must satisfy: successes really fool the model, the budget and the bounds hold."""
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    goal = pred != y if t is None else pred == t
    assert goal[r.success].all(), "a reported success does not get the attacker's label from the model"
    assert (r.x_adv[~r.success] == x[~r.success]).all(), "failures must return the original input"
    assert torch.allclose(r.norm, batch_norm(r.x_adv - x, r.norm_kind))
    if r.eps is not None:
        assert (r.norm <= r.eps * (1 + 1e-5)).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert ((r.queries >= 1) & (r.queries <= budget)).all()


def pgd_minimal_norm(
    target: TorchTarget, x: torch.Tensor, y: torch.Tensor, norm: Norm, high: float
) -> torch.Tensor:
    """White-box reference: bisection (8 halvings from `high`) on a per-sample PGD-20 budget."""
    b = prepare(target, x, y, None, Access.WHITE_BOX, "reference")
    lo, hi = torch.zeros(len(x)), torch.full((len(x),), high)
    for _ in range(8):
        mid = (lo + hi) / 2
        _, ok, _ = pgd_per_sample(target, b, mid, PGDConfig(eps=high, norm=norm, steps=20), seeded())
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    return hi


# --- Square Attack --------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.2, 0.1])
def test_square_linf_close_to_white_box_pgd(clean, digits_model, digits_target, eps):
    """Measured: eps 0.2: Square 0.97-1.0 vs PGD-40 0.96-1.0, median queries 18-26;
    eps 0.1: Square 0.33-0.58 vs PGD-40 0.33-0.56 (ratio 1.00-1.12), median queries 64-87."""
    white = pgd(digits_target, clean.x, clean.y, PGDConfig(eps=eps, steps=40), generator=seeded())
    view = scores_only(digits_target)
    r = square(view, clean.x, clean.y, SquareConfig(eps=eps, queries=1000), generator=seeded())
    check_result(r, digits_model, clean.x, clean.y, 1000)
    assert view.queries.total == int(r.queries.sum()), "per-sample queries must add up to the model's count"
    median_q = float(r.queries[r.success].float().median())
    print(f"square linf eps={eps}: {r.success_rate:.3f} vs pgd {white.success_rate:.3f}, median q {median_q}")
    assert r.success_rate >= 0.8 * white.success_rate
    assert median_q <= 200


def test_square_l2_close_to_white_box_pgd(clean, digits_model, digits_target):
    """Measured at L2 eps 1.0: Square 0.89-0.98 vs PGD-40 0.94-0.995; median queries 17-24."""
    white = pgd(digits_target, clean.x, clean.y, PGDConfig(eps=1.0, norm="l2", steps=40), generator=seeded())
    config = SquareConfig(eps=1.0, norm="l2", queries=1000)
    r = square(scores_only(digits_target), clean.x, clean.y, config, generator=seeded())
    check_result(r, digits_model, clean.x, clean.y, 1000)
    median_q = float(r.queries[r.success].float().median())
    print(f"square l2 eps=1.0: {r.success_rate:.3f} vs pgd-40 {white.success_rate:.3f}, median q {median_q}")
    assert r.success_rate >= 0.8 * white.success_rate
    assert median_q <= 100


def test_square_targeted_reaches_the_target(clean, digits_model, digits_target):
    """Measured: 67-69% of points reach class y + 1 at L-inf eps 0.2 with 1000 queries."""
    t = (clean.y + 1) % 10
    config = SquareConfig(eps=0.2, queries=1000)
    r = square(scores_only(digits_target), clean.x, clean.y, config, target_labels=t, generator=seeded())
    check_result(r, digits_model, clean.x, clean.y, 1000, t)
    assert r.success_rate >= 0.5


def test_square_restarts_add_their_budgets(clean, digits_model, digits_target):
    config = SquareConfig(eps=0.1, queries=100, restarts=2)
    r = square(scores_only(digits_target), clean.x[:60], clean.y[:60], config, generator=seeded())
    check_result(r, digits_model, clean.x[:60], clean.y[:60], 200)
    assert (r.queries[~r.success] == 200).all(), "an unfooled sample spends both runs' budgets"


def test_square_needs_scores(clean, digits_target):
    with pytest.raises(CapabilityError):
        square(label_only(digits_target), clean.x[:5], clean.y[:5], SquareConfig(eps=0.1))


@pytest.mark.parametrize(
    "config,match",
    [
        (SquareConfig(eps=0.0), "eps"),
        (SquareConfig(eps=0.1, queries=0), "queries"),
        (SquareConfig(eps=0.1, restarts=0), "restarts"),
        (SquareConfig(eps=0.1, p_init=1.5), "p_init"),
        (SquareConfig(eps=0.1, norm="l1"), "norm"),  # type: ignore[arg-type]
    ],
)
def test_square_refuses_bad_config(clean, digits_target, config, match):
    with pytest.raises(DataError, match=match):
        square(scores_only(digits_target), clean.x[:5], clean.y[:5], config)


# --- tabular data ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tabular() -> tuple[TorchTarget, LabelledData]:
    """Logistic regression on breast_cancer, with per-feature bounds: the test set's own range per feature."""
    split = load_builtin("breast_cancer", seed=0)
    full_batch = len(split.train)
    model = fit(build_model(functools.partial(nn.Linear, 30, 2), 0), split.train, epochs=300, lr=0.05,
                batch_size=full_batch)  # fmt: skip
    x, y = split.test.x, split.test.y
    with torch.no_grad():
        right = model(x).argmax(1) == y
    spec = InputSpec((30,), 2, lower=tuple(x.min(0).values.tolist()), upper=tuple(x.max(0).values.tolist()))
    return TorchTarget(model, spec), LabelledData(x[right], y[right], "breast_cancer/clean-correct")


@pytest.mark.parametrize("norm,eps,ratio", [("linf", 0.1, 0.95), ("l2", 0.3, 0.8)])
def test_square_on_tabular_rows(tabular, norm, eps, ratio):
    """Rows (n, 30) with per-feature bounds, 1000 queries. Measured against white-box PGD-40: L-inf 0.876 vs
    0.876 (the optimum is a corner of the box); L2 0.596 vs 0.671 (random windows approach the dense optimal
    direction of a linear model slowly)."""
    target, data = tabular
    white = pgd(target, data.x, data.y, PGDConfig(eps=eps, norm=norm, steps=40), generator=seeded())
    r = square(scores_only(target), data.x, data.y, SquareConfig(eps, norm, queries=1000), generator=seeded())
    lo, hi = target.spec.bounds(data.x)
    assert (r.x_adv >= lo).all() and (r.x_adv <= hi).all()
    assert (r.norm <= eps * (1 + 1e-5)).all()
    with torch.no_grad():
        assert (target.module(r.x_adv[r.success]).argmax(1) != data.y[r.success]).all()
    print(f"tabular square {norm} eps={eps}: {r.success_rate:.3f} vs pgd-40 {white.success_rate:.3f}")
    assert white.success_rate > 0.4
    assert r.success_rate >= ratio * white.success_rate


# --- HopSkipJump ----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,high", [("l2", 2.0), ("linf", 0.3)])
def test_hopskipjump_minimal_norm_near_white_box(clean, digits_model, digits_target, norm, high):
    """Labels only, 1000 queries; 100% success. Measured medians: L2 0.60-0.74 vs PGD-20
    bisection 0.47-0.60 (ratio 1.15-1.34); L-inf 0.12-0.16 vs 0.096-0.123 (ratio 1.20-1.41)."""
    x, y = (clean.x, clean.y) if norm == "l2" else (clean.x[:100], clean.y[:100])
    view = label_only(digits_target)
    r = hopskipjump(view, x, y, HSJConfig(norm=norm, max_queries=1000), generator=seeded())
    check_result(r, digits_model, x, y, 1000)
    assert view.queries.total == int(r.queries.sum())
    reference = pgd_minimal_norm(digits_target, x, y, norm, high)
    ratio = float(r.norm[r.success].median() / reference.median())
    print(
        f"hsj {norm}: success {r.success_rate:.3f}, median {float(r.norm[r.success].median()):.4f}, "
        f"pgd bisection median {float(reference.median()):.4f}, ratio {ratio:.2f}"
    )
    assert r.success_rate >= 0.95
    assert ratio <= 1.6


def test_hopskipjump_with_eps_stops_at_eps(clean, digits_model, digits_target):
    """Success needs norm <= eps, and a sample stops there. Measured at L2 eps 1.2 with 1000 queries:
    94-97% success (as many as the minimal-norm run finds within 1.2), median queries 120-265."""
    x, y = clean.x[:100], clean.y[:100]
    r = hopskipjump(label_only(digits_target), x, y, HSJConfig(eps=1.2, max_queries=1000), generator=seeded())
    check_result(r, digits_model, x, y, 1000)
    assert r.success_rate >= 0.85
    assert float(r.queries[r.success].float().median()) < 500


def test_hopskipjump_respects_max_queries(clean, digits_model, digits_target):
    x, y = clean.x[:50], clean.y[:50]
    for budget in (1, 20, 150):
        r = hopskipjump(label_only(digits_target), x, y, HSJConfig(max_queries=budget), generator=seeded())
        check_result(r, digits_model, x, y, budget)


def test_hopskipjump_targeted_from_target_class_inputs(digits, clean, digits_model, digits_target):
    """Started, as in the paper, from inputs of the target class. Measured: 100% success with 500 queries."""
    x, y = clean.x[:100], clean.y[:100]
    t = (y + 1) % 10
    pool_x, pool_y = digits.test.x[200:], digits.test.y[200:]
    starts = pool_x[torch.stack([(pool_y == c).nonzero()[0, 0] for c in t.tolist()])]
    config = HSJConfig(max_queries=500)
    view = label_only(digits_target)
    r = hopskipjump(view, x, y, config, target_labels=t, generator=seeded(), starts=starts)
    check_result(r, digits_model, x, y, 500, t)
    assert view.queries.total == int(r.queries.sum())
    print(f"hsj targeted from target-class inputs: success {r.success_rate:.3f}")
    assert r.success_rate >= 0.95


def test_hopskipjump_targeted_from_noise(clean, digits_model, digits_target):
    """Starts from uniform noise the model labels as the target: target classes the model rarely gives to
    noise may find none in init_attempts draws. Measured: 69-98% success with 500 queries."""
    x, y = clean.x[:100], clean.y[:100]
    t = (y + 1) % 10
    config = HSJConfig(max_queries=500)
    r = hopskipjump(label_only(digits_target), x, y, config, target_labels=t, generator=seeded())
    check_result(r, digits_model, x, y, 500, t)
    print(f"hsj targeted from noise: success {r.success_rate:.3f}")
    assert r.success_rate >= 0.5


def test_hopskipjump_on_tabular_rows(tabular):
    target, data = tabular
    r = hopskipjump(label_only(target), data.x, data.y, HSJConfig(max_queries=500), generator=seeded())
    lo, hi = target.spec.bounds(data.x)
    assert (r.x_adv >= lo).all() and (r.x_adv <= hi).all()
    with torch.no_grad():
        assert (target.module(r.x_adv[r.success]).argmax(1) != data.y[r.success]).all()
    assert r.success_rate >= 0.95


def test_hopskipjump_returns_misclassified_points_unchanged(clean, digits_target):
    x, y = clean.x[:10], (clean.y[:10] + 1) % 10  # wrong labels: every point is already "adversarial"
    r = hopskipjump(label_only(digits_target), x, y, HSJConfig(), generator=seeded())
    assert r.success.all() and (r.norm == 0).all() and (r.queries == 1).all()


@pytest.mark.parametrize(
    "config,match",
    [
        (HSJConfig(eps=0.0), "eps"),
        (HSJConfig(max_queries=0), "max_queries"),
        (HSJConfig(max_iterations=0), "max_iterations"),
        (HSJConfig(init_evals=-1), "init_evals"),
        (HSJConfig(gamma=0.0), "gamma"),
        (HSJConfig(norm="l1"), "norm"),  # type: ignore[arg-type]
    ],
)
def test_hopskipjump_refuses_bad_config(clean, digits_target, config, match):
    with pytest.raises(DataError, match=match):
        hopskipjump(label_only(digits_target), clean.x[:5], clean.y[:5], config)


def test_hopskipjump_refuses_starts_that_do_not_match(clean, digits_target):
    with pytest.raises(DataError, match="4 starting points for 5 inputs"):
        hopskipjump(label_only(digits_target), clean.x[:5], clean.y[:5], HSJConfig(), starts=clean.x[:4])
