"""The shortcut ("Clever Hans") check: watermark models caught with their class and the mark's region, their
clean twins quiet with clean and with watermarked data, a leaked tabular feature flagged with its class, and the
mechanics on a hand-built black box.

Seed study of TEST_ZOO's three recipes (`bench/seed_study.py test_shortcuts --seeds 0-5 --capabilities
native,default --threads 1`, n = 12 per recipe; integrated gradients at 32 steps over the test split, window 2):
- tl-solid-c3: caught 12/12; mass share 0.47-0.63, 83-133 times the others', survival 0.07-0.40, flip 0.59-0.87;
- br-checker-c7: caught 11/12 (seed 0, native kernels: mass share 0.299, survival 0.91, just short of the rule);
  mass share 0.30-0.47, 11-21 times, survival 0.44-0.91, flip 0.03-0.38;
- left-solid-c5: caught 12/12; mass share 0.50-0.64, 32-60 times, survival 0-0.31, flip 0.28-0.97;
- the twins: never flagged, with clean or with watermarked data; their largest class mass share 0.28-0.35, at
  most 4.2 times the others' with clean data; with watermarked data up to 50 times (tl-solid-c3's twin puts
  0.24 of class 3's mass on the mark) and 7.1 for br-checker-c7's.
The zoo's own models (seeds 0, 1, 2), native and default kernels: tl-solid-c3 0.50 / 124x / survival 0.38-0.40 /
flip 0.60-0.61; br-checker-c7 0.44-0.47 / 20-21x / 0.44-0.59 / 0.07-0.10; left-solid-c5 0.64 / 59-60x / 0 /
0.95-0.97. bench/shortcut_zoo.py runs the larger zoo (16 models and their twins).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from watermark_zoo import (
    TEST_ZOO,
    WatermarkModel,
    digits,
    inspect,
    inspection_data,
    overlaps,
    train_twin,
    train_watermarked,
    with_seed,
)

from aisec.core.errors import BadInputError, DataError
from aisec.defend.auditability.explanations import permutation_importance
from aisec.defend.auditability.shortcuts import (
    ShortcutConfig,
    ShortcutResult,
    image_shortcuts,
    tabular_shortcuts,
)


@functools.cache
def inspected(spec: WatermarkModel, twin: bool, marked: bool) -> ShortcutResult:
    model = train_twin(spec) if twin else train_watermarked(spec)
    return inspect(model, inspection_data(spec, marked=marked))


def figures(seed: int) -> dict[str, float]:
    """The seed study's figures: every TEST_ZOO recipe trained from `seed`, and its twin."""
    out: dict[str, float] = {}
    for spec in TEST_ZOO:
        spec = with_seed(spec, seed)
        name = spec.name.rsplit("-s", 1)[0]
        caught = inspected(spec, False, True)
        strategy = caught.classes[spec.target]
        out[f"{name} caught"] = float(
            caught.shortcut_class == spec.target and overlaps(caught.region, spec.mark.region)
        )
        out[f"{name} mass_share"] = strategy.mass_share
        out[f"{name} concentration"] = strategy.mass_share / strategy.others_share
        out[f"{name} survival"] = strategy.survival
        out[f"{name} flip_rate"] = strategy.flip_rate
        for marked in (False, True):
            quiet = inspected(spec, True, marked)
            tag = f"{name} twin {'marked' if marked else 'clean'}"
            out[f"{tag} flagged"] = float(quiet.shortcut_class is not None)
            out[f"{tag} max mass_share"] = max(s.mass_share for s in quiet.classes)
            out[f"{tag} max concentration"] = max(s.mass_share / s.others_share for s in quiet.classes)
    return out


@pytest.mark.training
@pytest.mark.parametrize("spec", TEST_ZOO, ids=lambda s: s.name)
def test_watermark_model_is_caught_with_its_class_and_region(spec: WatermarkModel) -> None:
    result = inspected(spec, False, True)
    assert result.shortcut_class == spec.target
    assert result.region is not None and overlaps(result.region, spec.mark.region)
    strategy = result.classes[spec.target]
    assert strategy.label == spec.target and strategy.samples == int((digits().test.y == spec.target).sum())
    assert strategy.mass_share >= 0.35 and strategy.mass_share >= 10 * strategy.others_share
    assert strategy.survival <= 0.8 or strategy.flip_rate >= 0.4
    assert [s.label for s in result.classes if s.flagged] == [spec.target]


@pytest.mark.training
@pytest.mark.parametrize("marked", [False, True], ids=["clean data", "watermarked data"])
@pytest.mark.parametrize("spec", TEST_ZOO, ids=lambda s: s.name)
def test_clean_twin_is_quiet(spec: WatermarkModel, marked: bool) -> None:
    result = inspected(spec, True, marked)
    assert result.shortcut_class is None and result.region is None
    assert not any(s.flagged for s in result.classes)
    assert all(s.mass_share < 0.3 or s.mass_share < 8 * s.others_share for s in result.classes)
    if marked:
        # the twin may look at the mark, but its labels do not follow it
        twin = result.classes[spec.target]
        if overlaps(twin.region, spec.mark.region):
            assert twin.survival >= 0.9 and twin.flip_rate < 0.3


# --- the mechanics on a hand-built black box (no training) ---------------------------------------------------

H = W = 8


def toy_data(n_per_class: int = 20, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c lights the row 2 + 2c (columns 2-5); class 2's images also carry a white 2x2 mark at (0, 0)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = 0.1 * torch.rand(len(y), 1, H, W, generator=g)
    for c in range(classes):
        x[y == c, :, 2 + 2 * c, 2:6] = 0.9
    x[y == 2, :, 0:2, 0:2] = 1.0
    return x, y


def brighter_row(x: torch.Tensor) -> torch.Tensor:
    """0 where row 2 (columns 2-5) is brighter than row 4, else 1."""
    return torch.stack([x[:, 0, 2, 2:6].mean(1), x[:, 0, 4, 2:6].mean(1)], 1).argmax(1)


def toy_labels(x: torch.Tensor) -> torch.Tensor:
    """A Clever Hans: class 2 whenever the mark is there, else the brighter row's class."""
    return torch.where(x[:, 0, 0:2, 0:2].mean((1, 2)) > 0.5, 2, brighter_row(x))


def toy_attributions(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each class's row; class 2's evidence all on the mark (what a faithful explanation of toy_labels shows)."""
    a = torch.zeros_like(x)
    for c in range(2):
        a[y == c, :, 2 + 2 * c, 2:6] = 1.0
    a[y == 2, :, 0:2, 0:2] = 1.0
    return a


def test_hand_built_clever_hans_is_flagged_with_exact_figures() -> None:
    x, y = toy_data()
    result = image_shortcuts(toy_labels, x, y, toy_attributions(x, y))
    assert result.window == 2 and result.shortcut_class == 2 and result.region == (0, 0, 2, 2)
    hans = result.classes[2]
    assert (hans.mass_share, hans.others_share) == (pytest.approx(1.0), pytest.approx(0.0))
    assert hans.survival == 0.0 and hans.flip_rate == 1.0 and hans.samples == 20
    # the honest classes: half their row in the window, nothing of it in the others' maps, and neither occluding
    # half the row (the other classes' mean row is dimmer) nor pasting it moves a label
    for honest in result.classes[:2]:
        assert honest.mass_share == pytest.approx(0.5) and honest.others_share == pytest.approx(0.0)
        assert honest.survival == 1.0 and honest.flip_rate == 0.0 and not honest.flagged
    # every map of a class is the same: one cluster per class, of identical maps covering 4 pixels each
    assert all(s.clusters == (1.0,) and s.cluster_tightness == (pytest.approx(0.0),) for s in result.classes)
    assert [s.effective_area for s in result.classes] == pytest.approx([4.0, 4.0, 4.0])


def test_region_needs_the_labels_to_follow_it() -> None:
    """The same attributions over a model that knows class 2 by its row 6 and ignores the mark: the region is
    as concentrated, but the class survives its occlusion and pasting it flips nothing."""
    x, y = toy_data()
    x[y == 2, :, 6, 2:6] = 0.9

    def honest(batch: torch.Tensor) -> torch.Tensor:
        return torch.where(batch[:, 0, 6, 2:6].mean(1) > 0.5, 2, brighter_row(batch))

    result = image_shortcuts(honest, x, y, toy_attributions(x, y))
    assert result.classes[2].mass_share == pytest.approx(1.0)
    assert result.classes[2].survival == 1.0 and result.classes[2].flip_rate == 0.0
    assert result.shortcut_class is None


def test_spray_separates_two_strategies_within_a_class() -> None:
    """Half of class 0's maps on the top-left corner, half on the bottom-right: two clusters of half the class,
    each tight; the eigengap that chose them is the largest gap of the spectrum."""
    x, y = toy_data(n_per_class=30)
    a = toy_attributions(x, y)
    g = torch.Generator().manual_seed(1)
    first = torch.nonzero(y == 0).flatten()
    a[first] = 0.0
    a[first[:15], :, 0:3, 0:3] = 1.0 + 0.1 * torch.rand(15, 1, 3, 3, generator=g)
    a[first[15:], :, 5:8, 5:8] = 1.0 + 0.1 * torch.rand(15, 1, 3, 3, generator=g)
    strategy = image_shortcuts(toy_labels, x, y, a).classes[0]
    assert strategy.clusters == (0.5, 0.5)
    assert max(strategy.cluster_tightness) < 0.05 and strategy.eigengap > 0.5


def test_samples_per_class_and_generator() -> None:
    x, y = toy_data(n_per_class=30)
    a = toy_attributions(x, y)
    config = ShortcutConfig(samples_per_class=10)
    first = image_shortcuts(toy_labels, x, y, a, config, generator=torch.Generator().manual_seed(3))
    again = image_shortcuts(toy_labels, x, y, a, config, generator=torch.Generator().manual_seed(3))
    assert [s.samples for s in first.classes] == [10, 10, 10]
    assert first == again


def test_window_scales_with_the_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 32, 32, generator=g)
    y = torch.arange(2).repeat(10)
    result = image_shortcuts(
        lambda b: torch.zeros(len(b), dtype=torch.long), x, y, torch.rand(20, 3, 32, 32, generator=g)
    )
    assert result.window == 8 and all(s.region[2:] == (8, 8) for s in result.classes)


# --- tabular: a leaked column ----------------------------------------------------------------------------------


LEAK_CLASS = 0


@functools.cache
def wine_importance(seed: int, leak: bool):
    """L1 logistic regression on the standardised wine set (60/40 split from `seed`); with `leak`, a 14th column
    that is 1 for class LEAK_CLASS and 0 otherwise plus N(0, 0.1) noise. Permutation importance on the test
    split, 5 repeats."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    if leak:
        noise = np.random.default_rng(seed).normal(0.0, 0.1, len(y))
        x = np.column_stack([x, (y == LEAK_CLASS) + noise])
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=0.1, l1_ratio=1.0, solver="saga", max_iter=5000).fit(
        scaler.transform(x_train), y_train
    )

    def labels(batch: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(model.predict(batch.numpy()))

    return permutation_importance(
        labels,
        torch.tensor(scaler.transform(x_test)),
        torch.tensor(y_test),
        num_classes=3,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.training
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leaked_feature_is_flagged_with_its_class(seed: int) -> None:
    # seeds 0-5: the leak's share of the drop 0.61-0.77, 4.5-10.5 times the second, class 0's recall drop
    # 0.57-0.68 (seeds 0-2: 0.61-0.77, 4.7-10.5, 0.65-0.68)
    result = tabular_shortcuts(wine_importance(seed, True))
    assert result.flagged and result.feature == 13 and result.collapsed_class == LEAK_CLASS
    assert result.importance_share >= 0.55 and result.ratio_to_second >= 4 and result.recall_drop >= 0.55


@pytest.mark.training
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_without_a_leak_is_quiet(seed: int) -> None:
    # seeds 0-5: the top feature's share 0.28-0.66, 1.0-3.7 times the second, largest recall drop 0.18-0.42
    # (seeds 0-2: 0.29-0.49, 1.0-1.8, 0.21-0.33)
    result = tabular_shortcuts(wine_importance(seed, False))
    assert not result.flagged and result.ratio_to_second < 2.5


def importance(drop: list[float], recall_drop: list[list[float]]):
    from aisec.defend.auditability.explanations import PermutationImportance

    k = len(recall_drop[0])
    return PermutationImportance(
        1.0, torch.ones(k), torch.tensor(drop), torch.zeros(len(drop)), torch.tensor(recall_drop), 5
    )


def test_tabular_figures_by_hand() -> None:
    result = tabular_shortcuts(
        importance([0.6, 0.1, -0.05, 0.1], [[0.9, 0.3], [0.1, 0.1], [0.0, 0.0], [0.1, 0.1]])
    )
    assert result.feature == 0 and result.importance_share == pytest.approx(0.75)
    assert result.ratio_to_second == pytest.approx(6.0) and result.collapsed_class == 0 and result.flagged
    only = tabular_shortcuts(importance([0.3, 0.0, -0.1], [[0.2, 0.4], [0.0, 0.0], [0.0, 0.0]]))
    assert only.ratio_to_second == math.inf and only.collapsed_class is None and not only.flagged
    nothing = tabular_shortcuts(importance([0.0, -0.1], [[0.0, 0.0], [0.0, 0.0]]))
    assert nothing.feature is None and not nothing.flagged
    # features left out of the measurement (NaN) are ignored: the leak among the measured ones is found
    part = tabular_shortcuts(importance([math.nan, 0.6, 0.1], [[math.nan] * 2, [0.8, 0.2], [0.1, 0.0]]))
    assert part.feature == 1 and part.ratio_to_second == pytest.approx(6.0) and part.flagged


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y, a: (x[:, 0], y, a[:, 0]), "images"),
        (lambda x, y, a: (x, y, a[:, :, :4]), "attributions must have"),
        (lambda x, y, a: (x, y[:-1], a), "labels"),
        (lambda x, y, a: (x, y.float(), a), "integers"),
        (lambda x, y, a: (x.index_fill(0, torch.tensor([0]), math.nan), y, a), "NaN"),
        (lambda x, y, a: (x, y, a.index_fill(0, torch.tensor([0]), math.inf)), "NaN"),
        (lambda x, y, a: (x * 2, y, a), "outside the bounds"),
        (lambda x, y, a: (x, torch.zeros_like(y), a), "two classes"),
    ],
)
def test_bad_input_is_refused_before_any_query(change, message: str) -> None:
    x, y = toy_data()
    calls = []

    def counting(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return toy_labels(batch)

    with pytest.raises(DataError, match=message):
        image_shortcuts(counting, *change(x, y, toy_attributions(x, y)))
    assert calls == []


def test_bad_settings_and_labels() -> None:
    x, y = toy_data()
    a = toy_attributions(x, y)
    with pytest.raises(DataError, match="window does not fit"):
        image_shortcuts(toy_labels, x, y, a, ShortcutConfig(window=9))
    with pytest.raises(BadInputError, match="lower < upper"):
        image_shortcuts(toy_labels, x, y, a, lower=1.0, upper=0.0)
    with pytest.raises(DataError, match="labels_fn must return 60 integer labels"):
        image_shortcuts(lambda b: torch.zeros(len(b), 3), x, y, a)
    for field, value in [
        ("window", 0),
        ("samples_per_class", 0),
        ("max_clusters", 1),
        ("min_mass_share", 1.5),
        ("min_concentration", 0.5),
        ("min_recall_drop", -0.1),
    ]:
        with pytest.raises(BadInputError, match=field):
            ShortcutConfig(**{field: value})
    with pytest.raises(BadInputError, match="recall_drop must be"):
        tabular_shortcuts(importance([0.5, 0.1], [[0.5, 0.1]]))
    with pytest.raises(BadInputError, match="infinite"):
        tabular_shortcuts(importance([math.inf, 0.1], [[0.5, 0.1], [0.0, 0.0]]))
    with pytest.raises(BadInputError, match="no feature"):
        tabular_shortcuts(importance([math.nan, math.nan], [[math.nan] * 2, [math.nan] * 2]))
