"""``curves_<section>_<data>.png``: metrics against the training loop's seconds, from the runs' periodic
evaluations (:mod:`.curve`): one panel per metric the layout names, one line per model with its own sampler (the
mean over its seeds at each epoch), one legend under the panels. The panels are :mod:`genbench.panels`', as in
each run's ``losses.png``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genbench.drawing import BACKGROUND, PALETTE, TEXT, font, line_height, with_caption
from genbench.leaderboard.collect import clean_text
from genbench.panels import Panel, Series, render_panel
from genbench.results.curve import ModelCurve
from genbench.results.figures import fit_text
from genbench.results.tables import heading

if TYPE_CHECKING:
    from PIL import Image as PILImage

PANEL_WIDTH, PANEL_HEIGHT = 420, 260
COLUMNS = 3
SWATCH_PX = 22


def curve_panels(curves: list[ModelCurve], metrics: tuple[str, ...], labels: dict[str, str]) -> list[Panel]:
    """A panel per metric, a series per model (coloured by its place in ``curves``)."""
    return [
        Panel(
            heading(metric, labels, words=True),
            [
                Series(
                    f"{c.model}/{c.sampler}",
                    c.mean_points(metric),
                    colour=PALETTE[i % len(PALETTE)],
                    label=c.model,
                )
                for i, c in enumerate(curves)
            ],
        )
        for metric in metrics
    ]


def _legend(curves: list[ModelCurve], width: int) -> PILImage.Image:
    """The models' colours and names, wrapped into as many lines as ``width`` needs."""
    from PIL import Image, ImageDraw

    legend_font, pad = font(12), 10
    step = line_height(legend_font) + 4
    items = [
        (
            PALETTE[i % len(PALETTE)],
            fit_text(f"{c.model} / {c.sampler} ({len(c.runs)} runs)", width // 2, legend_font),
        )
        for i, c in enumerate(curves)
    ]
    places, x, y = [], pad, pad
    for colour, text in items:
        item_width = SWATCH_PX + 6 + int(legend_font.getlength(text)) + 18
        if x > pad and x + item_width > width - pad:
            x, y = pad, y + step
        places.append((x, y, colour, text))
        x += item_width
    strip = Image.new("RGB", (width, y + step + pad), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, y, colour, text in places:
        middle = y + step / 2
        draw.line([(x, middle), (x + SWATCH_PX, middle)], fill=colour, width=3)
        draw.text((x + SWATCH_PX + 6, middle), text, fill=TEXT, font=legend_font, anchor="lm")
    return strip


def curves_figure(
    data: str, curves: list[ModelCurve], metrics: tuple[str, ...], labels: dict[str, str]
) -> PILImage.Image | None:
    """The figure, None when no model has a point of any of ``metrics``."""
    from PIL import Image

    panels = curve_panels(curves, metrics, labels)
    if not any(s.points for p in panels for s in p.series):
        return None
    columns = min(COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    body = Image.new("RGB", (columns * PANEL_WIDTH, rows * PANEL_HEIGHT), BACKGROUND)
    for i, panel in enumerate(panels):
        tile = render_panel(panel, 2, PANEL_WIDTH, PANEL_HEIGHT, x_label="seconds", legend=False)
        body.paste(tile, ((i % columns) * PANEL_WIDTH, (i // columns) * PANEL_HEIGHT))
    legend = _legend(curves, body.width)
    figure = Image.new("RGB", (body.width, body.height + legend.height), BACKGROUND)
    figure.paste(body, (0, 0))
    figure.paste(legend, (0, body.height))
    caption = (
        f"{clean_text(data)}: each metric against the training loop's seconds (x) at the periodic evaluations (small N: "
        "see the protocol in the README), one line per model with its own sampler, the mean over its seeds at each "
        "epoch; a model with one point is a dot"
    )
    return with_caption(figure, caption)
