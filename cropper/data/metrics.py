"""The cropping benchmarks' metrics, as their own evaluation code computes them.

Ranking metrics (GAICD) compare a photo's predicted crop scores with the crops' MOS:

- ``acc{K}_{N}``: rank the crops by predicted score (a stable sort, so tied predictions
  keep annotation order, as the official ``sorted(..., reverse=True)``); of the top K,
  the share whose MOS is at least the MOS of the N-th best crop (ties count).
  ``acc5`` / ``acc10`` average K = 1..4.
- ``wacc{K}_{N}``: each of the top K's MOS ranks ``r`` (positions in the stable MOS
  order, 0-based), sorted, and the j-th of them counts ``exp(-(r - j) / N)`` when
  ``r < N``: a hit ranked lower than needed counts less. ``wacc5`` / ``wacc10`` average K.
- ``srcc`` / ``pcc``: Spearman / Pearson correlation of predictions and MOS. A photo
  whose predictions (or MOS) are all equal has no correlation; it counts as 0, where
  the official code would turn the mean into NaN.

All of them are computed per photo, then averaged over photos.

Box metrics compare a predicted crop with the ground truth, in pixels of the original
photo: ``iou``, and ``bde`` (boundary displacement: the mean of the four edges'
displacements, x edges over the photo's width and y edges over its height). Against
several ground truths (FLMS's expert crops, GAICD's crops tied for the highest MOS) both
come from **one** of them, chosen as the public reference code (CACNet's evaluation of
FCDB and FLMS) chooses it: the truth of highest IoU, or, when the truth of least
displacement has that same IoU, that one (:func:`reference_truth`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cropper.core.boxes import PixelBox, Size

#: The K of Acc_{K/N}, and the N.
TOP_K = (1, 2, 3, 4)
TOP_N = (5, 10)

#: Two IoUs closer than this are a tie (the reference code compares them with ``==``): a tie
#: in an annotation's integer pixels stays one after the boxes are rescaled to the photo's.
IOU_TIE = 1e-12


def score_keys() -> list[str]:
    """The keys :func:`mean_score_metrics` returns, in the order reports list them."""
    keys: list[str] = []
    for prefix in ("acc", "wacc"):
        for n in TOP_N:
            keys += [f"{prefix}{k}_{n}" for k in TOP_K] + [f"{prefix}{n}"]
    return keys + ["srcc", "pcc"]


def photo_score_metrics(mos: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """Acc, wAcc (per K and N), SRCC and PCC of one photo's predicted crop scores.

    Raises ``ValueError`` when the lists differ in length, hold fewer than
    ``max(TOP_K)`` crops, or hold a value that is not a finite number. With fewer crops
    than N, the N-th best is the worst one.
    """
    truth = _finite_vector(mos, "MOS")
    guess = _finite_vector(predicted, "predicted scores")
    if len(truth) != len(guess):
        raise ValueError(f"{len(guess)} predicted scores for {len(truth)} crops; give one each")
    if len(truth) < max(TOP_K):
        raise ValueError(f"{len(truth)} crops; the Acc metrics need at least {max(TOP_K)}")
    by_mos = _descending(truth)
    by_guess = _descending(guess)
    rank_of = np.empty(len(truth), dtype=int)
    rank_of[by_mos] = np.arange(len(truth))  # a crop's position in the MOS order

    out: dict[str, float] = {}
    for n in TOP_N:
        nth_best = truth[by_mos[min(n, len(truth)) - 1]]
        for k in TOP_K:
            top = by_guess[:k]
            out[f"acc{k}_{n}"] = float(np.mean(truth[top] >= nth_best))
            ranks = np.sort(rank_of[top])
            hits = ranks < n
            weights = np.exp(-(ranks - np.arange(k)) / n)
            out[f"wacc{k}_{n}"] = float(np.sum(weights[hits]) / k)
    out["srcc"], out["pcc"] = _correlations(truth, guess)
    return out


def mean_score_metrics(per_photo: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over photos, plus ``acc5``, ``acc10``, ``wacc5``, ``wacc10``."""
    rows = list(per_photo)
    if not rows:
        raise ValueError("no photos to average over")
    means = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    for prefix in ("acc", "wacc"):
        for n in TOP_N:
            means[f"{prefix}{n}"] = float(np.mean([means[f"{prefix}{k}_{n}"] for k in TOP_K]))
    return {key: means[key] for key in score_keys()}


def iou(a: PixelBox, b: PixelBox) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def displacement(predicted: PixelBox, truth: PixelBox, size: Size) -> float:
    """The reference code's displacement: the four edges' offsets, x over width, y over height.

    Summed (0 to 4), as CACNet's evaluation sums them before dividing its mean by 4.
    """
    w, h = size
    return float(
        (abs(truth[0] - predicted[0]) + abs(truth[2] - predicted[2])) / w
        + (abs(truth[1] - predicted[1]) + abs(truth[3] - predicted[3])) / h
    )


def bde(predicted: PixelBox, truth: PixelBox, size: Size) -> float:
    """Boundary displacement error: the four edges' mean displacement, as shares of the photo."""
    return displacement(predicted, truth, size) / 4


def reference_truth(predicted: PixelBox, truths: Sequence[PixelBox], size: Size) -> int:
    """The index of the one truth that ``iou`` and ``bde`` are measured against.

    As the reference code: the first truth of highest IoU, unless the first truth of least
    displacement has the same IoU (within :data:`IOU_TIE`), then that one. Note that the
    truth of least displacement is sought among all truths, not among those tied.
    """
    if not truths:
        raise ValueError("no ground-truth box to compare with")
    ious = [iou(predicted, t) for t in truths]
    moves = [displacement(predicted, t, size) for t in truths]
    by_iou = int(np.argmax(ious))  # the first of the highest, as torch.argmax
    by_move = int(np.argmin(moves))  # the first of the least, as torch.argmin
    return by_move if abs(ious[by_iou] - ious[by_move]) <= IOU_TIE else by_iou


def box_metrics(predicted: PixelBox, truths: Sequence[PixelBox], size: Size) -> dict[str, float]:
    """``iou`` and ``bde`` of ``predicted`` against one of ``truths`` (:func:`reference_truth`)."""
    truth = truths[reference_truth(predicted, truths, size)]
    return {"iou": iou(predicted, truth), "bde": bde(predicted, truth, size)}


def mean_box_metrics(per_photo: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean ``iou`` and ``bde`` over photos."""
    rows = list(per_photo)
    if not rows:
        raise ValueError("no photos to average over")
    return {key: float(np.mean([row[key] for row in rows])) for key in ("iou", "bde")}


def best_crops(crops: Sequence[PixelBox], scores: Sequence[float] | None) -> list[PixelBox]:
    """The ground truth for box metrics: the crops with the highest score, ties included.

    Without scores (FCDB's single crop, a user's own crops) every crop counts.
    """
    if scores is None:
        return list(crops)
    top = max(scores)
    return [crop for crop, score in zip(crops, scores, strict=True) if score == top]


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices from the highest value down; equal values keep their order (a stable sort)."""
    return np.argsort(-values, kind="stable")


def _finite_vector(values: Sequence[float], what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers") from None
    if array.ndim != 1 or not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be a flat list of finite numbers")
    return array


def _correlations(truth: np.ndarray, guess: np.ndarray) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    if np.ptp(truth) == 0 or np.ptp(guess) == 0:
        return 0.0, 0.0  # undefined: nothing is told apart
    srcc = float(spearmanr(truth, guess).statistic)
    pcc = float(pearsonr(truth, guess).statistic)
    return (0.0 if math.isnan(srcc) else srcc), (0.0 if math.isnan(pcc) else pcc)
