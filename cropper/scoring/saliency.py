"""Spectral-residual saliency (Hou & Zhang, CVPR 2007) and the saliency of candidate crops.

:func:`saliency_map` finds what stands out in a photo from its Fourier spectrum alone, with
no model. :func:`saliency_share` sums the map inside many boxes at once through an integral
image, and :func:`saliency_crop_scores` turns that into the saliency crop's objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.core.tasks import Subject

#: Width of the map: Hou & Zhang compute at 64 px, where the spectral residual marks objects
#: rather than texture.
MAP_WIDTH = 64

#: Blur of the squared residual, in map pixels; spreads each salient point over ~1/10 of it.
BLUR_SIGMA = 3.0

#: Weight of the share cut away against the share of saliency kept (see saliency_crop_scores).
CUT_WEIGHT = 0.5


def saliency_map(
    image: Image.Image, *, width: int = MAP_WIDTH, sigma: float = BLUR_SIGMA
) -> np.ndarray:
    """The spectral-residual saliency of ``image``: ``(h, width)`` floats in [0, 1].

    Grayscale at ``width`` pixels wide; the log amplitude spectrum minus its 3x3 mean is the
    residual; back with the original phase, squared, Gaussian-blurred, scaled to [0, 1]. A
    photo where nothing stands out (a flat one) gives a uniform map of ones.
    """
    from scipy import ndimage

    if width < 4:
        raise ConfigError(f"saliency map width must be at least 4 pixels, got {width}")
    w, h = image.size
    height = max(4, round(width * h / w))
    gray = image.convert("L").resize((width, height), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64) / 255.0
    if np.ptp(pixels) < 1 / 255:
        return np.ones_like(pixels)  # a flat photo: its spectrum is all DC, nothing stands out
    spectrum = np.fft.fft2(pixels)
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    # The spectrum is periodic, so its 3x3 mean wraps around the edges.
    residual = log_amplitude - ndimage.uniform_filter(log_amplitude, size=3, mode="wrap")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = ndimage.gaussian_filter(sal, sigma=sigma, mode="nearest")
    low, high = float(sal.min()), float(sal.max())
    if not np.isfinite(high) or high - low <= 1e-12 * max(abs(high), 1.0):
        return np.ones_like(sal)
    return (sal - low) / (high - low)


def saliency_share(sal: np.ndarray, boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    """The share of the map's total saliency inside each box, shape ``(N,)``, in [0, 1].

    ``boxes`` are :class:`Box` es or ``(N, 4)`` normalized xyxy rows. The map counts as
    constant over each of its pixels, so a box edge inside a pixel takes its part of that
    pixel: the integral image is bilinear there, and interpolating it is exact.
    """
    sal = _check_map(sal)
    rows = _rows(boxes)
    total = float(sal.sum())
    if len(rows) == 0:
        return np.zeros(0)
    if total <= 0:
        return np.zeros(len(rows))
    h, w = sal.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = sal.cumsum(axis=0).cumsum(axis=1)
    x0, y0, x1, y1 = (rows[:, i] for i in range(4))
    xs0, xs1, ys0, ys1 = x0 * w, x1 * w, y0 * h, y1 * h
    inside = (
        _bilinear(integral, xs1, ys1)
        - _bilinear(integral, xs0, ys1)
        - _bilinear(integral, xs1, ys0)
        + _bilinear(integral, xs0, ys0)
    )
    return np.clip(inside / total, 0.0, 1.0)


def saliency_crop_scores(
    sal: np.ndarray, boxes: Sequence[Box] | np.ndarray, *, cut_weight: float = CUT_WEIGHT
) -> np.ndarray:
    """The saliency crop's objective for each box, in [0, 1]: higher is better.

    ``(kept + cut_weight * (1 - area)) / (1 + cut_weight)``: the weighted mean of the share of
    saliency the crop keeps and the share of the photo it cuts away. Cutting a strip pays
    exactly when the strip's saliency per unit area is below ``cut_weight`` times the photo's
    mean, so a uniform map keeps the largest crop and a compact salient object gets a tight
    crop around it.
    """
    if not (np.isfinite(cut_weight) and cut_weight >= 0):
        raise ConfigError(f"cut_weight must be a number >= 0, got {cut_weight!r}")
    rows = _rows(boxes)
    kept = saliency_share(sal, rows)
    area = (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1]) if len(rows) else np.zeros(0)
    return (kept + cut_weight * (1.0 - area)) / (1.0 + cut_weight)


def salient_point(sal: np.ndarray) -> tuple[float, float]:
    """The normalized ``(x, y)`` centre of the map's most salient pixel."""
    sal = _check_map(sal)
    row, col = np.unravel_index(int(np.argmax(sal)), sal.shape)
    return (col + 0.5) / sal.shape[1], (row + 0.5) / sal.shape[0]


def main_subject(image: Image.Image) -> Subject:
    """The photo's most salient point as its subject, for when no VLM can find one."""
    return Subject(salient_point(saliency_map(image)), source="saliency")


def _bilinear(table: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``table`` (indexed ``[y, x]``) interpolated bilinearly at fractional ``(xs, ys)``."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    xs, ys = np.clip(xs, 0, w), np.clip(ys, 0, h)
    i0 = np.minimum(np.floor(xs).astype(int), w - 1)
    j0 = np.minimum(np.floor(ys).astype(int), h - 1)
    fx, fy = xs - i0, ys - j0
    top = table[j0, i0] * (1 - fx) + table[j0, i0 + 1] * fx
    bottom = table[j0 + 1, i0] * (1 - fx) + table[j0 + 1, i0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _rows(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    if isinstance(boxes, np.ndarray):
        rows = np.asarray(boxes, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 4:
            raise ConfigError(f"boxes must be an (N, 4) array of xyxy rows, got {rows.shape}")
        return rows
    return np.array([b.as_array() for b in boxes], dtype=np.float64).reshape(-1, 4)


def _check_map(sal: np.ndarray) -> np.ndarray:
    sal = np.asarray(sal, dtype=np.float64)
    if sal.ndim != 2 or min(sal.shape) < 1 or not np.isfinite(sal).all():
        raise ConfigError(f"a saliency map must be a finite 2-d array, got shape {sal.shape}")
    return sal
