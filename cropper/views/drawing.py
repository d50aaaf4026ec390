"""Boxes drawn on photos: a result's candidates, reports and galleries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from cropper.core.boxes import Box

if TYPE_CHECKING:
    from cropper.agent.result import CropResult, RatioCrops

#: Colours with a meaning, used the same way everywhere.
TRUTH = (40, 200, 80)  # a ground-truth crop
PREDICTION = (230, 40, 40)  # the chosen crop
FACE = (255, 214, 0)  # a protected face
KEEP = (160, 230, 40)  # a region every crop holds (lime: TRUTH's green is a ground truth)
AVOID = (120, 120, 120)  # a region crops should leave out
FOCUS = (255, 255, 255)  # the crop's focal point: a white ring with a red centre
#: One colour a round, in order; none of them is TRUTH's green or PREDICTION's red.
ROUND_COLOURS = (
    (66, 133, 244),  # blue
    (255, 167, 38),  # orange
    (171, 71, 188),  # purple
    (0, 188, 212),  # cyan
    (240, 98, 146),  # pink
    (141, 110, 99),  # brown
)


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


def round_colour(index: int) -> tuple[int, int, int]:
    return ROUND_COLOURS[index % len(ROUND_COLOURS)]


def draw_result(
    result: CropResult,
    *,
    rounds: Iterable[int] | None = None,
    labels: bool = True,
    max_side: int | None = 1024,
    legend: bool = True,
) -> Image.Image:
    """The photo with ``result``'s candidates outlined, a colour a round, and the chosen crop.

    Each candidate is labelled with its score; the chosen crop is drawn last, thick, in
    :data:`PREDICTION` red over a white halo so it shows on any photo. ``rounds`` limits the
    candidates to those rounds (the chosen crop is always drawn); ``max_side`` bounds the
    picture (None: full size); ``legend`` adds a strip naming the colours.
    """
    photo = _fitted(result.preview(max_side), max_side)
    wanted = None if rounds is None else set(rounds)
    pen = max(1, round(max(photo.size) / 300))
    font = _font(max(10, round(max(photo.size) / 45)))
    draw = ImageDraw.Draw(photo)
    for cand in result.candidates:
        if wanted is not None and cand.round not in wanted:
            continue
        colour = round_colour(cand.round)
        left, top, right, bottom = _rect(cand.box, photo.size)
        draw.rectangle((left, top, right, bottom), outline=colour, width=pen)
        if labels:
            _label(draw, (left + pen, top + pen), f"{cand.score:.2f}", colour, font)
    regions = _draw_regions(draw, result, photo.size, pen, font if labels else None)
    _draw_chosen(draw, result.box, photo.size, pen, f"chosen {result.score:.2f}", font, labels)
    if result.focus is not None:
        _draw_focus(draw, result.focus, photo.size, pen)
        regions.append(("focus", PREDICTION))
    if not legend:
        return photo
    shown = sorted({c.round for c in result.candidates if wanted is None or c.round in wanted})
    stages = {r.index: r.stage for r in result.rounds}
    keys = [(f"round {k} {stages.get(k, '')}".rstrip(), round_colour(k)) for k in shown]
    return _with_legend(photo, [*keys, ("chosen", PREDICTION), *regions], font)


def draw_ratio_crops(
    crops: RatioCrops, *, labels: bool = True, max_side: int | None = 1024
) -> Image.Image:
    """The photo with each ratio's crop outlined in a colour of its own, labelled by its ratio.

    The protected faces, the regions to keep and avoid, and each crop's focus are marked.
    """
    first = next(iter(crops.values()))
    photo = _fitted(first.preview(max_side), max_side)
    pen = max(1, round(max(photo.size) / 300))
    font = _font(max(10, round(max(photo.size) / 45)))
    draw = ImageDraw.Draw(photo)
    regions = _draw_regions(draw, first, photo.size, pen, font if labels else None)
    keys = []
    for i, (text, result) in enumerate(crops.items()):
        colour = round_colour(i)
        left, top, right, bottom = _rect(result.box, photo.size)
        draw.rectangle((left, top, right, bottom), outline=(255, 255, 255), width=2 * pen + 2)
        draw.rectangle((left, top, right, bottom), outline=colour, width=2 * pen)
        if labels:
            _label(draw, (left + 2 * pen + 1, top + 2 * pen + 1), text, colour, font)
        if result.focus is not None:
            _draw_focus(draw, result.focus, photo.size, pen, colour)
        keys.append((text, colour))
    return _with_legend(photo, [*keys, *regions], font)


def _fitted(image: Image.Image, max_side: int | None) -> Image.Image:
    photo = image.convert("RGB")
    if max_side and max(photo.size) > max_side:
        scale = max_side / max(photo.size)
        photo = photo.resize(
            (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
            Image.Resampling.BICUBIC,
        )
    return photo


def _draw_chosen(draw, box: Box, size, pen: int, text: str, font, labels: bool) -> None:
    left, top, right, bottom = _rect(box, size)
    draw.rectangle((left, top, right, bottom), outline=(255, 255, 255), width=3 * pen + 2)
    draw.rectangle((left, top, right, bottom), outline=PREDICTION, width=3 * pen)
    if labels:
        corner = (left + 3 * pen + 1, max(top, bottom - 3 * pen - font.size - 6))
        _label(draw, corner, text, PREDICTION, font)


def _draw_regions(draw, result: CropResult, size, pen: int, font) -> list[tuple[str, tuple]]:
    """The protected faces and the regions to keep and avoid; their legend keys."""
    keys = []
    for name, boxes, colour in (
        ("face", result.faces or (), FACE),
        ("keep", result.keep, KEEP),
        ("avoid", result.avoid, AVOID),
    ):
        for box in boxes:
            left, top, right, bottom = _rect(box, size)
            dash = max(4, 4 * pen)
            for x in range(left, right, 2 * dash):  # dashed: a region, not a crop
                draw.line((x, top, min(x + dash, right), top), fill=colour, width=pen + 1)
                draw.line((x, bottom, min(x + dash, right), bottom), fill=colour, width=pen + 1)
            for y in range(top, bottom, 2 * dash):
                draw.line((left, y, left, min(y + dash, bottom)), fill=colour, width=pen + 1)
                draw.line((right, y, right, min(y + dash, bottom)), fill=colour, width=pen + 1)
            if font is not None:
                _label(draw, (left, max(0, top - font.size - 6)), name, colour, font)
        if boxes:
            keys.append((name, colour))
    return keys


def _draw_focus(draw, focus, size, pen: int, colour=PREDICTION) -> None:
    """A ring at the focal point: white, then the colour, so it shows on any photo."""
    x, y = focus[0] * size[0], focus[1] * size[1]
    r = max(5, 4 * pen)
    draw.ellipse((x - r - pen, y - r - pen, x + r + pen, y + r + pen), outline=FOCUS, width=2 * pen)
    draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=pen + 1)
    draw.ellipse((x - pen, y - pen, x + pen, y + pen), fill=colour)


def _rect(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = box.to_pixels(size)
    return left, top, max(left, right - 1), max(top, bottom - 1)


def _label(draw: ImageDraw.ImageDraw, at: tuple[int, int], text: str, colour, font) -> None:
    """``text`` in white on a patch of ``colour``, so it reads on any photo.

    The patch is moved inside the picture where it would stick out of an edge, so a label
    near the photo's border is never cut.
    """
    width, height = draw.im.size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    patch_w, patch_h = right - min(left, 0) + 6, bottom - min(top, 0) + 4
    x = min(max(at[0], 0), max(width - patch_w, 0))
    y = min(max(at[1], 0), max(height - patch_h, 0))
    draw.rectangle((x, y, x + patch_w, y + patch_h), fill=colour)
    draw.text((x + 3 - min(left, 0), y + 2 - min(top, 0)), text, fill=(255, 255, 255), font=font)


def _with_legend(image: Image.Image, keys, font) -> Image.Image:
    swatch = font.size
    height = swatch + 10
    out = Image.new("RGB", (image.width, image.height + height), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    x, y = 6, image.height + 5
    for text, colour in keys:
        draw.rectangle((x, y, x + swatch, y + swatch), fill=colour)
        draw.text((x + swatch + 4, y), text, fill="black", font=font)
        x += swatch + 12 + round(draw.textlength(text, font=font))
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


def _font(size: int = 11) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font scales when FreeType is present (Pillow >= 10.1 ships it).
    return ImageFont.load_default(size=size)
