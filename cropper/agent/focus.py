"""Where a crop's interest lies: the point a page should keep in view when it trims again.

``result.focus`` is a normalized ``(x, y)`` of the photo, as every box is: the subject's
centre when the request has a subject, else the centre of the largest protected face in
the crop, else the saliency-weighted centre of the crop (spectral residual, no model). A
web page gives it to CSS ``object-position`` (relative to the crop: see
:func:`within_crop`) or to a CDN's focal point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cropper.core.boxes import Box
from cropper.core.tasks import Subject


def focus_point(
    box: Box,
    *,
    subject: Subject | None = None,
    faces: Sequence[Box] = (),
    saliency: np.ndarray | None = None,
) -> tuple[float, float]:
    """The crop's centre of interest, normalized in the photo and inside ``box``."""
    if subject is not None:
        return _inside(subject.point, box)
    held = [
        f for f in faces if box.x0 <= f.x0 and box.y0 <= f.y0 and f.x1 <= box.x1 and f.y1 <= box.y1
    ]
    if held:
        return _inside(max(held, key=lambda f: f.area).center, box)
    if saliency is not None:
        return _inside(_weighted_centre(saliency, box), box)
    return _inside(box.center, box)


def within_crop(point: tuple[float, float], box: Box) -> tuple[float, float]:
    """``point`` (normalized in the photo) as a share of the crop's width and height."""
    return (point[0] - box.x0) / box.width, (point[1] - box.y0) / box.height


def _weighted_centre(saliency: np.ndarray, box: Box) -> tuple[float, float]:
    """The saliency-weighted mean of the map's pixel centres that lie in ``box``."""
    h, w = saliency.shape
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    cols = (xs >= box.x0) & (xs <= box.x1)
    rows = (ys >= box.y0) & (ys <= box.y1)
    weights = saliency[np.ix_(rows, cols)]
    total = float(weights.sum())
    if not cols.any() or not rows.any() or total <= 0:
        return box.center  # a crop narrower than a map pixel, or nothing stands out
    x = float((weights.sum(axis=0) * xs[cols]).sum() / total)
    y = float((weights.sum(axis=1) * ys[rows]).sum() / total)
    return x, y


def _inside(point: tuple[float, float], box: Box) -> tuple[float, float]:
    x = min(max(float(point[0]), box.x0), box.x1)
    y = min(max(float(point[1]), box.y0), box.y1)
    return round(x, 4), round(y, 4)
