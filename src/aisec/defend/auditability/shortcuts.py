"""Shortcut ("Clever Hans") check: does the model recognise a class by the object, or by an inconspicuous mark that
only that class's inputs carry, such as a watermark? (NCSA principle 5; the name and SpRAy from Lapuschkin et
al. 2019, "Unmasking Clever Hans predictors and assessing what machines really learn", Nature Communications.)

Images, from attribution maps of each sample's own class (computed by the caller, e.g. integrated gradients) and
any function that labels inputs (a black box will do):

1. Where each class's evidence sits: every |attribution| map, summed over channels, is normalised to sum 1; the
   w x w window with the largest mean share over the class is its region, `mass_share` that share and
   `others_share` the mean share the same window holds in the other classes' maps (each class weighted alike).
2. SpRAy (spectral relevance analysis): per class, spectral clustering of the maps (downsampled to at most
   `spray_size` pixels a side) on a symmetric k-nearest-neighbour graph, the number of clusters by the largest
   gap among the first eigenvalues of its normalised Laplacian; each cluster's size share and tightness. A
   shortcut on every image of a class gives no sub-cluster; it shows across classes instead: the class's maps
   cover far fewer pixels (`effective_area`, the participation ratio 1 / sum p^2) than the other classes'.
3. The counterfactual test, both ways: the region occluded on the class's inputs (`survival`: share still given
   the class) and the region's pixels, taken from the class's inputs, pasted on the other classes' inputs
   (`flip_rate`: share now given the class). Occlusion fills the region with the per-pixel mean of the other
   classes' inputs: what the region holds when the class is absent. The lower bound would be a mark of its
   own on images whose background is not at the lower bound; the mean over all the data would carry part of a
   mark that every image of the class has.

A class is flagged when its region holds a large share of its mass, many times what the region holds for the
other classes, and the model's labels follow the region (low survival or high flip rate). The thresholds come
from digits CNNs with a 1x2 to 3x3 watermark on every image of one class, in training and in the inspected data,
and their clean twins (tests/test_shortcuts.py, bench/shortcut_zoo.py; integrated gradients, window 2). Where a
model was caught, the marked class held 0.33-0.64 of its mass in the window against 0.001-0.07 for the other
classes, with survival 0-0.73 and flip rate 0.04-0.97. The other classes of those models and of the twins held
at most 0.39, at most 6.5 times the other classes' share, and pasting their region flipped at most 0.13. A twin
inspected with watermarked data put at most 0.28 of the class's mass on the mark (up to 49 times the others'),
but it kept the class when the mark was occluded (survival >= 0.96) and pasting the mark flipped at most 0.2.
What the check misses: a mark that the other classes' evidence also covers (a mark in the middle of the digit:
others' share 0.11, concentration 3), and a faint mark (half brightness, 0.28 of the mass), even where the
model relies on it. SpRAy split the classes of clean and marked models alike into 1-5 clusters (mostly 1-2) of
similar size: with the mark on every image of its class there is no sub-strategy to find. The marked class
stands out across classes instead, its maps tighter and on fewer pixels (`area_ratio` 0.43-1.03, median 0.6,
where caught; >= 0.73 for the other classes): reported, not part of the rule.

Tabular models: from permutation importance (`explanations.permutation_importance`), a feature whose accuracy
drop dwarfs the others' and whose permutation collapses one class's recall: a column that leaks that class.
Importance alone cannot tell a leak from a genuinely decisive feature; the check points a reviewer at it. On the
wine set (3 classes) an L1 logistic regression with a column leaking class 0 gave that column 0.61-0.77 of the
drop, 4.5-10.5 times the second, and class 0 lost 0.57-0.68 of its recall; the same model without the leak
gave its top feature at most 0.66 of the drop and 3.7 times the second, and no class lost more than 0.42. A
class's recall can fall by at most the share of samples not of that class, so `min_recall_drop` (0.5) suits a
few classes; a leak of a class whose two neighbours still need a feature of their own to be told apart leaves
that feature a large drop too (ratio 1.4-2.0 for a class-2 leak on wine, seeds 0-2), and is missed at the
default ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from aisec.core.errors import BadInputError, DataError

if TYPE_CHECKING:
    from aisec.defend.auditability.explanations import PermutationImportance

Region = tuple[int, int, int, int]


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


@dataclass(frozen=True)
class ShortcutConfig:
    """window: side of the square region in pixels; None: max(2, round(min(H, W) / 4)), a sixteenth of the
    image's area (2 on 8x8 digits, 8 on 32x32 images). samples_per_class: at most this many samples of each
    class are drawn (with the generator) and used throughout. SpRAy: maps downsampled by area averaging to at
    most `spray_size` pixels a side, a `neighbours`-nearest-neighbour graph, at most `max_clusters` clusters.
    Images flag a class when mass_share >= min_mass_share, mass_share >= min_concentration * others_share, and
    survival <= max_survival or flip_rate >= min_flip_rate. Tabular: a feature is flagged when its share of the
    total positive accuracy drop is >= min_importance_share, it is >= min_importance_ratio times the second
    largest drop, and permuting it drops one class's recall by >= min_recall_drop."""

    window: int | None = None
    samples_per_class: int = 100
    spray_size: int = 16
    neighbours: int = 10
    max_clusters: int = 5
    min_mass_share: float = 0.3
    min_concentration: float = 8.0
    max_survival: float = 0.9
    min_flip_rate: float = 0.25
    min_importance_share: float = 0.5
    min_importance_ratio: float = 3.0
    min_recall_drop: float = 0.5

    def __post_init__(self) -> None:
        if self.window is not None and (_not_int(self.window) or self.window < 1):
            raise BadInputError(f"shortcuts: window must be a positive integer or None, got {self.window!r}")
        for name in ("samples_per_class", "spray_size", "neighbours"):
            value = getattr(self, name)
            if _not_int(value) or value < 1:
                raise BadInputError(f"shortcuts: {name} must be a positive integer, got {value!r}")
        if _not_int(self.max_clusters) or self.max_clusters < 2:
            raise BadInputError(f"shortcuts: max_clusters must be an integer >= 2, got {self.max_clusters!r}")
        for name in (
            "min_mass_share",
            "max_survival",
            "min_flip_rate",
            "min_importance_share",
            "min_recall_drop",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise BadInputError(f"shortcuts: {name} must be in [0, 1], got {value!r}")
        for name in ("min_concentration", "min_importance_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1):
                raise BadInputError(f"shortcuts: {name} must be a number >= 1, got {value!r}")


@dataclass(frozen=True)
class ClassStrategy:
    """What one class's evidence looks like. `region` (top, left, height, width) in pixels; `mass_share` and
    `others_share` its share of this class's and of the other classes' attribution mass; `survival` the share
    of the class's inputs given the class that keep it with the region occluded, `flip_rate` the share of the
    other classes' inputs not given the class that get it with the region pasted in (NaN when there are none).
    SpRAy: `clusters` the cluster size shares, largest first, `cluster_tightness` each cluster's mean total
    variation distance from its members to their mean map (0: identical maps, 1: disjoint), `eigengap` the gap
    that chose their number; `effective_area` the mean participation ratio of the class's maps in pixels and
    `area_ratio` that over the median of the other classes' (well below 1: a class that looks at far fewer
    pixels than every other)."""

    label: int
    samples: int
    region: Region
    mass_share: float
    others_share: float
    survival: float
    flip_rate: float
    clusters: tuple[float, ...]
    cluster_tightness: tuple[float, ...]
    eigengap: float
    effective_area: float
    area_ratio: float
    flagged: bool


@dataclass(frozen=True)
class ShortcutResult:
    """One strategy per class present in the data, in label order; `shortcut_class` the flagged class whose
    region holds the largest share of its mass (None when no class is flagged) and `region` that region."""

    classes: tuple[ClassStrategy, ...]
    shortcut_class: int | None
    region: Region | None
    window: int


@dataclass(frozen=True)
class TabularShortcutResult:
    """`feature` the feature with the largest accuracy drop (None when no permutation lowered accuracy),
    `importance_share` its share of the total positive drop, `ratio_to_second` its drop over the second largest
    positive drop (inf when no other drop is positive); `collapsed_class` the class whose recall its permutation
    lowers most when that drop reaches the configured minimum (else None), `recall_drop` that class's drop."""

    feature: int | None
    importance_share: float
    ratio_to_second: float
    collapsed_class: int | None
    recall_drop: float
    flagged: bool


def image_shortcuts(
    labels_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    attributions: torch.Tensor,
    config: ShortcutConfig = ShortcutConfig(),
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator | None = None,
) -> ShortcutResult:
    """Each class's attribution region, SpRAy clusters and counterfactual figures, and the class (if any) that a
    small region decides. `labels_fn(batch) -> (len(batch),)` labels, given CPU float batches; it is called once
    on the sampled inputs and once per class on that class's occluded and pasted inputs.

    Raises DataError before any call to `labels_fn`: inputs not (n, C, H, W), attributions of another shape,
    labels not (n,) integers, non-finite values, inputs outside [lower, upper], fewer than two classes, or a
    window larger than the images."""
    window = _check_images(x, y, attributions, config, lower, upper)
    generator = generator or torch.Generator().manual_seed(0)
    pick = _sample(y, config.samples_per_class, generator)
    x, y = x[pick].detach().cpu().float(), y[pick].cpu()
    maps = _normalised_maps(attributions[pick].detach().cpu().double())
    before = _labels(labels_fn, x)
    labels = torch.unique(y).tolist()
    means = torch.stack([maps[y == k].mean(0) for k in labels])
    areas = torch.stack([(1.0 / maps[y == k].square().sum((1, 2))).mean() for k in labels])
    strategies = []
    for i, k in enumerate(labels):
        own = y == k
        region, mass = _best_window(means[i], window)
        others_share = float(_window_share(means[torch.arange(len(labels)) != i], region).mean())
        survival, flip_rate = _counterfactual(labels_fn, x, own, before, k, region, generator)
        shares, tightness, eigengap = _spray(maps[own], config, generator)
        area = float(areas[i])
        area_ratio = area / float(areas[torch.arange(len(labels)) != i].median())
        flagged = (
            mass >= config.min_mass_share
            and mass >= config.min_concentration * others_share
            and (survival <= config.max_survival or flip_rate >= config.min_flip_rate)
        )
        strategies.append(
            ClassStrategy(
                label=int(k),
                samples=int(own.sum()),
                region=region,
                mass_share=mass,
                others_share=others_share,
                survival=survival,
                flip_rate=flip_rate,
                clusters=shares,
                cluster_tightness=tightness,
                eigengap=eigengap,
                effective_area=area,
                area_ratio=area_ratio,
                flagged=flagged,
            )
        )
    flagged_classes = [s for s in strategies if s.flagged]
    worst = max(flagged_classes, key=lambda s: s.mass_share, default=None)
    return ShortcutResult(
        tuple(strategies),
        worst.label if worst is not None else None,
        worst.region if worst is not None else None,
        window,
    )


def tabular_shortcuts(
    importance: PermutationImportance, config: ShortcutConfig = ShortcutConfig()
) -> TabularShortcutResult:
    """The feature whose permutation costs most accuracy, how far it dwarfs the others, and the class whose
    recall collapses without it. Features left unmeasured (NaN drops, `permutation_importance(features=...)`)
    are left out. Raises BadInputError for drops that are not (F,) and (F, K), infinite, or all unmeasured."""
    drop, recall_drop = importance.drop.double(), importance.recall_drop.double()
    if drop.dim() != 1 or len(drop) < 1:
        raise BadInputError(f"shortcuts: importance.drop must be (F,) with F >= 1, got {tuple(drop.shape)}")
    if recall_drop.dim() != 2 or recall_drop.shape[0] != len(drop) or recall_drop.shape[1] < 2:
        raise BadInputError(
            f"shortcuts: importance.recall_drop must be (F, K) = ({len(drop)}, K >= 2), got "
            f"{tuple(recall_drop.shape)}"
        )
    measured = ~torch.isnan(drop)
    if not measured.any():
        raise BadInputError("shortcuts: importance.drop measures no feature (all NaN)")
    if not (torch.isfinite(drop[measured]).all() and torch.isfinite(recall_drop[measured]).all()):
        raise BadInputError("shortcuts: importance drops of measured features contain NaN or infinite values")
    positive = torch.where(measured, drop, 0.0).clamp_min(0)
    total = float(positive.sum())
    if total == 0:
        return TabularShortcutResult(None, 0.0, 0.0, None, 0.0, False)
    ranked = positive.sort(descending=True)
    feature = int(ranked.indices[0])
    first = float(ranked.values[0])
    second = float(ranked.values[1]) if len(ranked.values) > 1 else 0.0
    share = first / total
    ratio = first / second if second > 0 else math.inf
    worst_drop, worst_class = recall_drop[feature].max(0)
    collapsed = int(worst_class) if float(worst_drop) >= config.min_recall_drop else None
    flagged = (
        share >= config.min_importance_share
        and ratio >= config.min_importance_ratio
        and collapsed is not None
    )
    return TabularShortcutResult(feature, share, ratio, collapsed, float(worst_drop), flagged)


def _check_images(
    x: torch.Tensor,
    y: torch.Tensor,
    attributions: torch.Tensor,
    config: ShortcutConfig,
    lower: float,
    upper: float,
) -> int:
    if x.dim() != 4:
        raise DataError(f"shortcuts: inputs must be images (n, C, H, W), got shape {tuple(x.shape)}")
    if attributions.shape != x.shape:
        raise DataError(
            f"shortcuts: attributions must have the inputs' shape {tuple(x.shape)}, got {tuple(attributions.shape)}"
        )
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(f"shortcuts: expected {len(x)} labels, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"shortcuts: labels must be integers, got {y.dtype}")
    if not (torch.isfinite(x).all() and torch.isfinite(attributions).all()):
        raise DataError("shortcuts: the inputs or attributions contain NaN or infinite values")
    if not lower < upper:
        raise BadInputError(f"shortcuts: input bounds must satisfy lower < upper, got [{lower}, {upper}]")
    if x.min() < lower or x.max() > upper:
        raise DataError(
            f"shortcuts: inputs range over [{float(x.min()):g}, {float(x.max()):g}], outside the bounds "
            f"[{lower:g}, {upper:g}]"
        )
    if torch.unique(y).numel() < 2:
        raise DataError("shortcuts: the check needs samples of at least two classes")
    h, w = x.shape[2:]
    window = config.window if config.window is not None else max(2, round(min(h, w) / 4))
    if window > min(h, w):
        raise DataError(f"shortcuts: a {window}x{window} window does not fit in {h}x{w} images")
    return window


def _sample(y: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of at most `per_class` samples of each class, drawn at random, in their original order."""
    chosen = []
    for k in torch.unique(y):
        idx = torch.nonzero(y == k).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def _normalised_maps(attributions: torch.Tensor) -> torch.Tensor:
    """|attribution| summed over channels, each map scaled to sum 1; an all-zero map becomes uniform (it says
    nothing about where the evidence is)."""
    maps = attributions.abs().sum(1)
    total = maps.sum((1, 2), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / maps[0].numel())
    return torch.where(total > 0, maps / total.clamp_min(torch.finfo(maps.dtype).tiny), uniform)


def _best_window(mean_map: torch.Tensor, window: int) -> tuple[Region, float]:
    shares = F.avg_pool2d(mean_map[None, None], window, stride=1)[0, 0] * window**2
    best = int(shares.argmax())
    top, left = divmod(best, shares.shape[1])
    return (top, left, window, window), float(shares.flatten()[best])


def _window_share(maps: torch.Tensor, region: Region) -> torch.Tensor:
    top, left, h, w = region
    return maps[:, top : top + h, left : left + w].sum((1, 2))


def _labels(labels_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = torch.as_tensor(labels_fn(x)).cpu()
    if out.shape != (len(x),) or out.dtype.is_floating_point:
        raise DataError(
            f"shortcuts: labels_fn must return {len(x)} integer labels, got {out.dtype} of shape {tuple(out.shape)}"
        )
    return out.long()


def _counterfactual(
    labels_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    own: torch.Tensor,
    before: torch.Tensor,
    k: int,
    region: Region,
    generator: torch.Generator,
) -> tuple[float, float]:
    """(survival, flip_rate) of class k's region; NaN where no input qualifies."""
    top, left, h, w = region
    rows, cols = slice(top, top + h), slice(left, left + w)
    kept = x[own & (before == k)]
    targets = x[~own & (before != k)]
    occluded = kept.clone()
    occluded[:, :, rows, cols] = x[~own].mean(0)[:, rows, cols]
    sources = x[own][torch.randint(int(own.sum()), (len(targets),), generator=generator)]
    pasted = targets.clone()
    pasted[:, :, rows, cols] = sources[:, :, rows, cols]
    after = _labels(labels_fn, torch.cat([occluded, pasted])) == k
    survival = float(after[: len(kept)].double().mean()) if len(kept) else math.nan
    flip_rate = float(after[len(kept) :].double().mean()) if len(targets) else math.nan
    return survival, flip_rate


def _spray(
    maps: torch.Tensor, config: ShortcutConfig, generator: torch.Generator
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """SpRAy on one class's normalised maps: (cluster size shares, largest first; their tightness; eigengap)."""
    n = len(maps)
    h, w = maps.shape[1:]
    small = F.adaptive_avg_pool2d(maps[:, None], (min(h, config.spray_size), min(w, config.spray_size)))
    z = small.flatten(1)
    distance = torch.cdist(z, z)
    if n < 3 or float(distance.max()) == 0:  # too few maps to cluster, or all alike: no graph to cut
        return (1.0,), (_tightness(maps),), 0.0
    distance.fill_diagonal_(math.inf)
    nearest = distance.topk(min(config.neighbours, n - 1), largest=False).indices
    affinity = torch.zeros(n, n, dtype=torch.float64)
    affinity.scatter_(1, nearest, 1.0)
    affinity = torch.maximum(affinity, affinity.T)
    scale = affinity.sum(1).rsqrt()
    laplacian = torch.eye(n, dtype=torch.float64) - scale[:, None] * affinity * scale[None, :]
    values, vectors = torch.linalg.eigh(laplacian)
    gaps = values[1 : min(config.max_clusters, n - 1) + 1] - values[: min(config.max_clusters, n - 1)]
    count = int(gaps.argmax()) + 1
    if count == 1:
        assignment = torch.zeros(n, dtype=torch.long)
    else:
        from sklearn.cluster import KMeans

        embedding = vectors[:, :count]
        embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        fitted = KMeans(count, n_init=10, random_state=seed).fit(embedding.numpy())
        assignment = torch.from_numpy(fitted.labels_).long()
    sizes = torch.bincount(assignment, minlength=count)
    order = sizes.argsort(descending=True)
    shares = tuple(float(sizes[c]) / n for c in order if sizes[c] > 0)
    tightness = tuple(_tightness(maps[assignment == c]) for c in order if sizes[c] > 0)
    return shares, tightness, float(gaps.max())


def _tightness(maps: torch.Tensor) -> float:
    """Mean total variation distance from each map to the maps' mean."""
    return float(0.5 * (maps - maps.mean(0)).abs().sum((1, 2)).mean())
