"""The assessment as one self-contained HTML page, for a security team and a data-science team together.

The page opens, after the verdict, with the defence-in-depth matrix (`frameworks.defence_matrix`): the five attack
classes against the life-cycle stages, each cell with the attacks run and the controls measured there. Each
finding shows its rule's framework ids (MITRE ATLAS, OWASP ML Top Ten, NCSA, BSI stages) as small labels.

The page carries everything inline: CSS in a <style> element, charts drawn with matplotlib as SVG and
examples as PNG, both in data: URIs. It loads no script, font or stylesheet and makes no network request
(the framework labels link to their ATLAS and OWASP pages), and it prints well. The template autoescapes every
value, since titles, messages and labels may come from untrusted plans or models; text passed to matplotlib has
its "$" escaped so it is never parsed as math.
matplotlib is imported only when a finding has a chart or an example.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import re
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np

from aisec.assessment.finding import Assessment, Chart, Estimate, Example, Finding, Metric, Picture
from aisec.core.severity import Severity
from aisec.report import frameworks
from aisec.report.frameworks import FRAMEWORKS, FrameworkRefs, defence_matrix
from aisec.report.json_report import SCHEMA_ID, jsonable

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

# Colour-blind-safe palette (Okabe and Ito) for chart series.
_PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
_CHART_STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d8dde3",
    "grid.linewidth": 0.6,
    "svg.hashsalt": "aisec",  # ids in the SVG derive from its content: the same report renders the same bytes
}
_MIN_IMAGE_SIDE = 120  # small inputs (e.g. 28x28) are enlarged, pixel for pixel, to at least this size


@dataclass(frozen=True)
class _ExampleView:
    example: Example
    original: str  # data: URIs
    adversarial: str
    difference: str
    amplification: float | None  # factor the difference is multiplied by; None when the images are equal


@dataclass(frozen=True)
class _GalleryView:
    title: str
    pictures: list[tuple[Picture, str]]  # (picture, PNG data: URI)


@dataclass(frozen=True)
class _FindingView:
    finding: Finding
    anchor: str
    charts: list[tuple[Chart, str]]  # (chart, SVG data: URI)
    banded: bool  # some series is drawn with a band
    examples: list[_ExampleView]
    galleries: list[_GalleryView]
    frameworks: FrameworkRefs | None  # None for a rule aisec does not know


def render_html(assessment: Assessment) -> str:
    """The HTML report as text: the verdict, the defence-in-depth matrix, then the findings, those that break
    policy first, then by severity, highest first."""
    ordered = sorted(
        enumerate(assessment.findings), key=lambda item: (not item[1].breaks_policy, -item[1].severity.rank)
    )
    anchors = {index: f"finding-{number}" for number, (index, _) in enumerate(ordered, start=1)}
    findings = [
        _FindingView(
            finding=f,
            anchor=anchors[index],
            charts=[(chart, _chart_uri(chart)) for chart in f.charts],
            banded=any(s.lower is not None and s.upper is not None for c in f.charts for s in c.series),
            examples=[_example_view(example) for example in f.examples],
            galleries=[
                _GalleryView(g.title, [(p, _png_uri(_image(p.image, p.caption))) for p in g.pictures])
                for g in f.galleries
            ],
            frameworks=FRAMEWORKS.get(f.rule_id),
        )
        for index, f in ordered
    ]
    checks = [check for f in assessment.findings for check in f.policy]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            a=assessment,
            findings=findings,
            matrix=defence_matrix(assessment),
            anchors=anchors,
            fw=frameworks,
            checks_failed=sum(not check.passed for check in checks),
            checks_total=len(checks),
            severity_counts=[
                (s, sum(f.severity is s for f in assessment.findings)) for s in reversed(Severity)
            ],
            unreliable=sum(not f.reliable for f in assessment.findings),
            schema_id=SCHEMA_ID,
        )
    )


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aisec.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=format_number, metric=format_metric, show=_show, duration=_format_duration)
    return env


def format_number(value: Any) -> str:
    """A number as a person reads it: three significant digits, "n/a" for NaN, "—" for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(value)
    if not isinstance(value, Real):
        return str(value)
    x = float(value)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    if 999.5 <= abs(x) < 1e6:
        return f"{x:,.0f}"
    if not 1e-3 <= abs(x) < 999.5:
        return f"{x:.3g}"
    return f"{x:#.3g}".rstrip(".")  # "#" keeps trailing zeros: 0.520, 10.0


def format_metric(metric: Metric) -> str:
    """A metric's value with its unit; an estimate as "0.520 (95% CI 0.476–0.564, n=500)"."""
    unit = f" {metric.unit}" if metric.unit else ""
    value = metric.value
    if not isinstance(value, Estimate):
        return format_number(value) + unit
    level = re.search(r"(\d+(?:\.\d+)?)\s*%", value.method)
    ci = f"{level.group(1)}% CI" if level else "CI"
    return (
        f"{_proportion(value.value)}{unit} ({ci} {_proportion(value.lower)}–{_proportion(value.upper)}, "
        f"n={value.n})"
    )


def _proportion(x: float) -> str:
    """Estimates share three decimals, so that a value and its interval line up."""
    return f"{x:.3f}" if math.isfinite(x) else format_number(x)


def _show(value: Any) -> str:
    """A threat-model or settings value: numbers formatted, strings as they are, anything else as JSON."""
    if value is None or isinstance(value, (bool, Real)):
        return format_number(value)
    if isinstance(value, str):
        return value
    return json.dumps(jsonable(value), ensure_ascii=False)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _chart_uri(chart: Chart) -> str:
    """The chart as an SVG data: URI: a line per series, with a band where it has lower and upper bounds, or
    bars side by side (`kind="bar"`)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.rcsetup import cycler  # the one matplotlib exports as matplotlib.cycler

    with rc_context({**_CHART_STYLE, "axes.prop_cycle": cycler(color=_PALETTE)}):
        figure = Figure(figsize=(6.4, 3.4))
        axes = figure.subplots()
        for series in chart.series:
            for name in ("y", "lower", "upper"):
                points = getattr(series, name)
                if points is not None and len(points) != len(series.x):
                    raise ValueError(
                        f"chart {chart.id!r}, series {series.label!r}: {len(series.x)} x values "
                        f"but {len(points)} {name} values"
                    )
            if chart.kind == "bar":
                width = 0.8 / len(chart.series)
                shift = (chart.series.index(series) - (len(chart.series) - 1) / 2) * width
                axes.bar([x + shift for x in series.x], series.y, width=width, label=_plain(series.label))
                continue
            (line,) = axes.plot(series.x, series.y, marker="o", markersize=3, label=_plain(series.label))
            if series.lower is not None and series.upper is not None:
                axes.fill_between(
                    series.x, series.lower, series.upper, color=line.get_color(), alpha=0.18, linewidth=0
                )
        axes.set_xlabel(_plain(chart.x_label))
        axes.set_ylabel(_plain(chart.y_label))
        if chart.log_x:
            axes.set_xscale("log")
        if chart.log_y:
            axes.set_yscale("log")
        if any(series.label for series in chart.series):
            # below the axes, where it never hides a line
            axes.legend(frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.2), borderaxespad=0.0)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plain(text: str) -> str:
    """Text for matplotlib with every "$" escaped, so that a label is never parsed (or rejected) as math."""
    return text.replace("$", r"\$")


def _example_view(example: Example) -> _ExampleView:
    original = _image(example.original, example.caption)
    adversarial = _image(example.adversarial, example.caption)
    if original.shape != adversarial.shape:
        raise ValueError(
            f"example {example.caption!r}: original {original.shape} and adversarial {adversarial.shape} "
            "differ in shape"
        )
    delta = adversarial - original
    largest = float(np.abs(delta).max())
    amplification = 0.5 / largest if largest > 0 else None
    difference = 0.5 + delta * (amplification or 0.0)  # grey where unchanged, lighter or darker where changed
    return _ExampleView(
        example, _png_uri(original), _png_uri(adversarial), _png_uri(difference), amplification
    )


def _image(pixels: Any, caption: str) -> np.ndarray:
    """Pixels as a float array (H, W) or (H, W, 3) in [0, 1]; NaN drawn black."""
    array = np.asarray(pixels, dtype=float)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"example {caption!r}: image of shape {array.shape}, not (H, W) or (H, W, 1 or 3)")
    return np.nan_to_num(array, nan=0.0).clip(0.0, 1.0)


def _png_uri(image: np.ndarray) -> str:
    """An image as a PNG data: URI, enlarged by an integer factor (no smoothing) when it is small."""
    from matplotlib.image import imsave

    factor = max(1, math.ceil(_MIN_IMAGE_SIDE / max(image.shape[:2])))
    enlarged = image.repeat(factor, axis=0).repeat(factor, axis=1)
    buffer = io.BytesIO()
    imsave(buffer, enlarged, format="png", cmap="gray", vmin=0.0, vmax=1.0)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
