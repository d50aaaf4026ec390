"""Candidate crops without a VLM: GAICD's grid anchors and sweeps of exact-ratio boxes.

Pure functions of the photo's size (and the requested ratio or subject point); cheap
enough to call per photo. Every box is a :class:`~cropper.core.boxes.Box`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from cropper.core.boxes import Box, Size
from cropper.core.errors import ConfigError

#: Shares of the largest fitting crop that a ratio sweep tries, each side scaled alike.
SCALES: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)

#: Positions tried along each axis with room to move (evenly spaced, ends included).
STEPS = 5

#: Ratios (w/h) a free-form sweep tries besides the photo's own: the common print formats.
COMMON_RATIOS: tuple[float, ...] = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)


def grid_candidates(
    size: Size,
    *,
    bins: int = 12,
    min_area: float = 0.5,
    aspect_range: tuple[float, float] = (0.5, 2.0),
) -> list[Box]:
    """GAICD's grid-anchor crops (Zeng et al., "Grid anchor based image cropping", CVPR 2019).

    The photo is cut into ``bins`` x ``bins`` cells; a corner sits at a cell's centre, the
    top-left one in the first third of cells on each axis and the bottom-right one in the
    last third (as GAICD's own generator does: 4 x 4 places each for 12 bins). Crops keep at
    least ``min_area`` of the photo (counted in whole cells) and a pixel aspect ratio
    strictly inside ``aspect_range``: GAICD's published generator, 90 crops at most. Checked
    against GAICD's annotations: every crop it gives for a photo is one of that photo's
    annotated crops (within a pixel) for 1,235 of the 1,236 photos; the annotations keep a
    few more crops near 2:1 than the ratio limit admits.
    """
    if not (isinstance(bins, int) and bins >= 3):
        raise ConfigError(f"grid bins must be an integer >= 3, got {bins!r}")
    low, high = aspect_range
    if not 0 < low < high:
        raise ConfigError(
            f"aspect_range must be (low, high) with 0 < low < high, got {aspect_range}"
        )
    w, h = _check_size(size)
    third = bins // 3
    near, far = np.arange(third), np.arange(bins - third, bins)
    x0, y0, x1, y1 = (a.ravel() for a in np.meshgrid(near, near, far, far, indexing="ij"))
    cells_w, cells_h = x1 - x0, y1 - y0
    aspect = (cells_w * w) / (cells_h * h)
    # GAICD compares against 0.4999: half the photo in whole cells counts as half.
    keep = (cells_w * cells_h >= (min_area - 1e-4) * bins * bins) & (low < aspect) & (aspect < high)
    rows = np.stack([x0, y0, x1, y1], axis=1)[keep] + 0.5
    return [Box(*map(float, row / bins)) for row in rows]


def largest_fitting(size: Size, ratio: float) -> tuple[int, int]:
    """The largest whole-pixel ``(w, h)`` of pixel ratio ``ratio`` inside ``size``.

    The shorter side is chosen and the longer one is the whole number nearest the ratio's, so
    the ratio holds within half a pixel of the longer side.
    """
    w_img, h_img = _check_size(size)
    _check_ratio(ratio)
    if ratio >= 1:
        h = _largest_short_side(h_img, w_img, ratio, lambda s: round(s * ratio))
        return min(w_img, max(1, round(h * ratio))), h
    w = _largest_short_side(w_img, h_img, 1 / ratio, lambda s: round(s / ratio))
    return w, min(h_img, max(1, round(w / ratio)))


def _largest_short_side(
    short_room: int, long_room: int, stretch: float, long_of: Callable[[int], int]
) -> int:
    """The longest short side whose long side, ``long_of(short)``, fits in ``long_room``."""
    # The long side rounds, so the short one may reach half a pixel past the exact quotient.
    short = min(short_room, math.floor((long_room + 0.5) / stretch))
    while short > 1 and long_of(short) > long_room:
        short -= 1
    return max(1, short)


def ratio_candidates(
    size: Size, ratio: float, *, scales: Sequence[float] = SCALES, steps: int = STEPS
) -> list[Box]:
    """Crops of pixel ratio ``ratio`` (within 1 px): ``scales`` of the largest, ``steps`` places.

    Each scale shrinks both sides of :func:`largest_fitting`; each size is placed at
    ``steps`` evenly spaced positions along every axis it can move on (one when it cannot).
    """
    w_img, h_img = _check_size(size)
    _check_ratio(ratio)
    if not scales or not all(0 < s <= 1 for s in scales):
        raise ConfigError(f"scales must be numbers in (0, 1], got {tuple(scales)}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    big_w, big_h = largest_fitting(size, ratio)
    rows: list[tuple[int, int, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for scale in scales:
        # Scale the shorter side, then derive the longer, so the ratio holds at every size.
        if ratio >= 1:
            h = max(1, round(big_h * scale))
            w = min(w_img, max(1, round(h * ratio)))
        else:
            w = max(1, round(big_w * scale))
            h = min(h_img, max(1, round(w / ratio)))
        if (w, h) in seen:
            continue
        seen.add((w, h))
        for left in _places(w_img - w, steps):
            for top in _places(h_img - h, steps):
                rows.append((left, top, left + w, top + h))
    return [Box.from_pixels(row, size) for row in rows]


def sweep_candidates(
    size: Size,
    ratios: Sequence[float] = COMMON_RATIOS,
    *,
    scales: Sequence[float] = SCALES,
    steps: int = STEPS,
) -> list[Box]:
    """:func:`ratio_candidates` over the photo's own ratio and ``ratios``, repeats dropped."""
    w, h = _check_size(size)
    seen: set[tuple[int, int, int, int]] = set()
    out: list[Box] = []
    for ratio in (w / h, *ratios):
        for box in ratio_candidates(size, ratio, scales=scales, steps=steps):
            # Whole-pixel boxes: equal pixels are the same crop (an IoU pass costs O(n^2)).
            key = box.to_pixels(size)
            if key not in seen:
                seen.add(key)
                out.append(box)
    return out


def containing(boxes: Sequence[Box], point: tuple[float, float]) -> tuple[list[Box], str | None]:
    """The boxes that hold ``point`` (normalized); all of them, with a note, when none does."""
    kept = [b for b in boxes if b.contains(*point)]
    if kept:
        return kept, None
    return list(boxes), (
        f"no candidate contains the subject at ({point[0]:.3f}, {point[1]:.3f}): ranked them all"
    )


def _places(room: int, steps: int) -> list[int]:
    """Evenly spaced whole-pixel offsets from 0 to ``room``, ends included, no repeats."""
    if room <= 0:
        return [0]
    return sorted({round(v) for v in np.linspace(0, room, steps)})


def _check_size(size: Size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"image size must be (w, h) in pixels, got {size!r}") from None
    if w < 1 or h < 1:
        raise ConfigError(f"image size must be at least 1x1 pixels, got {size!r}")
    return w, h


def _check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"aspect ratio must be a positive number, got {ratio!r}")
