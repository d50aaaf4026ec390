"""Synthetic photos for tests, benchmarks and notebooks: coloured discs on a coloured ground."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def synthetic_photo(seed: int, size: tuple[int, int] = (1024, 768), discs: int = 12) -> Image.Image:
    """A deterministic photo-sized image; different seeds give different layouts and colours."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(discs):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        r = int(rng.integers(20, 200) * min(size) / 768)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return image


def salient_square(
    size: tuple[int, int] = (640, 480),
    square: tuple[int, int, int, int] = (420, 300, 500, 380),
    seed: int = 0,
) -> Image.Image:
    """A dull, slightly noisy photo with one bright ``(left, top, right, bottom)`` square."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.clip(90 + rng.normal(0, 3, (h, w, 3)), 0, 255)
    left, top, right, bottom = square
    pixels[top:bottom, left:right] = 250
    return Image.fromarray(pixels.astype(np.uint8))
