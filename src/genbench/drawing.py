"""Text on pictures, drawn with Pillow alone (no torch): the font, wrapped lines and caption strips that the run's
pictures (:mod:`genbench.evaluators.pictures`), its loss curves and the results renderer (:mod:`genbench.results`)
share. Text is Pillow's default font; no matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image as PILImage

CAPTION_SIZE = 13  # font sizes (pixels)
LABEL_SIZE = 12
TEXT = (30, 30, 30)
BACKGROUND = (255, 255, 255)
# matplotlib's tab10, so colours look familiar: latent classes, one line per model in the results' curves
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def font(size: int = LABEL_SIZE):
    """Pillow's default font at ``size`` px (its bitmap font where Pillow was built without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow, or no FreeType
        return ImageFont.load_default()


def line_height(text_font) -> int:
    box = text_font.getbbox("Ag")
    return int(box[3]) + 4


def wrap(text: str, width: int, text_font) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels at word boundaries (explicit newlines kept)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and text_font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def caption_strip(text: str, width: int, size: int = CAPTION_SIZE) -> PILImage.Image:
    """A white RGB strip ``width`` wide holding ``text``, wrapped, in dark grey."""
    from PIL import Image, ImageDraw

    text_font, pad = font(size), 6
    lines = wrap(text, max(width - 2 * pad, 1), text_font)
    step = line_height(text_font)
    strip = Image.new("RGB", (width, 2 * pad + step * len(lines)), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * step), line, fill=TEXT, font=text_font)
    return strip


def with_caption(image: PILImage.Image, caption: str | None) -> PILImage.Image:
    """``image`` (RGB) with a caption strip above it; ``image`` itself when ``caption`` is empty."""
    from PIL import Image

    if not caption:
        return image
    strip = caption_strip(caption, image.width)
    out = Image.new("RGB", (image.width, strip.height + image.height), BACKGROUND)
    out.paste(strip, (0, 0))
    out.paste(image, (0, strip.height))
    return out
