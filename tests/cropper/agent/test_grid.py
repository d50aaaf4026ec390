"""Candidate crops: GAICD's grid anchors, exact-ratio sweeps, the subject filter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cropper.agent.grid import (
    containing,
    grid_candidates,
    largest_fitting,
    ratio_candidates,
    sweep_candidates,
)
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError


@pytest.mark.parametrize(
    ("size", "count"),
    [
        ((1024, 1024), 90),  # square: every 12-bin crop of half the area or more
        ((1024, 939), 90),
        ((1024, 683), 83),  # 3:2: the widest crops pass 2:1 and are dropped
        ((683, 1024), 83),  # the same, portrait
        ((1024, 576), 60),  # 16:9: only crops narrower than 9:8 in cells pass
    ],
)
def test_grid_counts(size, count):
    assert len(grid_candidates(size)) == count


@pytest.mark.parametrize("size", [(1024, 683), (683, 1024), (1024, 1024), (640, 480)])
def test_grid_constraints(size):
    boxes = grid_candidates(size)
    arr = np.array([b.as_array() for b in boxes])
    assert len({tuple(r) for r in arr.round(9)}) == len(boxes)
    cells = arr * 12 - 0.5  # corners sit at cell centres
    assert np.allclose(cells, cells.round())
    assert (cells[:, :2] >= 0).all() and (cells[:, :2] <= 3).all()  # top-left third
    assert (cells[:, 2:] >= 8).all() and (cells[:, 2:] <= 11).all()  # bottom-right third
    assert min(b.area for b in boxes) >= 0.5 - 1e-9
    aspects = [b.aspect(size) for b in boxes]
    assert 0.5 < min(aspects) and max(aspects) < 2.0


def test_grid_settings_change_the_set():
    assert len(grid_candidates((1024, 683), aspect_range=(0.1, 10))) == 90
    assert len(grid_candidates((1024, 1024), min_area=0.7)) < 90
    fine = grid_candidates((1024, 1024), bins=18)
    assert len(fine) > 90 and min(b.x0 for b in fine) == pytest.approx(0.5 / 18)


def test_grid_is_gaicds_own_on_real_annotations(shared_data):
    crops = json.loads((shared_data / "gaicd" / "image_crop.json").read_text())
    photos = sorted((shared_data / "gaicd" / "official_layout" / "images").rglob("*.jpg"))
    assert photos
    for photo in photos:
        with Image.open(photo) as image:
            size = image.size
        truth = np.array(crops[photo.name]["bbox"], dtype=float)
        ours = np.array([b.to_pixels(size) for b in grid_candidates(size)], dtype=float)
        # Every grid crop is one of the photo's annotated crops, within a pixel.
        nearest = np.abs(ours[:, None, :] - truth[None, :, :]).max(axis=2).min(axis=1)
        assert nearest.max() <= 1, photo.name
        if size == (1024, 939):
            assert len(ours) == len(truth) == 90


@pytest.mark.parametrize("size", [(1024, 683), (683, 1024), (640, 480), (1000, 1000), (37, 501)])
@pytest.mark.parametrize("ratio", [1.0, 16 / 9, 9 / 16, 4 / 3, 2 / 3, 2.35, 0.3])
def test_ratio_candidates_are_exact_within_a_pixel(size, ratio):
    boxes = ratio_candidates(size, ratio)
    assert boxes
    for box in boxes:
        left, top, right, bottom = box.to_pixels(size)
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
        assert abs((right - left) - (bottom - top) * ratio) <= 0.5 + 1e-9
    w, h = largest_fitting(size, ratio)
    # The largest: one more pixel on the shorter side no longer fits.
    if ratio >= 1:
        assert h + 1 > size[1] or round((h + 1) * ratio) > size[0]
    else:
        assert w + 1 > size[0] or round((w + 1) / ratio) > size[1]
    assert max(b.area for b in boxes) == pytest.approx(w * h / (size[0] * size[1]))


def test_ratio_sweep_places_each_size_along_the_free_axis():
    boxes = ratio_candidates((1000, 500), 1.0, scales=(1.0, 0.5), steps=5)
    pixels = [b.to_pixels((1000, 500)) for b in boxes]
    full = [p for p in pixels if p[3] - p[1] == 500]
    assert [p[0] for p in full] == [0, 125, 250, 375, 500]  # 5 places along x, one along y
    half = [p for p in pixels if p[3] - p[1] == 250]
    assert len(half) == 25 and {p[2] - p[0] for p in half} == {250}


def test_sweep_holds_the_photos_own_ratio_and_each_crop_once():
    size = (1024, 683)
    boxes = sweep_candidates(size)
    assert boxes[0] == Box.whole()  # the photo's own ratio at full scale comes first
    pixels = [b.to_pixels(size) for b in boxes]
    assert len(set(pixels)) == len(pixels)
    ratios = {round((x1 - x0) / (y1 - y0), 1) for x0, y0, x1, y1 in pixels}
    assert {0.6, 0.8, 1.0, 1.3, 1.5, 1.8} <= ratios


def test_containing_keeps_boxes_that_hold_the_point_else_all_with_a_note():
    boxes = [Box(0, 0, 0.5, 0.5), Box(0.5, 0.5, 1, 1), Box(0.2, 0.2, 0.8, 0.8)]
    kept, note = containing(boxes, (0.3, 0.3))
    assert kept == [boxes[0], boxes[2]] and note is None
    kept, note = containing(boxes[:2], (0.9, 0.1))
    assert kept == boxes[:2] and "no candidate contains the subject" in note


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: grid_candidates((640, 480), bins=2), "bins"),
        (lambda: grid_candidates((640, 480), aspect_range=(2, 1)), "aspect_range"),
        (lambda: grid_candidates((0, 480)), "at least 1x1"),
        (lambda: ratio_candidates((640, 480), 0), "positive number"),
        (lambda: ratio_candidates((640, 480), float("nan")), "positive number"),
        (lambda: ratio_candidates((640, 480), 1.0, scales=(0.0,)), "scales"),
        (lambda: ratio_candidates((640, 480), 1.0, steps=0), "steps"),
        (lambda: largest_fitting("640x480", 1.0), "image size"),
    ],
)
def test_bad_arguments_get_a_clear_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
