"""Spectral-residual saliency, box sums through the integral image, the crop objective."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.scoring.saliency import (
    main_subject,
    saliency_crop_scores,
    saliency_map,
    saliency_share,
    salient_point,
)
from cropper.testing.synthetic import salient_square as blob_photo


def test_map_is_64_wide_in_unit_range_and_peaks_on_the_blob():
    sal = saliency_map(blob_photo())
    assert sal.shape == (48, 64)
    assert sal.min() == 0 and sal.max() == 1
    x, y = salient_point(sal)
    assert 400 / 640 <= x <= 520 / 640 and 280 / 480 <= y <= 400 / 480
    blob = Box.from_pixels((400, 280, 520, 400), (640, 480))
    # The blob's neighbourhood holds far more than its share of the photo's saliency.
    assert saliency_share(sal, [blob])[0] > 4 * blob.area


def test_flat_photo_has_a_uniform_map():
    sal = saliency_map(Image.new("RGB", (300, 200), (120, 30, 200)))
    assert np.array_equal(sal, np.ones_like(sal))


def test_main_subject_is_the_salient_point():
    subject = main_subject(blob_photo())
    assert subject.source == "saliency"
    assert Box.from_pixels((400, 280, 520, 400), (640, 480)).contains(*subject.point)


SAL = np.arange(24, dtype=float).reshape(4, 6)  # 6 wide, 4 high; total 276


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((0, 0, 1, 1), 276.0),
        ((0, 0, 0.5, 0.5), 0 + 1 + 2 + 6 + 7 + 8),
        ((1 / 6, 0.25, 2 / 6, 0.5), 7.0),  # one pixel
        ((0, 0, 1 / 12, 0.25), 0.0),  # half of pixel 0 (worth 0)
        ((5 / 12, 0, 0.5, 0.25), 1.0),  # half of pixel (0, 2), worth 2
        ((1 / 12, 0.125, 3 / 12, 0.375), 0.25 * (0 + 1 + 6 + 7)),  # quarters of 4 pixels
    ],
)
def test_share_is_exact_for_a_piecewise_constant_map(box, expected):
    share = saliency_share(SAL, [Box(*box)])
    assert share[0] == pytest.approx(expected / 276.0)


def test_share_of_many_boxes_matches_brute_force():
    rng = np.random.default_rng(1)
    sal = rng.random((40, 64))
    corners = rng.integers(0, 64, (200, 2)), rng.integers(0, 40, (200, 2))
    xs, ys = np.sort(corners[0], axis=1), np.sort(corners[1], axis=1)
    keep = (xs[:, 1] > xs[:, 0]) & (ys[:, 1] > ys[:, 0])
    xs, ys = xs[keep], ys[keep]
    rows = np.stack([xs[:, 0] / 64, ys[:, 0] / 40, xs[:, 1] / 64, ys[:, 1] / 40], axis=1)
    brute = [sal[y0:y1, x0:x1].sum() / sal.sum() for (x0, x1), (y0, y1) in zip(xs, ys, strict=True)]
    assert np.allclose(saliency_share(sal, rows), brute)


def test_objective_keeps_everything_on_a_uniform_map_and_cuts_empty_margins():
    boxes = [Box.whole(), Box(0.1, 0.1, 0.9, 0.9), Box(0.25, 0.25, 0.75, 0.75)]
    uniform = saliency_crop_scores(np.ones((30, 40)), boxes)
    assert int(np.argmax(uniform)) == 0
    centred = np.zeros((30, 40))
    centred[10:20, 12:28] = 1  # all saliency in the middle box
    scores = saliency_crop_scores(centred, boxes)
    assert int(np.argmax(scores)) == 2
    assert np.all((0 <= scores) & (scores <= 1))
    # The documented weighted mean: kept share and cut share, weights 1 and 0.5.
    assert scores[2] == pytest.approx((1 + 0.5 * 0.75) / 1.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: saliency_share(np.ones(5), [Box.whole()]), "2-d"),
        (lambda: saliency_share(np.full((3, 3), np.nan), [Box.whole()]), "finite"),
        (lambda: saliency_share(np.ones((3, 3)), np.ones((2, 3))), r"\(N, 4\)"),
        (lambda: saliency_crop_scores(np.ones((3, 3)), [Box.whole()], cut_weight=-1), "cut"),
        (lambda: saliency_map(Image.new("RGB", (10, 10)), width=2), "width"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
