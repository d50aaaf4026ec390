"""The one canonical box, and the pure array functions behind it.

A :class:`Box` is normalized ``x0, y0, x1, y1`` in [0, 1] of the EXIF-corrected
photo. Every other form (pixels, 1-1000 or 0-1000 integers, ``yxyx``, PIL's
``(left, upper, right, lower)``) exists only at the edges, through the
conversions here. Image sizes are always ``(w, h)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cropper.core.errors import ConfigError

Size = tuple[int, int]
#: A box in pixels as annotations and outputs write it: ``(left, top, right, bottom)``.
PixelBox = tuple[float, float, float, float]
Coords = Literal["norm1", "norm1000", "rel1000", "pixel"]

#: The coordinate conventions a prompt or a model may use, and what each means.
COORDS: dict[str, str] = {
    "norm1": "floats from 0 to 1, relative to the photo's width and height",
    "norm1000": "integers from 0 to 1000, relative to the photo's width and height (Qwen3-VL)",
    "rel1000": "integers from 1 to 1000, relative to the photo's width and height (the paper)",
    "pixel": "integer pixels of the photo as the model sees it (Qwen2.5-VL)",
}

_EPS = 1e-9


def check_coords(coords: str) -> str:
    """Return ``coords`` if it names a known convention, else raise a clear error."""
    if coords not in COORDS:
        raise ConfigError(f"unknown coordinate convention {coords!r}: use one of {sorted(COORDS)}")
    return coords


def _scale(coords: str, size: Size | None) -> tuple[float, float]:
    """Units per full width and per full height in a convention."""
    check_coords(coords)
    if coords == "norm1":
        return 1.0, 1.0
    if coords in ("norm1000", "rel1000"):
        return 1000.0, 1000.0
    if size is None:
        raise ConfigError("pixel coordinates need the image size (w, h)")
    return float(size[0]), float(size[1])


def to_unit(values: np.ndarray, coords: str, size: Size | None = None) -> np.ndarray:
    """Map ``(N, 4)`` xyxy values in ``coords`` to unit floats (unchecked, a copy)."""
    sx, sy = _scale(coords, size)
    out = np.array(values, dtype=np.float64).reshape(-1, 4)
    return out / np.array([sx, sy, sx, sy])


def point_to_coords(point: Sequence[float], coords: str, size: Size | None = None) -> tuple:
    """A normalized ``(x, y)`` point written in a convention of :data:`COORDS`."""
    sx, sy = _scale(coords, size)
    if coords == "norm1":
        return round(float(point[0]), 4), round(float(point[1]), 4)
    return round(float(point[0]) * sx), round(float(point[1]) * sy)


@dataclass(frozen=True, slots=True)
class Box:
    """A crop: normalized ``x0, y0, x1, y1`` with ``0 <= x0 < x1 <= 1`` and likewise y."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise ConfigError(f"Box needs four finite numbers, got {values}")
        for name, v in zip(("x0", "y0", "x1", "y1"), values, strict=True):
            object.__setattr__(self, name, float(v))  # numpy scalars become plain floats
        if not (-_EPS <= self.x0 < self.x1 <= 1 + _EPS and -_EPS <= self.y0 < self.y1 <= 1 + _EPS):
            raise ConfigError(
                f"Box expects 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {values}; "
                "use Box.from_pixels for pixel boxes or cropper.core.boxes.sanitize for raw values"
            )

    # -- construction ------------------------------------------------------
    @classmethod
    def whole(cls) -> Box:
        """The whole photo."""
        return cls(0.0, 0.0, 1.0, 1.0)

    @classmethod
    def from_coords(cls, values: Sequence[float], coords: str, size: Size | None = None) -> Box:
        """Build from xyxy ``values`` in a convention of :data:`COORDS`."""
        x0, y0, x1, y1 = to_unit(values, coords, size)[0]
        return cls(float(x0), float(y0), float(x1), float(y1))

    @classmethod
    def from_pixels(cls, box: Sequence[float], size: Size) -> Box:
        """From PIL's ``(left, upper, right, lower)`` in pixels of an image of ``size``."""
        return cls.from_coords(box, "pixel", size)

    @classmethod
    def from_xywh(cls, box: Sequence[float], size: Size) -> Box:
        """From pixel ``(x, y, w, h)`` (FCDB, SACD)."""
        return cls.from_pixels(xywh_to_xyxy(box), size)

    @classmethod
    def from_yxyx(
        cls, box: Sequence[float], coords: str = "norm1", size: Size | None = None
    ) -> Box:
        """From ``(y0, x0, y1, x1)`` order (GAICD annotations, Gemini)."""
        return cls.from_coords(yxyx_to_xyxy(box), coords, size)

    # -- conversion --------------------------------------------------------
    def to_coords(self, coords: str, size: Size | None = None) -> tuple[float, ...]:
        """The box in a convention of :data:`COORDS`: ints for integer ones, floats for norm1."""
        sx, sy = _scale(coords, size)
        if coords == "pixel":
            return self.to_pixels(size)  # type: ignore[arg-type]
        raw = (self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)
        if coords == "norm1":
            return tuple(round(v, 4) for v in raw)
        low = 1 if coords == "rel1000" else 0
        limits = (sx, sy, sx, sy)
        return tuple(int(min(max(round(v), low), lim)) for v, lim in zip(raw, limits, strict=True))

    def to_pixels(self, size: Size) -> tuple[int, int, int, int]:
        """PIL's ``(left, upper, right, lower)`` ints, at least one pixel wide and high."""
        left, right = _pixel_span(self.x0, self.x1, size[0])
        top, bottom = _pixel_span(self.y0, self.y1, size[1])
        return left, top, right, bottom

    def to_yxyx(self) -> tuple[float, float, float, float]:
        return self.y0, self.x0, self.y1, self.x1

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    # -- geometry ----------------------------------------------------------
    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        """Share of the photo's area, in [0, 1]."""
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def aspect(self, size: Size) -> float:
        """Width over height in pixels of an image of ``size``."""
        return (self.width * size[0]) / (self.height * size[1])

    def iou(self, other: Box) -> float:
        return float(iou_matrix(self.as_array()[None], other.as_array()[None])[0, 0])

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def __str__(self) -> str:
        return f"Box({self.x0:.4f}, {self.y0:.4f}, {self.x1:.4f}, {self.y1:.4f})"


def _pixel_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Rounded pixel edges of ``[lo, hi]`` on an axis of ``n`` pixels, at least 1 px wide."""
    a, b = round(lo * n), round(hi * n)
    if b <= a:  # narrower than a pixel: the pixel under its middle
        a = min(max(math.floor((lo + hi) / 2 * n), 0), n - 1)
        b = a + 1
    return a, b


def xywh_to_xyxy(box: Sequence[float]) -> PixelBox:
    """``(x, y, w, h)`` (FCDB, SACD) as ``(left, top, right, bottom)``."""
    x, y, w, h = box
    return x, y, x + w, y + h


def yxyx_to_xyxy(box: Sequence[float]) -> PixelBox:
    """``(y0, x0, y1, x1)`` (GAICD, Gemini) as ``(left, top, right, bottom)``."""
    y0, x0, y1, x1 = box
    return x0, y0, x1, y1


# -- array functions over (N, 4) xyxy; each copies its input --------------------


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes, shape ``(N, M)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def sanitize(values: np.ndarray, min_side: float = 1e-3) -> np.ndarray:
    """Make raw unit xyxy rows valid: drop non-finite, reorder corners, clamp, drop slivers.

    Returns the surviving rows as a new ``(K, 4)`` array.
    """
    arr = np.array(values, dtype=np.float64).reshape(-1, 4)
    arr = arr[np.isfinite(arr).all(axis=1)]
    xs, ys = np.sort(arr[:, [0, 2]], axis=1), np.sort(arr[:, [1, 3]], axis=1)
    arr = np.clip(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1), 0.0, 1.0)
    keep = ((arr[:, 2] - arr[:, 0]) >= min_side) & ((arr[:, 3] - arr[:, 1]) >= min_side)
    return arr[keep]


def dedupe(values: np.ndarray, iou_threshold: float = 0.98) -> np.ndarray:
    """Drop rows that nearly repeat an earlier row (IoU above ``iou_threshold``)."""
    arr = np.array(values, dtype=np.float64).reshape(-1, 4)
    if len(arr) < 2:
        return arr
    ious = iou_matrix(arr, arr)
    keep: list[int] = []
    for i in range(len(arr)):
        if all(ious[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return arr[keep]


def _sizes_of_ratio(ratio: float, size: Size) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of ratio ``ratio`` (within half a pixel) up to the image's sides.

    Every integer length of the longer side, each paired with the other side's lengths
    within half a pixel of the ratio (both of them at an exact .5 tie).
    """
    w_img, h_img = size
    if ratio >= 1:
        cand_w = np.arange(1, w_img + 1, dtype=np.float64)
        ideal = cand_w / ratio
        cand_w = np.concatenate([cand_w, cand_w])
        cand_h = np.concatenate([np.ceil(ideal - 0.5 - 1e-9), np.floor(ideal + 0.5 + 1e-9)])
    else:
        cand_h = np.arange(1, h_img + 1, dtype=np.float64)
        ideal = cand_h * ratio
        cand_h = np.concatenate([cand_h, cand_h])
        cand_w = np.concatenate([np.ceil(ideal - 0.5 - 1e-9), np.floor(ideal + 0.5 + 1e-9)])
    return cand_w, cand_h


def fit_aspect(box: Box, ratio: float, size: Size) -> Box:
    """The box of pixel ratio ``ratio`` (w/h, within 1 px) inside the image, closest to ``box``.

    "Closest" is the highest IoU with ``box`` among every integer size of that ratio,
    each placed as near the proposal's centre as the image allows.
    """
    if not (math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"aspect ratio must be a positive number, got {ratio!r}")
    w_img, h_img = size
    cand_w, cand_h = _sizes_of_ratio(ratio, size)
    ok = (cand_w >= 1) & (cand_h >= 1) & (cand_w <= w_img) & (cand_h <= h_img)
    cand_w, cand_h = cand_w[ok], cand_h[ok]
    if len(cand_w) == 0:  # a ratio the image cannot hold even at 1 px: the thinnest strip
        cand_w, cand_h = (
            (np.array([float(w_img)]), np.array([1.0]))
            if ratio > 1
            else (np.array([1.0]), np.array([float(h_img)]))
        )
    left_p, top_p, right_p, bottom_p = box.to_pixels(size)
    cx, cy = (left_p + right_p) / 2, (top_p + bottom_p) / 2
    left = np.clip(np.round(cx - cand_w / 2), 0, w_img - cand_w)
    top = np.clip(np.round(cy - cand_h / 2), 0, h_img - cand_h)
    cands = np.stack([left, top, left + cand_w, top + cand_h], axis=1)
    best = int(np.argmax(iou_matrix(cands, np.array([[left_p, top_p, right_p, bottom_p]]))[:, 0]))
    return Box.from_pixels(tuple(cands[best]), size)


def fit_box(
    box: PixelBox,
    size: Size,
    *,
    ratio: float | None = None,
    hold: PixelBox | None = None,
    within: PixelBox | None = None,
    least: tuple[int, int] = (1, 1),
) -> PixelBox | None:
    """The pixel box nearest ``box`` that holds ``hold`` and lies ``within``, or ``None``.

    With ``ratio`` (width over height, within 1 px) the box is the one of highest IoU with
    ``box`` among every integer size of the ratio that is at least ``least`` and can hold
    ``hold`` inside ``within``, each placed as near ``box``'s centre as those allow.
    Without, it is ``box`` cut to ``within``, widened to ``hold`` and grown about its centre
    to ``least``. ``None``: no box of the request fits (``hold`` too large for ``within``
    at the ratio, or ``within`` under ``least``). Every box is ``(left, top, right,
    bottom)`` in whole pixels of an image of ``size``.
    """
    w_img, h_img = size
    wx0, wy0, wx1, wy1 = within if within is not None else (0, 0, w_img, h_img)
    if hold is not None and not (
        wx0 <= hold[0] and wy0 <= hold[1] and hold[2] <= wx1 and hold[3] <= wy1
    ):
        return None
    if ratio is None:
        left, top = max(box[0], wx0), max(box[1], wy0)
        right, bottom = min(box[2], wx1), min(box[3], wy1)
        if right <= left or bottom <= top:  # nothing of it within: from its centre, clamped
            cx = min(max((box[0] + box[2]) / 2, wx0), wx1)
            cy = min(max((box[1] + box[3]) / 2, wy0), wy1)
            left, right, top, bottom = math.floor(cx), math.ceil(cx), math.floor(cy), math.ceil(cy)
        if hold is not None:
            left, top = min(left, hold[0]), min(top, hold[1])
            right, bottom = max(right, hold[2]), max(bottom, hold[3])
        spans = []
        for lo, hi, need, start, end in (
            (left, right, least[0], wx0, wx1),
            (top, bottom, least[1], wy0, wy1),
        ):
            if end - start < need:
                return None
            extra = max(0, need - (hi - lo))
            lo, hi = lo - extra // 2, hi + extra - extra // 2
            shift = max(0, start - lo) - max(0, hi - end)
            spans.append((lo + shift, hi + shift))
        (left, right), (top, bottom) = spans
        return float(left), float(top), float(right), float(bottom)
    cand_w, cand_h = _sizes_of_ratio(ratio, size)
    hx0, hy0, hx1, hy1 = hold if hold is not None else (wx1, wy1, wx0, wy0)
    # A box of a size holds ``hold`` inside ``within`` where these ranges of its corner meet.
    lo_x, hi_x = np.maximum(wx0, hx1 - cand_w), np.minimum(wx1 - cand_w, hx0)
    lo_y, hi_y = np.maximum(wy0, hy1 - cand_h), np.minimum(wy1 - cand_h, hy0)
    ok = (
        (cand_w >= max(1, least[0]))
        & (cand_h >= max(1, least[1]))
        & (lo_x <= hi_x)
        & (lo_y <= hi_y)
    )
    if not ok.any():
        return None
    cand_w, cand_h = cand_w[ok], cand_h[ok]
    lo_x, hi_x, lo_y, hi_y = lo_x[ok], hi_x[ok], lo_y[ok], hi_y[ok]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = np.clip(np.round(cx - cand_w / 2), np.ceil(lo_x), np.floor(hi_x))
    top = np.clip(np.round(cy - cand_h / 2), np.ceil(lo_y), np.floor(hi_y))
    cands = np.stack([left, top, left + cand_w, top + cand_h], axis=1)
    best = int(np.argmax(iou_matrix(cands, np.array([box], dtype=np.float64))[:, 0]))
    return tuple(float(v) for v in cands[best])  # type: ignore[return-value]
