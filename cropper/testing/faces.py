"""Real photos with faces for tests and benchmarks, from scikit-image (they ship offline).

:func:`astronaut` is Eileen Collins (``skimage.data.astronaut()``, public domain) with her
face's box; :func:`group_photo` pastes her at four sizes onto a larger photo, so that a test
knows where each face is. scikit-image is in the ``dev`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, MissingDependencyError

#: Her face in the 512 x 512 photo, ``(left, top, right, bottom)`` pixels: the box OpenCV's
#: frontal cascades find (default at [177, 66, 95, 95] x, y, w, h; alt2 two pixels larger).
ASTRONAUT_FACE = (177, 66, 272, 161)

#: The pastes of :func:`group_photo`: each one's side as a share of the photo's height,
#: largest first. They fit, in two rows, any photo from 4:3 to 2:1 and wider.
PASTES = (0.6, 0.45, 0.34, 0.27)


@dataclass(frozen=True)
class GroupPhoto:
    """A photo with the astronaut pasted several times; the boxes are normalized."""

    image: Image.Image
    faces: tuple[Box, ...]  # each paste's face, largest first
    pastes: tuple[Box, ...]  # where each astronaut was pasted, in the same order


def _skimage_data() -> Any:
    try:
        from skimage import data
    except ImportError:
        raise MissingDependencyError(
            "scikit-image", extra="dev", purpose="the test photos with faces"
        ) from None
    return data


def astronaut() -> tuple[Image.Image, Box]:
    """The 512 x 512 RGB astronaut photo and her face's box."""
    image = Image.fromarray(_skimage_data().astronaut())
    return image, Box.from_pixels(ASTRONAUT_FACE, image.size)


def group_photo(
    size: tuple[int, int] = (2400, 1600),
    pastes: Sequence[float] = PASTES,
    seed: int = 0,
) -> GroupPhoto:
    """The astronaut pasted at each of ``pastes`` sizes onto ``size``, mirrored every other time.

    The ground is scikit-image's coffee photo stretched over the canvas, with a little noise
    (``seed``). The pastes lie in two rows, the first half of them on top, spread evenly
    across the width, so none overlaps another.
    """
    data = _skimage_data()
    w, h = size
    rng = np.random.default_rng(seed)
    ground = Image.fromarray(data.coffee()).resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(ground, dtype=np.float64) + rng.normal(0, 4, (h, w, 3))
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    person, face = astronaut()
    sides = [round(share * h) for share in pastes]
    half = (len(sides) + 1) // 2
    rows = [sides[:half], sides[half:]]
    gap_y = (h - max(rows[0], default=0) - max(rows[1], default=0)) / 3
    if gap_y < 0 or any(sum(row) > w for row in rows):
        raise ConfigError(f"pastes {tuple(pastes)} do not fit a {w}x{h} photo in two rows")
    faces, boxes = [], []
    for r, row in enumerate(rows):
        gap_x = (w - sum(row)) / (len(row) + 1)
        x = gap_x
        for side in row:
            top = round(gap_y) if r == 0 else round(h - gap_y - side)
            left = round(x)
            mirrored = len(boxes) % 2 == 1
            picture = person.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else person
            canvas.paste(picture.resize((side, side), Image.Resampling.LANCZOS), (left, top))
            fx0, fx1 = (1 - face.x1, 1 - face.x0) if mirrored else (face.x0, face.x1)
            faces.append(
                Box.from_pixels(
                    (
                        left + fx0 * side,
                        top + face.y0 * side,
                        left + fx1 * side,
                        top + face.y1 * side,
                    ),
                    size,
                )
            )
            boxes.append(Box.from_pixels((left, top, left + side, top + side), size))
            x += side + gap_x
    order = sorted(range(len(boxes)), key=lambda i: -boxes[i].area)
    return GroupPhoto(canvas, tuple(faces[i] for i in order), tuple(boxes[i] for i in order))


def lfw_photo(
    faces: bool = True,
    start: int = 0,
    rows: int = 4,
    cols: int = 5,
    tile: int = 200,
    face: int = 96,
) -> GroupPhoto:
    """A grey class photo: ``rows x cols`` of scikit-image's LFW crops, ``face`` px each.

    ``skimage.data.lfw_subset()`` holds 100 tightly cropped faces of different people from
    Labeled Faces in the Wild, then 100 patches of photos with no face (25 x 25 px each).
    ``faces=False`` takes the patches. Each crop is enlarged to ``face`` px in the middle of
    its ``tile``, on the crop's mean grey. ``faces`` of the result holds the crops' boxes
    (the patches' too), ``pastes`` the tiles.
    """
    if not (0 <= start and start + rows * cols <= 100):
        raise ConfigError(f"the subset holds 100 of each: {start} + {rows}x{cols} is too many")
    if face > tile:
        raise ConfigError(f"a {face} px face does not fit a {tile} px tile")
    crops = _skimage_data().lfw_subset()[(0 if faces else 100) + start :][: rows * cols]
    size = (cols * tile, rows * tile)
    canvas = Image.new("L", size)
    where, boxes, offset = [], [], (tile - face) // 2
    for i, crop in enumerate(crops):
        r, c = divmod(i, cols)
        picture = Image.fromarray(np.round(crop * 255).astype(np.uint8))
        picture = picture.resize((face, face), Image.Resampling.BICUBIC)
        mean = int(np.asarray(picture).mean())
        canvas.paste(mean, (c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
        canvas.paste(picture, (c * tile + offset, r * tile + offset))
        left, top = c * tile + offset, r * tile + offset
        where.append(Box.from_pixels((left, top, left + face, top + face), size))
        boxes.append(Box.from_pixels((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile), size))
    return GroupPhoto(canvas.convert("RGB"), tuple(where), tuple(boxes))
