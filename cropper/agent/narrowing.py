"""Rank few of a photo's candidate crops with the embedder: a cheap first pass, then a search.

The head baseline (``Cropper(vlm=None)``) ranks GAICD's grid (87-90 crops a photo) by the
aesthetic head over each crop's CLIP embedding; on a CPU the embeddings are nearly all of its
time. Here only ``budget`` of them are embedded:

1. **A cheap first pass** scores every candidate without a model (:func:`cheap_scores`):
   the share of the photo's spectral-residual saliency it keeps, where that saliency sits in
   it (composition: on a third line or the centre), and its share of the photo (geometry:
   people who rated GAICD's grid preferred its larger crops).
2. **Seeds**: the ``seeds`` best by that score, each overlapping every one before it by
   less than :data:`SEED_IOU`, so they spread over the grid, are embedded and ranked.
3. **Refinement**: the rest of the budget goes, in :data:`ROUNDS` passes, to the crops
   nearest (by IoU) the best crop ranked so far. Neighbouring grid crops look alike, so
   their embeddings and scores do too: the search climbs to the best crop of its region.

Checked against the whole grid in ``benchmarks/no_vlm.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cropper.core.boxes import Box, iou_matrix
from cropper.core.errors import ConfigError
from cropper.scoring.saliency import saliency_share

#: Crops the embedder ranks out of a photo's candidates (the whole grid is 87-90). The
#: seeds, rounds and this budget were chosen on GAICD's 1,036 training photos with people's
#: ratings standing in for the head (benchmarks/README.md): 16 find the grid's best crop
#: for most photos and one of its five best for nearly all, and cost about a fifth of the
#: grid's CLIP time.
NARROW = 16

#: Of those, the crops the cheap first pass picks, spread over the candidates.
SEEDS = 6

#: Two seeds overlap less than this (IoU). A grid crop's nearest neighbours, one cell
#: apart, overlap it 0.875-0.91, and about 17 of its grid overlap it 0.75 or more, so the
#: seeds lie a few cells apart.
SEED_IOU = 0.75

#: Passes the rest of the budget is spent in, each around the best crop ranked so far.
ROUNDS = 3

#: Weights of the cheap score's terms (each in [0, 1]).
CHEAP_WEIGHTS = {"saliency": 1.0, "composition": 0.5, "area": 1.0}

#: Where a crop's salient mass may sit, in the crop's own unit square: the four
#: rule-of-thirds points and the centre.
POWER_POINTS = np.array(
    [(1 / 3, 1 / 3), (2 / 3, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 2 / 3), (0.5, 0.5)]
)
#: The farthest a point of the unit square lies from the nearest power point (a corner).
_FARTHEST = float(np.hypot(1 / 3, 1 / 3))


def check_narrow(narrow: int | None) -> int | None:
    """``narrow`` when it is None (the whole grid) or a whole number >= 1."""
    if narrow is None:
        return None
    if isinstance(narrow, bool) or not isinstance(narrow, int) or narrow < 1:
        raise ConfigError(
            f"narrow must be a whole number of crops >= 1, or None for the whole grid; "
            f"got {narrow!r}"
        )
    return narrow


def cheap_scores(sal: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The first pass's score of each box, in [0, 1]: no model, a few ms for a grid.

    A weighted mean (:data:`CHEAP_WEIGHTS`) of the share of ``sal`` (a saliency map) the box
    keeps, how near its salient centroid sits to a power point (:data:`POWER_POINTS`), and
    its area.
    """
    if not boxes:
        return np.zeros(0)
    rows = np.array([b.as_array() for b in boxes], dtype=np.float64)
    terms = {
        "saliency": saliency_share(sal, rows),
        "composition": composition_scores(sal, rows),
        "area": (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1]),
    }
    total = sum(CHEAP_WEIGHTS[t] * v for t, v in terms.items())
    return total / sum(CHEAP_WEIGHTS.values())


def composition_scores(sal: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """1 where a box's salient centroid sits on a power point, 0 at the farthest from one.

    The centroid of ``sal`` within each box comes from integral images (exact for the map's
    pixels); a box holding no saliency scores 0.
    """
    sal = np.asarray(sal, dtype=np.float64)
    h, w = sal.shape
    ys, xs = np.mgrid[0:h, 0:w]
    mass = saliency_share(sal, rows)
    # The centroid's coordinates are ratios of shares of the maps weighted by x and y.
    xw = saliency_share(sal * (xs + 0.5) / w, rows) * float((sal * (xs + 0.5) / w).sum())
    yw = saliency_share(sal * (ys + 0.5) / h, rows) * float((sal * (ys + 0.5) / h).sum())
    held = mass * float(sal.sum())
    safe = np.where(held > 0, held, 1.0)
    cx, cy = xw / safe, yw / safe
    width = np.maximum(rows[:, 2] - rows[:, 0], 1e-9)
    height = np.maximum(rows[:, 3] - rows[:, 1], 1e-9)
    u = np.clip((cx - rows[:, 0]) / width, 0.0, 1.0)
    v = np.clip((cy - rows[:, 1]) / height, 0.0, 1.0)
    gaps = np.hypot(u[:, None] - POWER_POINTS[None, :, 0], v[:, None] - POWER_POINTS[None, :, 1])
    score = 1.0 - gaps.min(axis=1) / _FARTHEST
    return np.where(held > 0, np.clip(score, 0.0, 1.0), 0.0)


def spread(
    order: Sequence[int], ious: np.ndarray, count: int, limit: float = SEED_IOU
) -> list[int]:
    """Up to ``count`` of ``order`` (best first), each overlapping those before by < ``limit``.

    When too few are that far apart, the best of the rest fill the places left.
    """
    picked: list[int] = []
    for i in order:
        if len(picked) == count:
            return picked
        if all(ious[i, j] < limit for j in picked):
            picked.append(i)
    for i in order:
        if len(picked) == count:
            break
        if i not in picked:
            picked.append(i)
    return picked


def search(
    boxes: Sequence[Box],
    cheap: np.ndarray,
    rank: Callable[[list[int]], Sequence[float]],
    *,
    budget: int = NARROW,
    seeds: int = SEEDS,
    rounds: int = ROUNDS,
) -> dict[int, float]:
    """The scores ``rank`` gives the ``budget`` boxes the search visits, by index.

    ``rank(indices)`` scores those boxes (one embedder call each time). With ``budget`` at
    least the number of boxes, every box is ranked in one call. The seeds are ranked first,
    then ``rounds`` passes rank the unranked boxes nearest the best ranked so far.
    """
    n = len(boxes)
    if budget >= n:
        every = list(range(n))
        return dict(zip(every, map(float, rank(every)), strict=True))
    if len(cheap) != n:
        raise ConfigError(f"{len(cheap)} cheap scores for {n} boxes")
    rows = np.array([b.as_array() for b in boxes], dtype=np.float64)
    ious = iou_matrix(rows, rows)
    order = [int(i) for i in np.argsort(-np.asarray(cheap), kind="stable")]
    first = spread(order, ious, min(max(1, seeds), budget))
    scores = dict(zip(first, map(float, rank(first)), strict=True))
    left = budget - len(first)
    for r in range(rounds):
        share = left // (rounds - r)
        if share <= 0:
            continue
        best = max(scores, key=lambda i: (scores[i], -i))
        near = [int(i) for i in np.argsort(-ious[best], kind="stable") if int(i) not in scores]
        batch = near[:share]
        if not batch:
            break
        scores.update(zip(batch, map(float, rank(batch)), strict=True))
        left -= len(batch)
    return scores
