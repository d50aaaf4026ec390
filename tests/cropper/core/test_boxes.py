"""Box validation, the coordinate conventions, and the pure array functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cropper.core.boxes import (
    COORDS,
    Box,
    check_coords,
    dedupe,
    fit_aspect,
    iou_matrix,
    point_to_coords,
    sanitize,
    to_unit,
)
from cropper.core.errors import ConfigError

# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        pytest.param(
            (0.5, 0.1, 0.5, 0.9), ["0 <= x0 < x1 <= 1", "(0.5, 0.1, 0.5, 0.9)"], id="zero-width"
        ),
        pytest.param(
            (0.1, 0.5, 0.9, 0.5), ["0 <= y0 < y1 <= 1", "(0.1, 0.5, 0.9, 0.5)"], id="zero-height"
        ),
        pytest.param(
            (0.9, 0.1, 0.1, 0.9), ["0 <= x0 < x1 <= 1", "(0.9, 0.1, 0.1, 0.9)"], id="inverted"
        ),
        pytest.param((-0.1, 0.1, 0.5, 0.9), ["0 <= x0", "(-0.1, 0.1, 0.5, 0.9)"], id="negative"),
        pytest.param((0.1, 0.1, 1.2, 0.9), ["x1 <= 1", "1.2"], id="past-the-edge"),
        pytest.param((12, 8, 90, 76), ["Box.from_pixels", "(12, 8, 90, 76)"], id="pixels"),
        pytest.param((math.nan, 0.1, 0.5, 0.9), ["four finite numbers", "nan"], id="nan"),
        pytest.param((0.1, 0.1, math.inf, 0.9), ["four finite numbers", "inf"], id="inf"),
        pytest.param(("0.1", 0.1, 0.5, 0.9), ["four finite numbers", "'0.1'"], id="string"),
        pytest.param((None, 0.1, 0.5, 0.9), ["four finite numbers", "None"], id="none"),
    ],
)
def test_box_rejects_bad_values_saying_expected_and_actual(values, fragments):
    with pytest.raises(ConfigError) as info:
        Box(*values)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "values",
    [
        pytest.param((0.0, 0.0, 1.0, 1.0), id="whole"),
        pytest.param((0, 0, 1, 1), id="ints"),
        pytest.param((0.25, 0.5, 0.2500001, 0.5000001), id="tiny"),
        pytest.param((np.float64(0.1), 0.2, 0.3, 0.4), id="numpy-float64"),
        pytest.param((-1e-12, 0.0, 1 + 1e-12, 1.0), id="float-noise-at-edges"),
    ],
)
def test_box_accepts_valid_values(values):
    box = Box(*values)
    assert box.as_array().tolist() == pytest.approx([float(v) for v in values])


def test_box_is_frozen_and_hashable():
    box = Box(0.1, 0.2, 0.3, 0.4)
    with pytest.raises(AttributeError):
        box.x0 = 0.5  # type: ignore[misc]
    assert {box, Box(0.1, 0.2, 0.3, 0.4)} == {box}


def test_box_geometry():
    box = Box(0.2, 0.1, 0.6, 0.5)
    assert (box.width, box.height, box.area) == pytest.approx((0.4, 0.4, 0.16))
    assert box.center == pytest.approx((0.4, 0.3))
    assert box.aspect((1600, 900)) == pytest.approx(16 / 9)
    assert box.contains(0.2, 0.5) and not box.contains(0.61, 0.3)
    assert box.iou(box) == pytest.approx(1.0)
    assert box.iou(Box(0.6, 0.1, 0.9, 0.5)) == 0.0
    assert Box.whole() == Box(0, 0, 1, 1)
    assert str(box) == "Box(0.2000, 0.1000, 0.6000, 0.5000)"


# -- conventions and round trips ----------------------------------------------------------

ODD_SIZES = [(1, 1), (3, 5), (641, 427), (427, 641), (999, 1001), (4033, 3025), (17, 4099)]


def _random_boxes(seed: int, count: int = 40, size: tuple[int, int] | None = None) -> list[Box]:
    """Random boxes plus the whole photo and its corners; with ``size``, each side >= 2 px."""
    rng = np.random.default_rng(seed)
    min_w, min_h = (2 / size[0], 2 / size[1]) if size else (1e-6, 1e-6)
    edges = [Box.whole()]
    if min_w <= 1e-3 and min_h <= 1e-3:
        edges += [Box(0, 0, 1e-3, 1e-3), Box(1 - 1e-3, 1 - 1e-3, 1, 1)]
    boxes: list[Box] = []
    while len(boxes) < count and min_w < 1 and min_h < 1:
        xs, ys = np.sort(rng.uniform(0, 1, 2)), np.sort(rng.uniform(0, 1, 2))
        if xs[1] - xs[0] >= min_w and ys[1] - ys[0] >= min_h:
            boxes.append(Box(xs[0], ys[0], xs[1], ys[1]))
    return boxes + edges


def _pixel_error(a: Box, b: Box, size: tuple[int, int]) -> float:
    scale = np.array([size[0], size[1], size[0], size[1]], dtype=np.float64)
    return float(np.abs((a.as_array() - b.as_array()) * scale).max())


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize(
    ("name", "there_and_back"),
    [
        pytest.param("pixels", lambda b, s: Box.from_pixels(b.to_pixels(s), s), id="pil"),
        pytest.param(
            "pixel",
            lambda b, s: Box.from_coords(b.to_coords("pixel", s), "pixel", s),
            id="pixel-coords",
        ),
        pytest.param("xywh", lambda b, s: Box.from_xywh(_xywh(b.to_pixels(s)), s), id="xywh"),
        pytest.param(
            "norm1", lambda b, s: Box.from_coords(b.to_coords("norm1"), "norm1"), id="norm1"
        ),
        pytest.param("yxyx", lambda b, s: Box.from_yxyx(b.to_yxyx()), id="yxyx"),
        pytest.param(
            "yxyx-pixel",
            lambda b, s: Box.from_yxyx(_swap(b.to_pixels(s)), "pixel", s),
            id="yxyx-pixel",
        ),
    ],
)
def test_round_trips_within_one_pixel(name, there_and_back, size):
    for box in _random_boxes(seed=sum(size), size=size):
        back = there_and_back(box, size)
        assert _pixel_error(box, back, size) <= 1.0 + 1e-9, (name, box, back)


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("coords", ["norm1000", "rel1000"])
def test_thousand_grids_round_trip_within_one_unit(coords, size):
    # A 1000-step grid cannot hold a 4033-px side to 1 px: the bound is one grid step
    # (half a step of rounding, or rel1000 lifting 0 to 1), or 1 px on small images.
    for box in _random_boxes(seed=len(coords) + size[0]):
        written = box.to_coords(coords)
        assert all(isinstance(v, int) for v in written)
        assert min(written) >= (1 if coords == "rel1000" else 0) and max(written) <= 1000
        back = Box.from_coords(written, coords) if _valid(written) else None
        if back is None:  # a box under one grid step collapses; that is the grid's limit
            assert min(box.width, box.height) < 2e-3
            continue
        assert np.abs(box.as_array() - back.as_array()).max() <= 1e-3 + 1e-12


@pytest.mark.parametrize(
    ("coords", "size", "expected"),
    [
        ("norm1", None, (0.1235, 0.25, 0.5, 1.0)),
        ("norm1000", None, (123, 250, 500, 1000)),
        ("rel1000", None, (123, 250, 500, 1000)),
        ("pixel", (641, 427), (79, 107, 320, 427)),
    ],
)
def test_to_coords_writes_each_convention(coords, size, expected):
    box = Box(0.12345, 0.25, 0.5, 1.0)
    assert box.to_coords(coords, size) == expected
    assert type(box.to_coords(coords, size)[0]) is type(expected[0])


@pytest.mark.parametrize(
    ("coords", "size", "written", "expected"),
    [
        ("norm1", None, (0.12, 0.08, 0.9, 0.76), (0.12, 0.08, 0.9, 0.76)),
        ("norm1000", None, (120, 80, 900, 760), (0.12, 0.08, 0.9, 0.76)),
        ("rel1000", None, (1, 1, 1000, 1000), (0.001, 0.001, 1, 1)),
        ("pixel", (641, 427), (0, 0, 641, 427), (0, 0, 1, 1)),
        ("pixel", (641, 427), (64.1, 42.7, 320.5, 213.5), (0.1, 0.1, 0.5, 0.5)),
    ],
)
def test_from_coords_reads_each_convention(coords, size, written, expected):
    assert Box.from_coords(written, coords, size).as_array() == pytest.approx(expected)
    assert to_unit(np.array([written]), coords, size)[0] == pytest.approx(expected)


def test_yxyx_and_xywh_orders():
    assert Box.from_yxyx((0.1, 0.2, 0.3, 0.4)) == Box(0.2, 0.1, 0.4, 0.3)
    assert Box.from_yxyx((100, 200, 300, 400), "norm1000") == Box(0.2, 0.1, 0.4, 0.3)
    assert Box(0.2, 0.1, 0.4, 0.3).to_yxyx() == (0.1, 0.2, 0.3, 0.4)
    assert Box.from_xywh((10, 20, 30, 40), (100, 100)) == Box(0.1, 0.2, 0.4, 0.6)


@pytest.mark.parametrize(
    ("coords", "size", "expected"),
    [
        ("norm1", None, (0.3333, 0.6667)),
        ("norm1000", None, (333, 667)),
        ("rel1000", None, (333, 667)),
        ("pixel", (641, 427), (214, 285)),
    ],
)
def test_point_to_coords(coords, size, expected):
    assert point_to_coords((1 / 3, 2 / 3), coords, size) == expected


@pytest.mark.parametrize("coords", sorted(COORDS))
def test_check_coords_accepts_every_convention(coords):
    assert check_coords(coords) == coords


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        pytest.param(lambda: check_coords("xyxy"), "use one of", id="unknown"),
        pytest.param(lambda: to_unit(np.zeros((1, 4)), "pixel"), "image size", id="pixel-no-size"),
        pytest.param(lambda: Box.whole().to_coords("pixel"), "image size", id="to-pixel-no-size"),
        pytest.param(lambda: Box.from_coords((1, 2, 3, 4), "pixels"), "'pixels'", id="typo"),
    ],
)
def test_convention_errors(call, fragment):
    with pytest.raises(ConfigError, match=fragment):
        call()


@pytest.mark.parametrize("size", ODD_SIZES)
def test_to_pixels_is_at_least_one_pixel_inside_the_image(size):
    for box in _random_boxes(seed=7) + [Box(1 - 1e-9, 1 - 1e-9, 1, 1), Box(0, 0, 1e-9, 1e-9)]:
        left, top, right, bottom = box.to_pixels(size)
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]


TINY = [
    pytest.param(Box(0.1847, 0.4230, 0.1939, 0.8138), (3, 5), id="sub-pixel-near-a-pixel-centre"),
    pytest.param(Box(0.3, 0.3, 0.5, 0.5), (5, 5), id="one-pixel-on-half-pixels"),
    pytest.param(Box(0.5, 0.1, 0.5 + 1e-6, 0.9), (641, 427), id="hairline"),
]


@pytest.mark.parametrize(("box", "size"), TINY)
@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda b, s: b.to_pixels(s), id="to_pixels"),
        pytest.param(lambda b, s: b.to_coords("pixel", s), id="to_coords-pixel"),
    ],
)
def test_tiny_boxes_become_one_pixel_within_one_pixel(write, box, size):
    # Fails on boxes.py as written; see the lead's report (round each edge, and for a
    # box under a pixel take the pixel holding its centre; to_coords("pixel") = to_pixels).
    left, top, right, bottom = write(box, size)
    assert right - left >= 1 and bottom - top >= 1
    back = Box.from_pixels((left, top, right, bottom), size)
    assert _pixel_error(box, back, size) <= 1.0 + 1e-9, (box, back)


# -- iou_matrix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param([0, 0, 1, 1], [0, 0, 1, 1], 1.0, id="identical"),
        pytest.param([0, 0, 1, 1], [2, 2, 3, 3], 0.0, id="disjoint"),
        pytest.param([0, 0, 1, 1], [1, 0, 2, 1], 0.0, id="touching"),
        pytest.param([0, 0, 2, 1], [1, 0, 3, 1], 1 / 3, id="half-overlap"),
        pytest.param([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16, id="contained"),
        pytest.param([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, id="corner"),
        pytest.param([0, 0, 0, 0], [0, 0, 0, 0], 0.0, id="both-empty"),
        pytest.param([0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5], 1.0, id="unit"),
    ],
)
def test_iou_known_cases(a, b, expected):
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)
    assert iou_matrix(np.array([b]), np.array([a]))[0, 0] == pytest.approx(expected)


def test_iou_matrix_shape_and_purity():
    a = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], dtype=np.float64)
    b = np.array([[0, 0, 1, 1], [1, 1, 2, 2], [5, 5, 6, 6]], dtype=np.float64)
    before = (a.copy(), b.copy())
    matrix = iou_matrix(a, b)
    assert matrix.shape == (2, 3)
    assert matrix == pytest.approx(np.array([[1, 0, 0], [0.25, 0.25, 0]]))
    assert np.array_equal(a, before[0]) and np.array_equal(b, before[1])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


# -- sanitize and dedupe ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([[0.1, 0.2, 0.5, 0.6]], [[0.1, 0.2, 0.5, 0.6]], id="valid"),
        pytest.param([[0.5, 0.6, 0.1, 0.2]], [[0.1, 0.2, 0.5, 0.6]], id="inverted"),
        pytest.param([[0.5, 0.2, 0.1, 0.6]], [[0.1, 0.2, 0.5, 0.6]], id="inverted-x"),
        pytest.param([[-0.2, 0.1, 1.3, 0.9]], [[0, 0.1, 1, 0.9]], id="clamped"),
        pytest.param([[np.nan, 0.1, 0.5, 0.9]], [], id="nan"),
        pytest.param([[0.1, -np.inf, 0.5, 0.9]], [], id="inf"),
        pytest.param([[0.1, 0.1, 0.1005, 0.9]], [], id="sliver"),
        pytest.param([[0.1, 0.1, 0.1, 0.1]], [], id="point"),
        pytest.param([[1.2, 1.2, 1.5, 1.5]], [], id="outside"),
        pytest.param(
            [[0.1, 0.1, 0.2, 0.2], [np.nan] * 4, [0.3, 0.3, 0.9, 0.9]],
            [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.9, 0.9]],
            id="keeps-order",
        ),
        pytest.param(np.zeros((0, 4)), [], id="empty"),
    ],
)
def test_sanitize(rows, expected):
    raw = np.array(rows, dtype=np.float64)
    before = raw.copy()
    out = sanitize(raw)
    assert out.shape == (len(expected), 4)
    assert out == pytest.approx(np.array(expected, dtype=np.float64).reshape(-1, 4))
    assert np.array_equal(raw, before, equal_nan=True)


def test_sanitize_min_side():
    rows = np.array([[0.1, 0.1, 0.15, 0.9]])
    assert len(sanitize(rows, min_side=0.01)) == 1
    assert len(sanitize(rows, min_side=0.1)) == 0


@pytest.mark.parametrize(
    ("rows", "threshold", "kept"),
    [
        pytest.param([[0, 0, 1, 1], [0, 0, 1, 1]], 0.98, [0], id="identical"),
        pytest.param([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.501]], 0.98, [0], id="near"),
        pytest.param([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.6]], 0.98, [0, 1], id="different"),
        pytest.param([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.6]], 0.8, [0], id="lower-threshold"),
        pytest.param(
            [[0, 0, 1, 1], [0.5, 0.5, 0.6, 0.6], [0, 0, 1, 1]],
            0.98,
            [0, 1],
            id="keeps-first-in-order",
        ),
        pytest.param([[0, 0, 1, 1]], 0.98, [0], id="single"),
        pytest.param(np.zeros((0, 4)), 0.98, [], id="empty"),
    ],
)
def test_dedupe(rows, threshold, kept):
    raw = np.array(rows, dtype=np.float64).reshape(-1, 4)
    before = raw.copy()
    out = dedupe(raw, iou_threshold=threshold)
    assert np.array_equal(out, raw[kept].reshape(-1, 4))
    assert np.array_equal(raw, before)


# -- fit_aspect ------------------------------------------------------------------------

RATIOS = {
    "16:9": 16 / 9,
    "4:3": 4 / 3,
    "4:5": 4 / 5,
    "1:1": 1.0,
    "3:1": 3.0,
    "1:3": 1 / 3,
    "10:1": 10.0,
    "1:10": 0.1,
    "golden": (1 + 5**0.5) / 2,
}
FIT_SIZES = [(641, 427), (427, 641), (1001, 999), (2049, 77), (31, 1999), (97, 89)]


def _pixel_box(box: Box, size: tuple[int, int]) -> np.ndarray:
    return np.array(box.to_pixels(size), dtype=np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(iou_matrix(a[None], b[None])[0, 0])


def _placed(w: float, h: float, proposal: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A w x h box centred on the proposal, moved inside the image."""
    cx, cy = (proposal[0] + proposal[2]) / 2, (proposal[1] + proposal[3]) / 2
    left = min(max(round(cx - w / 2), 0), size[0] - w)
    top = min(max(round(cy - h / 2), 0), size[1] - h)
    return np.array([left, top, left + w, top + h], dtype=np.float64)


def _largest(ratio: float, size: tuple[int, int]) -> tuple[int, int] | None:
    """The largest integer size of the ratio (within 1 px) that the image holds."""
    sizes = [
        (w, h)
        for h in range(1, size[1] + 1)
        for w in range(
            max(1, math.floor(h * ratio) - 8), min(size[0], math.ceil(h * ratio) + 8) + 1
        )
        if _ratio_ok(w, h, ratio)
    ]
    return max(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


def _area_preserving(ratio: float, proposal: np.ndarray, size: tuple[int, int]):
    """The naive answer: the proposal's area at the ratio, shrunk to fit, rounded."""
    area = (proposal[2] - proposal[0]) * (proposal[3] - proposal[1])
    h = math.sqrt(area / ratio)
    h = min(h, size[1], size[0] / ratio)
    h = max(1, round(h))
    w = round(h * ratio)
    if not 1 <= w <= size[0]:
        return None
    return w, h


def _ratio_ok(w: float, h: float, ratio: float) -> bool:
    return abs(w - h * ratio) <= max(1.0, ratio) * 0.5 + 1e-9


@pytest.mark.parametrize("size", FIT_SIZES, ids=str)
@pytest.mark.parametrize("ratio", list(RATIOS.values()), ids=list(RATIOS))
def test_fit_aspect_is_inside_of_the_ratio_and_beats_the_baselines(ratio, size):
    rng = np.random.default_rng(int(ratio * 1000) + size[0])
    proposals = _random_boxes(seed=int(rng.integers(1 << 30)), count=25)
    for proposal in proposals:
        fitted = fit_aspect(proposal, ratio, size)
        px = _pixel_box(fitted, size)
        w, h = px[2] - px[0], px[3] - px[1]
        assert 0 <= px[0] < px[2] <= size[0] and 0 <= px[1] < px[3] <= size[1]
        assert _ratio_ok(w, h, ratio), (proposal, fitted, w, h)
        target = _pixel_box(proposal, size)
        got = _iou(px, target)
        centred = _placed(*_largest(ratio, size), np.array([0, 0, *size], dtype=np.float64), size)
        assert got >= _iou(centred, target) - 1e-12, (proposal, fitted)
        naive = _area_preserving(ratio, target, size)
        if naive is not None and _ratio_ok(*naive, ratio):
            assert got >= _iou(_placed(*naive, target, size), target) - 1e-12, (proposal, fitted)


@pytest.mark.parametrize("size", [(23, 17), (17, 23), (30, 7)], ids=str)
@pytest.mark.parametrize("ratio", list(RATIOS.values()), ids=list(RATIOS))
def test_fit_aspect_is_the_best_box_of_the_ratio(ratio, size):
    """Exhaustive on small images: no box of the ratio, anywhere, has a higher IoU.

    Fails on boxes.py as written for ratios with exact half-pixel ties (16:9, 4:3,
    10:1, 1:10): np.round keeps one side of a tie, so a size such as 8 x 5 at 16:9
    (ideal height 4.5) is never a candidate. See the lead's report for the fix.
    """
    w_img, h_img = size
    every = [
        (x, y, x + w, y + h)
        for w in range(1, w_img + 1)
        for h in range(1, h_img + 1)
        if _ratio_ok(w, h, ratio)
        for x in range(w_img - w + 1)
        for y in range(h_img - h + 1)
    ]
    if not every:
        # No box of this ratio fits: the thinnest strip along the longer side instead.
        px = _pixel_box(fit_aspect(Box.whole(), ratio, size), size)
        strip = (size[0], 1) if ratio > 1 else (1, size[1])
        assert (px[2] - px[0], px[3] - px[1]) == strip
        return
    every = np.array(every, dtype=np.float64)
    for proposal in _random_boxes(seed=size[0] * 31 + int(ratio * 100), count=15):
        target = _pixel_box(proposal, size)
        best = iou_matrix(every, target[None])[:, 0].max()
        got = _iou(_pixel_box(fit_aspect(proposal, ratio, size), size), target)
        assert got >= best - 1e-9, (proposal, got, best)


@pytest.mark.parametrize("size", FIT_SIZES + [(1, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("ratio", list(RATIOS.values()), ids=list(RATIOS))
def test_fit_aspect_of_the_whole_photo_is_the_largest_centred_box(ratio, size):
    # Fails at 10:1 on 2049 x 77 (774 x 77, not 775 x 77) for the same tie as above.
    largest = _largest(ratio, size)
    if largest is None:
        # No box of this ratio fits: the thinnest strip along the longer side instead.
        px = _pixel_box(fit_aspect(Box.whole(), ratio, size), size)
        strip = (size[0], 1) if ratio > 1 else (1, size[1])
        assert (px[2] - px[0], px[3] - px[1]) == strip
        return
    px = _pixel_box(fit_aspect(Box.whole(), ratio, size), size)
    w, h = px[2] - px[0], px[3] - px[1]
    assert w * h == largest[0] * largest[1]
    assert abs(px[0] - (size[0] - w) / 2) <= 0.5 and abs(px[1] - (size[1] - h) / 2) <= 0.5


@pytest.mark.parametrize(
    ("ratio", "size", "expected"),
    [
        pytest.param(1000.0, (100, 100), (100, 1), id="too-wide"),
        pytest.param(0.001, (100, 100), (1, 100), id="too-tall"),
    ],
)
def test_fit_aspect_of_an_impossible_ratio_is_the_thinnest_strip(ratio, size, expected):
    px = _pixel_box(fit_aspect(Box(0.2, 0.2, 0.6, 0.6), ratio, size), size)
    assert (px[2] - px[0], px[3] - px[1]) == expected


@pytest.mark.parametrize("ratio", [0, -1.5, math.nan, math.inf])
def test_fit_aspect_rejects_bad_ratios(ratio):
    with pytest.raises(ConfigError, match="aspect ratio must be a positive number"):
        fit_aspect(Box.whole(), ratio, (100, 100))


def _xywh(pixels: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = pixels
    return left, top, right - left, bottom - top


def _swap(pixels: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = pixels
    return top, left, bottom, right


def _valid(written: tuple) -> bool:
    return written[0] < written[2] and written[1] < written[3]
