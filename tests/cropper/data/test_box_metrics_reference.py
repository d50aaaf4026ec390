"""Box metrics against a line-by-line transcription of the public reference code.

The reference is the evaluation of FCDB and FLMS that CACNet published
(``compute_iou_and_disp`` and its caller): against several ground truths, the IoU and the
displacement both come from one box, the one of highest IoU, or the one of least
displacement when that box has the same IoU. The transcription below follows it step by
step in torch (whose ``argmax``/``argmin`` return the first of equal values, as the
reference relies on), in float64. Hypothesis draws boxes on a coarse grid, so that ties
in IoU, with and without a difference in displacement, are common; the test counts them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cropper.data.metrics import bde, box_metrics, iou, mean_box_metrics


def reference_iou_and_disp(gt_crop, pre_crop, im_w, im_h) -> tuple[float, float, int]:
    """The reference's per-image step; returns its IoU, its displacement and the box index."""
    gt_crop = gt_crop[gt_crop[:, 0] >= 0]  # rows marked unused (negative) are dropped
    zero_t = torch.zeros(gt_crop.shape[0], dtype=torch.float64)
    over_x1 = torch.maximum(gt_crop[:, 0], pre_crop[:, 0])
    over_y1 = torch.maximum(gt_crop[:, 1], pre_crop[:, 1])
    over_x2 = torch.minimum(gt_crop[:, 2], pre_crop[:, 2])
    over_y2 = torch.minimum(gt_crop[:, 3], pre_crop[:, 3])
    over_w = torch.maximum(zero_t, over_x2 - over_x1)
    over_h = torch.maximum(zero_t, over_y2 - over_y1)
    inter = over_w * over_h
    area1 = (gt_crop[:, 2] - gt_crop[:, 0]) * (gt_crop[:, 3] - gt_crop[:, 1])
    area2 = (pre_crop[:, 2] - pre_crop[:, 0]) * (pre_crop[:, 3] - pre_crop[:, 1])
    union = area1 + area2 - inter
    iou_ = inter / union
    disp = (
        torch.abs(gt_crop[:, 0] - pre_crop[:, 0]) + torch.abs(gt_crop[:, 2] - pre_crop[:, 2])
    ) / im_w + (
        torch.abs(gt_crop[:, 1] - pre_crop[:, 1]) + torch.abs(gt_crop[:, 3] - pre_crop[:, 3])
    ) / im_h
    iou_idx = torch.argmax(iou_, dim=-1)
    dis_idx = torch.argmin(disp, dim=-1)
    index = dis_idx if (iou_[iou_idx] == iou_[dis_idx]) else iou_idx
    return iou_[index].item(), disp[index].item(), int(index)


def reference_means(per_image: list[tuple[float, float]]) -> tuple[float, float]:
    """The reference's summary: the mean IoU, and the summed displacement over 4 images."""
    cnt = len(per_image)
    return sum(i for i, _ in per_image) / cnt, sum(d for _, d in per_image) / (cnt * 4.0)


# A coarse grid: coordinates are multiples of an eighth of each side, so many distinct
# boxes share an IoU. Sides differ a lot at times (8 x 64), so displacement along y is
# cheap and the box of least displacement can have a lower IoU than the tied ones.
SIZES = st.sampled_from([(8, 8), (16, 8), (8, 64), (64, 8), (8, 256), (16, 512)])


@st.composite
def grid_box(draw, size):
    w, h = size
    sx, sy = w // 8, h // 8
    x0 = draw(st.integers(0, 7))
    y0 = draw(st.integers(0, 7))
    x1 = draw(st.integers(x0 + 1, 8))
    y1 = draw(st.integers(y0 + 1, 8))
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


@st.composite
def cases(draw):
    size = draw(SIZES)
    pred = draw(grid_box(size))
    truths = draw(st.lists(grid_box(size), min_size=1, max_size=6))
    if draw(st.booleans()):  # a truth mirrored about the prediction's centre: an exact tie
        x0, y0, x1, y1 = draw(st.sampled_from(truths))
        truths.append((pred[0] + pred[2] - x1, y0, pred[0] + pred[2] - x0, y1))
    width = pred[2] - pred[0]
    if draw(st.booleans()) and pred[2] + width <= size[0]:
        # Twice as wide and half as wide: both IoU 0.5, the wide one twice as far; the
        # drawn boxes of a higher IoU are left out, so the two tie for the highest.
        wide = (pred[0], pred[1], pred[2] + width, pred[3])
        half = (pred[0], pred[1], pred[0] + width / 2, pred[3])
        truths = [t for t in truths if iou(pred, t) <= 0.5]
        at = draw(st.integers(0, len(truths)))
        truths[at:at] = [wide, half] if draw(st.booleans()) else [half, wide]
    if draw(st.booleans()) and pred[3] - pred[1] > 1:
        # A one-pixel strip along the prediction's top: close on a tall photo, of low IoU.
        truths.insert(draw(st.integers(0, len(truths))),
                      (pred[0], pred[1], pred[2], pred[1] + 1))  # fmt: skip
    unused = draw(st.integers(0, 2))  # FLMS pads with rows of -1: the reference drops them
    return size, pred, truths, unused


def _ties(pred, truths) -> tuple[bool, bool]:
    """Whether the highest IoU is shared, and whether boxes sharing it differ in displacement."""
    ious = [iou(pred, t) for t in truths]
    best = [t for t, v in zip(truths, ious, strict=True) if v == max(ious)]
    moves = {abs(t[0] - pred[0]) + abs(t[2] - pred[2]) + abs(t[1] - pred[1]) + abs(t[3] - pred[3])
             for t in best}  # fmt: skip
    return len(best) > 1, len(moves) > 1


def test_box_metrics_match_the_reference_code_on_ties() -> None:
    ran: Counter[str] = Counter()

    @settings(max_examples=800, deadline=None, derandomize=True, database=None)
    @given(cases())
    def check(case) -> None:
        size, pred, truths, unused = case
        gt = torch.tensor(truths + [(-1.0, -1.0, -1.0, -1.0)] * unused, dtype=torch.float64)
        pre = torch.tensor([pred], dtype=torch.float64)
        ref_iou, ref_disp, ref_index = reference_iou_and_disp(gt, pre, *size)
        got = box_metrics(pred, truths, size)
        assert got["iou"] == pytest.approx(ref_iou, abs=1e-12)
        assert got["bde"] == pytest.approx(ref_disp / 4, abs=1e-12)
        tied, tied_apart = _ties(pred, truths)
        ran["examples"] += 1
        ran["tied"] += tied
        ran["tied, displacements differ"] += tied_apart
        # Taking the least displacement of any box, apart from the IoU, would differ here.
        least = min(bde(pred, t, size) for t in truths)
        ran["one box differs from the least of each"] += got["bde"] > least + 1e-12
        ran["reference took a later box"] += ref_index > 0
        closest = min(truths, key=lambda t: (bde(pred, t, size), truths.index(t)))
        outside = tied and iou(pred, closest) < got["iou"]
        ran["tied, the closest box outside the tie"] += outside
        # Then the first of the tied boxes stands, even when another of them is closer.
        closer_tied = min(bde(pred, t, size) for t in truths if iou(pred, t) == got["iou"])
        ran["the first tied box stands, a closer one tied"] += outside and got["bde"] > closer_tied

    check()
    assert ran["examples"] >= 700, ran
    assert ran["tied"] >= 100, ran
    assert ran["tied, displacements differ"] >= 30, ran
    assert ran["one box differs from the least of each"] >= 20, ran
    assert ran["tied, the closest box outside the tie"] >= 20, ran
    assert ran["the first tied box stands, a closer one tied"] >= 5, ran
    assert ran["reference took a later box"] >= 100, ran


def test_the_means_over_photos_are_the_references_summary() -> None:
    # Three photos by hand: (pred, truths, size).
    photos = [
        ((0, 0, 10, 10), [(0, 0, 20, 10), (2, 2, 12, 12)], (100, 100)),
        ((0, 0, 10, 10), [(0, 0, 20, 10), (0, 0, 5, 10)], (100, 100)),
        ((10, 10, 50, 30), [(10, 10, 50, 30)], (60, 40)),
    ]
    ours = mean_box_metrics(box_metrics(p, t, s) for p, t, s in photos)
    per_image = []
    for pred, truths, size in photos:
        gt = torch.tensor(truths, dtype=torch.float64)
        ref_iou, ref_disp, _ = reference_iou_and_disp(gt, torch.tensor([pred], dtype=torch.float64),
                                                      *size)  # fmt: skip
        per_image.append((ref_iou, ref_disp))
    ref_iou, ref_disp = reference_means(per_image)
    # By hand: IoUs 0.5, 0.5 (a tie, broken by the closer half box) and 1; displacements
    # 0.10 (the wide box's, not the shifted box's 0.08), 0.05 and 0: mean 0.15 / 3 / 4.
    assert ours["iou"] == pytest.approx(ref_iou) == pytest.approx(2 / 3)
    assert ours["bde"] == pytest.approx(ref_disp) == pytest.approx(0.15 / 12)
