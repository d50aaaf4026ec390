"""Boxes drawn on photos, for reports and galleries."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from cropper.boxes import Box

#: Colours with a meaning, used the same way everywhere.
TRUTH = (40, 200, 80)  # a ground-truth crop
PREDICTION = (230, 40, 40)  # the chosen crop


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Box],
    colour: tuple[int, int, int],
    *,
    width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with ``boxes`` outlined; the line scales with the photo."""
    out = image.convert("RGB")
    pen = width or max(2, round(max(out.size) / 150))
    draw = ImageDraw.Draw(out)
    for box in boxes:
        left, top, right, bottom = box.to_pixels(out.size)
        draw.rectangle((left, top, right - 1, bottom - 1), outline=colour, width=pen)
    return out


def caption(image: Image.Image, text: str, height: int = 18) -> Image.Image:
    """``image`` with a strip of ``text`` under it."""
    out = Image.new("RGB", (image.width, image.height + height), "white")
    out.paste(image.convert("RGB"), (0, 0))
    ImageDraw.Draw(out).text((4, image.height + 3), text, fill="black", font=_font())
    return out


def tile(images: Sequence[Image.Image], columns: int, gap: int = 6) -> Image.Image:
    """Images laid out left to right, top to bottom, on white."""
    if not images:
        raise ValueError("nothing to tile")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    sheet = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), "white")
    for i, im in enumerate(images):
        row, col = divmod(i, columns)
        sheet.paste(im, (gap + col * (cell_w + gap), gap + row * (cell_h + gap)))
    return sheet


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()
