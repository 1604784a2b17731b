"""Sample grids for the page: a run's PNG, read safely, re-encoded and inlined as a data URI.

The file was already found inside its run directory (:func:`genbench.leaderboard.collect.contained_file`); here it
is opened without following links, bounded in bytes and in pixels before Pillow decodes it (a PNG "bomb" declares
a huge size in a tiny file), accepted only as a PNG, shrunk to at most :data:`MAX_SIDE_PX` a side and written
again, so no chunk of the original (text, metadata) reaches the page. Inlining keeps the page one file that works
offline and can be mailed or archived; the images are a few tens of KiB each.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from genbench.leaderboard.collect import clean_text, clip, display_path, read_regular_file

log = logging.getLogger(__name__)

MAX_SIDE_PX = 512  # sharp when the page shows a 256 px grid on a 2x screen, or enlarged on click
MAX_IMAGE_BYTES = 32 * 2**20
MAX_IMAGE_PIXELS = 32 * 2**20


@dataclass(frozen=True)
class InlineImage:
    """A PNG data URI and the size of the image it holds, in pixels."""

    uri: str
    width: int
    height: int


def open_png(path: Path, max_side: int = MAX_SIDE_PX):
    """The PNG file ``path`` as a Pillow image (in its own mode) of at most ``max_side`` pixels a side (never
    enlarged), decoded from its bytes; raises when it cannot be used (not a regular file, over MAX_IMAGE_BYTES or
    MAX_IMAGE_PIXELS, not a PNG), with whichever exception type Pillow raises on a hostile file."""
    from PIL import Image  # lazy: only the pictures need Pillow

    data = read_regular_file(path, MAX_IMAGE_BYTES)
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{width}x{height} pixels, over the {MAX_IMAGE_PIXELS} the leaderboard decodes")
        image.thumbnail((max_side, max_side))
        return image.copy()


def inline_png(
    path: Path, max_side: int = MAX_SIDE_PX, problems: list[str] | None = None
) -> InlineImage | None:
    """The PNG file ``path`` as a data URI, shrunk to at most ``max_side`` pixels a side (never enlarged); None when
    it cannot be used (not a regular file, over MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS, not a PNG), with why
    appended to ``problems`` and logged."""
    try:
        image = open_png(path, max_side)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        size = image.size
    except Exception as err:  # Pillow raises many types on a hostile file; none may stop the board
        message = clean_text(f"{display_path(path)}: samples not embedded: {clip(str(err), 300)}")
        log.warning(message)
        if problems is not None:
            problems.append(message)
        return None
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return InlineImage(uri, *size)
