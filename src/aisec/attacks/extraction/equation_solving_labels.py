"""Equation-solving extraction of linear and logistic models from labels only (Tramer et al., USENIX Security
2016, section 5; the scores-based solvers and the model are in equation_solving.py).

Points on the boundary between two classes i, j satisfy (w_i - w_j) . x + (b_i - b_j) = 0; they are found by
bisection along lines between differently labelled points (the line search of Lowd and Meek, KDD 2005), and the
hyperplanes are fitted jointly by total least squares. The weights are identifiable up to one positive scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from aisec.attacks.extraction.equation_solving import (
    as_input,
    check_budget,
    flat_bounds,
    linear_result,
    uniform,
)
from aisec.attacks.extraction.result import ExtractionResult
from aisec.core.errors import BadInputError
from aisec.targets.base import Access, Target

_TOLERANCE = 2e-5  # discovery locates boundary points to this fraction of the features' mean range
_PROBE_SIGMAS = 3.0  # probe lines are first bisected over this many typical crossing distances
# the expected cosine between a boundary's normal and its estimate from d labels (see _normal_directions)
_ONE_BIT_COSINE = math.sqrt(2 / (math.pi + 2))
_CROWDED = 0.05  # a base point with more labels of a third class around it than this is moved away ...
_MOVES = 3  # ... up to this many times


def extract_linear_from_labels(
    target: Target,
    query_budget: int,
    *,
    probe_step: float = 0.005,
    generator: torch.Generator | None = None,
) -> ExtractionResult:
    """Extraction from labels only within `query_budget` (at least num_classes * (d + 1)) queries.

    1. The box's lowest corner, centre and highest corner, then uniform points in it, d + 1 at a time, until every
       class has been seen (at most 15 % of the budget); a class never seen is never predicted by the extracted
       model.
    2. Discovery: bisection along segments from a point of one class to one of the nearest points of another
       gives points on the boundaries between pairs of classes, until these pairs connect the classes seen and
       close enough cycles to fix the hyperplanes' relative scales (up to 40 % of the budget in all).
    3. Probing: for each boundary on a spanning tree of those pairs, an estimate m of its normal from d labels
       around its first point x_b (moved along the boundary if a third class is near), then one line
       x_b + s e_j + t m per feature j (s = `probe_step` times the feature's range), bisected in t with as many
       halvings as the rest of the budget pays for: d more points on that hyperplane. A line whose crossing lies
       outside its bracket, or that meets a third class first, is tried again with s / 4.
    4. All boundary points, each with the pair of classes either side and weighted by its precision, are fitted
       jointly: theta minimising ||A theta|| at ||theta|| = 1 (the smallest right singular vector), signed to
       agree with the labels of step 1.

    Too small a budget for a step leaves the later steps undone and the fit poor; about 6,500 queries reach
    over 99 % agreement on digits (64 features, 10 classes).
    """
    spec = target.spec
    d, k = math.prod(spec.shape), spec.num_classes
    check_budget(target, query_budget, k * (d + 1), Access.LABELS, "boundary equation solving")
    if not 0 < probe_step < 0.5:
        raise BadInputError(f"probe_step must be in (0, 0.5), got {probe_step}")
    lo, hi = flat_bounds(spec)
    before = target.queries.total

    def ask(x: torch.Tensor) -> torch.Tensor:
        return target.labels(as_input(torch.max(torch.min(x, hi), lo), spec, target.device)).cpu()

    def spent() -> int:
        return target.queries.total - before

    pool_x = torch.cat(
        [torch.stack([lo, (lo + hi) / 2, hi]).float().double(), uniform(d - 2, lo, hi, generator)]
    )
    pool_y = ask(pool_x)
    while len(pool_y.unique()) < k and spent() + d + 1 <= query_budget * 3 // 20:
        x = uniform(d + 1, lo, hi, generator)
        pool_x, pool_y = torch.cat([pool_x, x]), torch.cat([pool_y, ask(x)])
    boundary = _Boundary(pool_y.unique().tolist())
    tolerance = _TOLERANCE * float((hi - lo).mean())
    while wanted := boundary.wanted_pairs():
        chosen = torch.randint(len(wanted), (min(8, len(wanted)),), generator=generator).tolist()
        segments = _segments(pool_x, pool_y, [wanted[i] for i in chosen], tolerance, generator)
        if spent() + int(segments[-1].sum()) > query_budget * 2 // 5:
            break
        _locate(ask, boundary, *segments, base=True)
    edges = boundary.tree_edges()
    free = (hi > lo).nonzero().flatten()
    if edges and query_budget - spent() >= len(edges) * (d + len(free)):
        edges, normals = _uncrowded_bases(ask, boundary, edges, lo, hi, probe_step, tolerance, generator)
        left, right_class = (torch.tensor([e[i] for e in edges]).repeat_interleave(len(free)) for i in (0, 1))
        base = torch.stack([x for _, _, x in edges]).repeat_interleave(len(free), 0)
        m = normals.repeat_interleave(len(free), 0)
        j = free.repeat(len(edges))
        at = base[torch.arange(len(j)), j]
        s = probe_step * (hi[j] - lo[j]) * torch.where(at - lo[j] > hi[j] - at, -1.0, 1.0)  # to the far bound
        # |t| = |s n_j| / (n . m): n_j / |n| has root mean square 1 / sqrt(d), and n . m = |n| cosine.
        reach = _PROBE_SIGMAS / (math.sqrt(len(free)) * _ONE_BIT_COSINE) * s.abs()
        share, most = 0.97, None  # the first round's share of the budget; what it leaves pays for the retries
        while len(j) and (total := int(share * (query_budget - spent()))) >= len(j):
            steps = total // len(j) + (torch.randperm(len(j), generator=generator) < total % len(j)).long()
            most = int(steps.max()) if most is None else most + 2  # a retry at s / 4 needs 2 more halvings
            steps = steps.clamp_max(most)
            start = base.clone()
            start[torch.arange(len(j)), j] += s
            t_lo, t_hi = _extent(start, m, lo, hi)
            t, right, width = _bisect(
                ask, start, m, t_lo.clamp_min(-reach), t_hi.clamp_max(reach), left, steps
            )
            for i in (right >= 0).nonzero().flatten().tolist():
                boundary.add(start[i] + t[i] * m[i], int(left[i]), int(right[i]), float(width[i]))
            retry = right != right_class  # an end not observed, or a third class met first
            left, right_class, base, m, j, s, reach = (
                v[retry] for v in (left, right_class, base, m, j, s / 4, reach)
            )
            share = 1.0
    weight, bias = boundary.fit(pool_x, pool_y, k)
    return linear_result("boundary_equation_solving", target, before, Access.LABELS, weight, bias)


class _Boundary:
    """Points on the boundaries between pairs of classes, the first one found of each pair, and the spanning
    tree of pairs that probing explores."""

    def __init__(self, classes: list[int]) -> None:
        self.classes = classes
        self.points: list[tuple[torch.Tensor, int, int, float]] = []
        self.first: dict[frozenset[int], tuple[int, int, torch.Tensor]] = {}

    def add(self, x: torch.Tensor, left: int, right: int, width: float, *, base: bool = False) -> None:
        """A point between class `left` and class `right`, found to within `width` (the length of the final
        bracket); with `base`, the first such point of its pair becomes the base of that pair's probes."""
        self.points.append((x, left, right, width))
        if base:
            self.first.setdefault(frozenset((left, right)), (left, right, x))

    def tree(self) -> dict[int, int] | None:
        """Breadth-first spanning tree (child -> parent, the root its own parent) of the pairs found, from the
        class with most neighbours; None while the pairs do not connect every class seen."""
        neighbours: dict[int, set[int]] = {c: set() for c in self.classes}
        for a, b in self.first:
            neighbours[a].add(b)
            neighbours[b].add(a)
        hub = max(self.classes, key=lambda c: len(neighbours[c]))
        parent, queue = {hub: hub}, [hub]
        for c in queue:
            for n in sorted(neighbours[c] - parent.keys()):
                parent[n] = c
                queue.append(n)
        return parent if len(parent) == len(self.classes) else None

    def wanted_pairs(self) -> list[tuple[int, int]]:
        """The pairs of classes whose boundary points discovery should look for next; none once the scales are
        fixed.

        While the pairs found do not connect every class: pairs across the groups they connect. Then, with the
        tree edges named by their child class: a pair (c, d) off the tree relates the scales of the tree edges on
        the path from c to d, and fixes their ratios with (path length - 1) points on it, asked twice over for a
        margin. Wanted are the pairs whose path still joins edges whose ratios are not tied together.
        """
        pairs = [(a, b) for i, a in enumerate(self.classes) for b in self.classes[i + 1 :]]
        parent = self.tree()
        if parent is None:
            group = _Groups(self.classes)
            for a, b in self.first:
                group.join([a, b])
            return [(a, b) for a, b in pairs if group.root(a) != group.root(b)]
        group = _Groups([c for c in parent if parent[c] != c])
        counts: dict[frozenset[int], int] = {}
        for _, a, b, _ in self.points:
            counts[frozenset((a, b))] = counts.get(frozenset((a, b)), 0) + 1
        for pair, n in counts.items():
            path = _path(parent, *pair)
            if len(path) > 1 and n >= 2 * (len(path) - 1):
                group.join(path)
        if len({group.root(c) for c in group.parent}) <= 1:
            return []
        return [(a, b) for a, b in pairs if len({group.root(c) for c in _path(parent, a, b)}) > 1]

    def tree_edges(self) -> list[tuple[int, int, torch.Tensor]]:
        """(left class, right class, base point) of the first point found on each edge of the spanning tree."""
        parent = self.tree() or {}
        return [self.first[frozenset((c, p))] for c, p in sorted(parent.items()) if c != p]

    def fit(self, pool_x: torch.Tensor, pool_y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (k, d) and biases (k,) whose hyperplanes best pass through the points (total least squares,
        each equation weighted by its precision); classes never seen get zero weights and a bias that keeps them
        from ever being predicted."""
        seen, d = self.classes, pool_x.shape[1]
        weight = torch.zeros(k, d + 1, dtype=torch.float64)
        weight[:, -1] = -1e4
        weight[seen[0], -1] = 0.0
        if len(seen) > 1 and self.points:
            column = {c: i for i, c in enumerate(seen[1:])}
            x = torch.stack([p for p, _, _, _ in self.points])
            xh = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            width = torch.tensor([w for _, _, _, w in self.points], dtype=torch.float64)
            a = torch.zeros(len(x), len(seen) - 1, d + 1, dtype=torch.float64)
            for i, (_, left, right, _) in enumerate(self.points):
                if right in column:
                    a[i, column[right]] += xh[i]
                if left in column:
                    a[i, column[left]] -= xh[i]
            a = a.flatten(1) * (width.min() / width)[:, None]
            theta = torch.linalg.svd(a).Vh[-1].reshape(len(seen) - 1, d + 1)
            weight[seen[1:]] = theta
            logits = torch.cat([pool_x, torch.ones(len(pool_x), 1, dtype=pool_x.dtype)], 1) @ weight[seen].T
            classes = torch.tensor(seen)
            if (classes[(-logits).argmax(1)] == pool_y).sum() > (classes[logits.argmax(1)] == pool_y).sum():
                weight[seen[1:]] = -theta
        return weight[:, :-1].contiguous(), weight[:, -1].contiguous()


class _Groups:
    """Union-find over a few integers."""

    def __init__(self, members: list[int]) -> None:
        self.parent = {c: c for c in members}

    def root(self, c: int) -> int:
        while self.parent[c] != c:
            c = self.parent[c]
        return c

    def join(self, members: list[int]) -> None:
        for c in members[1:]:
            self.parent[self.root(c)] = self.root(members[0])


def _path(parent: dict[int, int], a: int, b: int) -> list[int]:
    """The tree edges (named by their child class) on the path between classes a and b."""

    def ancestry(c: int) -> list[int]:
        chain = [c]
        while parent[chain[-1]] != chain[-1]:
            chain.append(parent[chain[-1]])
        return chain

    up_a, up_b = ancestry(a), ancestry(b)
    common = set(up_a) & set(up_b)
    return [c for c in up_a if c not in common] + [c for c in up_b if c not in common]


def _segments(
    pool_x: torch.Tensor,
    pool_y: torch.Tensor,
    pairs: list[tuple[int, int]],
    tolerance: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One segment per pair of classes (taken in random order): from a random point of the first class to one of
    the 4 points of the second nearest to it (short segments cross few other classes). Returns their starts,
    directions, labels at either end and the halvings that locate a crossing to within `tolerance`."""
    first, second = [], []
    for pair in pairs:
        a, b = pair if torch.rand(1, generator=generator) < 0.5 else pair[::-1]
        of_a, of_b = (pool_y == a).nonzero().flatten(), (pool_y == b).nonzero().flatten()
        one = int(of_a[torch.randint(len(of_a), (1,), generator=generator)])
        near = of_b[(pool_x[of_b] - pool_x[one]).norm(dim=1).argsort()[:4]]
        first.append(one)
        second.append(int(near[torch.randint(len(near), (1,), generator=generator)]))
    direction = pool_x[second] - pool_x[first]
    steps = (direction.norm(dim=1) / tolerance).log2().ceil().long().clamp_min(1)
    return pool_x[first], direction, pool_y[first], pool_y[second], steps


def _locate(
    ask: Callable[[torch.Tensor], torch.Tensor],
    boundary: _Boundary,
    start: torch.Tensor,
    direction: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    steps: torch.Tensor,
    *,
    base: bool = False,
) -> list[tuple[int, int, torch.Tensor]]:
    """Bisect the segments, add the boundary points found to `boundary` and return them as (left class, right
    class, point)."""
    ones = torch.ones(len(start), dtype=torch.float64)
    t, right, width = _bisect(ask, start, direction, 0 * ones, ones, left, steps, right)
    found = []
    for i in range(len(start)):
        x, length = start[i] + t[i] * direction[i], float(width[i] * direction[i].norm())
        boundary.add(x, int(left[i]), int(right[i]), length, base=base)
        found.append((int(left[i]), int(right[i]), x))
    return found


def _uncrowded_bases(
    ask: Callable[[torch.Tensor], torch.Tensor],
    boundary: _Boundary,
    edges: list[tuple[int, int, torch.Tensor]],
    lo: torch.Tensor,
    hi: torch.Tensor,
    radius: float,
    tolerance: float,
    generator: torch.Generator | None,
) -> tuple[list[tuple[int, int, torch.Tensor]], torch.Tensor]:
    """The edges with their base points moved away from third classes, and the normal estimates at those bases.

    A base with more than `_CROWDED` of the labels around it from a third class sits near where three classes
    meet, and its probes would cross into the third. It is moved along its boundary, away from the directions
    that met the third class, by 4 then 8, 16 times the radius, and bisected back onto the boundary along its
    normal (up to `_MOVES` times); a move is kept when fewer third-class labels surround the new base.
    """
    edges = list(edges)
    normals, crowded, away = _normal_directions(ask, edges, lo, hi, radius, generator)
    for move in range(_MOVES):
        bad = (crowded > _CROWDED).nonzero().flatten()
        if not len(bad):
            break
        length = radius * float((hi - lo).mean()) * 4 * 2**move
        start = torch.stack([edges[i][2] for i in bad]) + length * away[bad]
        start = torch.max(torch.min(start, hi), lo)
        t_lo, t_hi = _extent(start, normals[bad], lo, hi)
        left = torch.tensor([edges[i][0] for i in bad])
        steps = math.ceil(math.log2(4 * length / tolerance))
        t, right, width = _bisect(
            ask, start, normals[bad], t_lo.clamp_min(-2 * length), t_hi.clamp_max(2 * length), left, steps
        )
        moved = []
        for n, i in enumerate(bad.tolist()):
            if int(right[n]) == edges[i][1]:
                x = start[n] + t[n] * normals[i]
                boundary.add(x, edges[i][0], edges[i][1], float(width[n]))
                moved.append((i, (edges[i][0], edges[i][1], x)))
        if moved:
            fresh = _normal_directions(ask, [e for _, e in moved], lo, hi, radius, generator)
            for n, (i, edge) in enumerate(moved):
                if fresh[1][n] < crowded[i]:
                    edges[i] = edge
                    normals[i], crowded[i], away[i] = (v[n] for v in fresh)
    return edges, normals


def _normal_directions(
    ask: Callable[[torch.Tensor], torch.Tensor],
    edges: list[tuple[int, int, torch.Tensor]],
    lo: torch.Tensor,
    hi: torch.Tensor,
    radius: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From d labels around each boundary's base point: a unit estimate of its normal (towards its right class),
    the fraction of labels from neither class, and the unit direction along the boundary away from those.

    The normal estimate sums d random unit directions r, each signed by the side of the boundary that
    x_b + radius * r falls on (one-bit compressed sensing; for N directions in d dimensions its cosine with the
    normal is about sqrt(2N / (pi d)) / sqrt(1 + 2N / (pi d)), `_ONE_BIT_COSINE` for N = d).
    """
    d = len(lo)
    r = torch.randn(len(edges), d, d, generator=generator, dtype=torch.float64)
    base = torch.stack([x for _, _, x in edges])
    points = torch.max(
        torch.min(base[:, None] + radius * (hi - lo) * r / r.norm(dim=2, keepdim=True), hi), lo
    )
    y = ask(points.reshape(-1, d)).reshape(len(edges), d)
    left, right = (torch.tensor([e[i] for e in edges])[:, None] for i in (0, 1))
    side = (y == right).double() - (y == left).double()
    normal = _unit((side[:, :, None] * (points - base[:, None])).sum(1))
    third = ((side == 0).double()[:, :, None] * (points - base[:, None])).sum(1)
    away = -_unit(third - (third * normal).sum(1, keepdim=True) * normal)
    return normal, (side == 0).double().mean(1), away


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)


def _bisect(
    ask: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    direction: torch.Tensor,
    t_lo: torch.Tensor,
    t_hi: torch.Tensor,
    left: torch.Tensor,
    steps: int | torch.Tensor,
    right: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bisection, all lines at once, for where the label of start + t * direction stops being `left` in
    [t_lo, t_hi], with `steps` halvings (one number, or one per line). Returns the middle of each final bracket,
    the label at its right end (-1 where either end's label was never observed; pass `right`, the labels at
    t_hi, when both ends are known) and its width."""
    steps = torch.as_tensor(steps).expand(left.shape)
    left_seen = torch.full(left.shape, right is not None)
    right = torch.full_like(left, -1) if right is None else right.clone()
    t_lo, t_hi = t_lo.clone(), t_hi.clone()
    for step in range(int(steps.max()) if len(steps) else 0):
        i = (steps > step).nonzero().flatten()
        mid = (t_lo[i] + t_hi[i]) / 2
        y = ask(start[i] + mid[:, None] * direction[i])
        is_left = y == left[i]
        t_lo[i], t_hi[i] = torch.where(is_left, mid, t_lo[i]), torch.where(is_left, t_hi[i], mid)
        left_seen[i] |= is_left
        right[i] = torch.where(is_left, right[i], y)
    return (t_lo + t_hi) / 2, torch.where(left_seen, right, -1), t_hi - t_lo


def _extent(
    start: torch.Tensor, direction: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of t for which start + t * direction stays in the box [lo, hi], per line."""
    moving = direction != 0
    step = torch.where(moving, direction, 1.0)
    a, b = (lo - start) / step, (hi - start) / step
    low = torch.where(moving, torch.minimum(a, b), -torch.inf).amax(1)
    high = torch.where(moving, torch.maximum(a, b), torch.inf).amin(1)
    return low, high
