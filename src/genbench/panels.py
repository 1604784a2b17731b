"""Line panels drawn with Pillow alone (no torch, no matplotlib): a title, a legend with each series' last value,
axes with round ticks (a log y axis for positive values spanning orders of magnitude), a line per series, or dots
for a sparse one. The run's ``losses.png`` (:mod:`genbench.evaluators.losses`) and the results' learning curves
(:mod:`genbench.results.curves`) are made of these panels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from genbench.drawing import BACKGROUND, TEXT, font, line_height

GRID = (228, 228, 228)
LOG_SPAN = 30.0  # max / min of a panel's values above which its y axis is logarithmic
FRAME = (120, 120, 120)


@dataclass
class Series:
    """One line: ``points`` (x, value), sorted by x; ``dropped`` non-finite values; drawn in ``colour`` and named
    ``label`` in the legend (the key's prefix before ``/`` when empty)."""

    key: str
    points: list[tuple[float, float]] = field(default_factory=list)
    dropped: int = 0
    colour: tuple[int, int, int] = FRAME
    label: str = ""

    @property
    def prefix(self) -> str:
        return self.key.split("/", 1)[0]


@dataclass
class Panel:
    title: str
    series: list[Series]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2 or 5 x 10^k apart) inside [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(n - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:.4g}"


def value_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = max(abs(hi) * 0.05, 1e-3)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def log_scale(values: list[float]) -> bool:
    """A log y axis for positive values spanning more than ``LOG_SPAN`` (a loss falling by orders of magnitude)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [lo, hi] (with 2x and 5x when fewer than three decades show)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    multiples = (1, 2, 5) if len(decades) <= 3 else (1,)
    return [m * 10.0**k for k in decades for m in multiples if lo <= m * 10.0**k <= hi]


def render_panel(
    panel: Panel,
    min_points: int,
    width: int = 320,
    height: int = 210,
    x_label: str = "step",
    legend: bool = True,
):
    """One panel (a Pillow RGB image): title, per-series legend with the last value (unless ``legend`` is off),
    axes with round ticks (log y for positive values spanning orders of magnitude), ``x_label`` under the x axis,
    a line per series with ``min_points`` values or more, dots for sparser ones."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_font, small = font(13), font(11)
    left, right, bottom = 58, 12, 24
    top = 8 + line_height(title_font) + (line_height(small) if legend else 0)
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    points = [p for s in panel.series for p in s.points]
    logy = log_scale([p[1] for p in points])
    draw.text((8, 6), panel.title, fill=TEXT, font=title_font)
    x = 8.0
    for series in panel.series if legend else ():
        if not series.points:
            continue
        label = f"{series.label or series.prefix} {tick_label(series.points[-1][1])}"
        if len(series.points) < min_points:
            label += f" ({len(series.points)} pts)"
        draw.text((x, 8 + line_height(title_font)), label, fill=series.colour, font=small)
        x += small.getlength(label) + 12
    if not points:
        draw.text((x0, (y0 + y1) / 2), "no finite values", fill=TEXT, font=small)
        return image
    steps = [p[0] for p in points]
    xlo, xhi = value_range(steps) if max(steps) > min(steps) else (steps[0] - 1, steps[0] + 1)
    ys = [math.log10(p[1]) for p in points] if logy else [p[1] for p in points]
    ylo, yhi = value_range(ys)

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        y = math.log10(value) if logy else value
        return x0 + (step - xlo) / (xhi - xlo) * (x1 - x0), y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    for tick in log_ticks(10**ylo, 10**yhi) if logy else nice_ticks(ylo, yhi):
        _, y = to_pixel(xlo, tick)
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((x0 - 4, y), tick_label(tick), fill=TEXT, font=small, anchor="rm")
    for tick in nice_ticks(max(xlo, 0.0), xhi, 4):
        x, _ = to_pixel(tick, 10**ylo if logy else ylo)
        draw.line([(x, y0), (x, y1)], fill=GRID)
        draw.text((x, y1 + 3), f"{tick:g}", fill=TEXT, font=small, anchor="ma")
    draw.text((x1, height - 2), x_label, fill=FRAME, font=small, anchor="rd")
    if logy:
        draw.text((6, height - 2), "log y", fill=FRAME, font=small, anchor="ld")
    draw.rectangle([x0, y0, x1, y1], outline=FRAME)
    for series in panel.series:
        pixels = [to_pixel(*p) for p in series.points]
        if len(pixels) >= max(min_points, 2):
            draw.line(pixels, fill=series.colour, width=2, joint="curve")
        else:
            for px, py in pixels:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=series.colour)
    return image
