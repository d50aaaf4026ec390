from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cropper.agent.parsing import parse_reply
from cropper.agent.sizing import (
    MAX_ASPECT,
    MAX_SENT_ASPECT,
    QWEN2_5_VL,
    QWEN3_VL,
    PixelBudget,
    budget_from_spec,
    fit_to_budget,
    model_size,
    sent_size,
)
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ImageError

smart_resize = pytest.importorskip(
    "transformers.models.qwen2_vl.image_processing_qwen2_vl"
).smart_resize

SIZES = [
    (1, 1),
    (10, 10),
    (27, 13),
    (28, 28),
    (42, 42),  # 1.5 factors: Python's round goes to even
    (70, 98),  # 2.5 and 3.5 factors
    (224, 224),
    (448, 299),
    (640, 480),
    (1024, 683),
    (1024, 1024),
    (1920, 1080),
    (4000, 3000),
    (6000, 4000),
    (12000, 10000),
    (3000, 20),  # 150:1, near the limit
    (20, 3999),
]
BUDGETS = [
    {},  # smart_resize's own defaults
    {"factor": 28, "min_pixels": 3136, "max_pixels": 12845056},  # Qwen2.5-VL checkpoints
    {"factor": 32, "min_pixels": 65536, "max_pixels": 16777216},  # Qwen3-VL checkpoints
    {"factor": 28, "min_pixels": 3136, "max_pixels": 1003520},
    {"factor": 28, "min_pixels": 200_000, "max_pixels": 300_000},
    {"factor": 16, "min_pixels": 256, "max_pixels": 50_000},
]


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: str(b.get("max_pixels", "default")))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_model_size_is_transformers_smart_resize(size, budget):
    w, h = size
    expected_h, expected_w = smart_resize(h, w, **budget)
    assert model_size(size, **budget) == (expected_w, expected_h)


@settings(max_examples=150, deadline=None)
@given(
    w=st.integers(1, 9000),
    h=st.integers(1, 9000),
    factor=st.sampled_from([14, 16, 28, 32]),
    max_pixels=st.integers(50_000, 13_000_000),
)
def test_model_size_matches_smart_resize_anywhere(w, h, factor, max_pixels):
    if max(w, h) / min(w, h) > 200:
        with pytest.raises(ImageError, match="200 times"):
            model_size((w, h), factor=factor, max_pixels=max_pixels)
        return
    budget = {"factor": factor, "min_pixels": factor * factor * 4, "max_pixels": max_pixels}
    expected_h, expected_w = smart_resize(h, w, **budget)
    assert model_size((w, h), **budget) == (expected_w, expected_h)


@pytest.mark.parametrize("budget", [QWEN2_5_VL, QWEN3_VL], ids=lambda b: b.name)
@pytest.mark.parametrize("size", [(1024, 683), (640, 480), (300, 1024), (6000, 4000), (40, 30)])
@pytest.mark.parametrize("max_side", [None, 1024, 448, 224])
def test_a_sized_photo_is_left_as_it_is_by_the_model(budget, size, max_side):
    sent = fit_to_budget(Image.new("RGB", size), budget, max_side)
    w, h = sent.size
    assert w % budget.factor == 0 and h % budget.factor == 0
    assert budget.min_pixels <= w * h <= budget.max_pixels
    assert budget.size(sent.size) == sent.size  # a fixed point: the server will not resize
    assert sent.size == sent_size(size, budget, max_side)
    fitted = sent_size(size, None, max_side)
    if fitted[0] * fitted[1] >= budget.min_pixels:  # else scaled up to min_pixels, as served
        assert max(w, h) <= max(max(fitted) + budget.factor // 2, budget.factor)


@pytest.mark.parametrize("budget", [QWEN2_5_VL, QWEN3_VL], ids=lambda b: b.name)
def test_the_real_image_processor_sees_the_sent_size(budget):
    """transformers' Qwen2-VL image processor gives a grid of exactly the sent photo."""
    from transformers import Qwen2VLImageProcessor

    patch = budget.factor // 2
    processor = Qwen2VLImageProcessor(
        patch_size=patch,
        merge_size=2,
        size={"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels},
    )
    for size in [(1000, 667), (333, 500)]:
        sent = fit_to_budget(Image.new("RGB", size, (90, 120, 30)), budget, 448)
        grid = processor(images=[sent], return_tensors="np")["image_grid_thw"][0]
        assert (int(grid[2]) * patch, int(grid[1]) * patch) == sent.size


def test_no_budget_is_the_longest_side_fit():
    image = Image.new("RGB", (2000, 1000))
    assert fit_to_budget(image, None, 1024).size == (1024, 512)
    assert fit_to_budget(image, None) is image
    assert sent_size((2000, 1000), None, 1024) == (1024, 512)


def test_a_photo_already_sized_is_not_resampled():
    image = Image.new("RGB", (1036, 672))
    assert fit_to_budget(image, QWEN2_5_VL) is image


@settings(max_examples=120, deadline=None)
@given(
    w=st.integers(60, 8000),
    h=st.integers(60, 8000),
    budget=st.sampled_from([QWEN2_5_VL, QWEN3_VL, PixelBudget(28, 3136, 1003520)]),
    max_side=st.sampled_from([None, 1024, 448]),
    corners=st.tuples(*[st.floats(0, 1)] * 4),
)
def test_a_pixel_box_on_the_sent_photo_maps_to_the_original_within_a_pixel(
    w, h, budget, max_side, corners
):
    """The model's pixel box, parsed against the sent size, lands where it points."""
    sw, sh = sent_size((w, h), budget, max_side)
    xa, ya, xb, yb = corners
    x0, x1 = sorted((round(xa * sw), round(xb * sw)))
    y0, y1 = sorted((round(ya * sh), round(yb * sh)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    reply = json.dumps({"crops": [[x0, y0, x1, y1]]})
    parsed = parse_reply(reply, "pixel", (sw, sh))
    assert len(parsed.boxes) == 1
    on_original = parsed.boxes[0].to_pixels((w, h))
    exact = (x0 * w / sw, y0 * h / sh, x1 * w / sw, y1 * h / sh)
    assert all(abs(a - b) <= 1 for a, b in zip(on_original, exact, strict=True))
    if sw > w or sh > h:  # scaled up to min_pixels: the original has the coarser pixels
        return
    # ...and back onto the sent photo, where it started, within a pixel.
    back = Box.from_pixels(on_original, (w, h)).to_coords("pixel", (sw, sh))
    assert all(abs(a - b) <= 1 for a, b in zip(back, (x0, y0, x1, y1), strict=True))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("none", None),
        ("", None),
        ("qwen2.5-vl", QWEN2_5_VL),
        ("Qwen3-VL", QWEN3_VL),
        (QWEN3_VL, QWEN3_VL),
        ("qwen2.5-vl:1003520", PixelBudget(28, 3136, 1003520, "qwen2.5-vl:1003520")),
    ],
)
def test_budget_from_spec(spec, expected):
    assert budget_from_spec(spec) == expected


@pytest.mark.parametrize("spec", ["qwen2-vl", "qwen2.5-vl:abc", "qwen2.5-vl:100", "28x28"])
def test_a_bad_budget_spec_says_what_to_use(spec):
    with pytest.raises(ConfigError, match="pixel budget"):
        budget_from_spec(spec)


def test_a_budget_checks_its_bounds():
    with pytest.raises(ConfigError, match="min_pixels <= max_pixels"):
        PixelBudget(28, 5000, 4000)


def test_model_size_refuses_a_photo_too_long_for_the_model_in_one_line():
    with pytest.raises(ImageError, match="longer than wide"):
        model_size((5000, 20))


@pytest.mark.parametrize("size", [(5000, 20), (1, 2000), (2000, 1), (30000, 10), (3, 3)])
@pytest.mark.parametrize("budget", [None, QWEN2_5_VL, QWEN3_VL])
def test_a_strip_is_stretched_across_so_the_model_accepts_it(size, budget):
    sent = fit_to_budget(Image.new("RGB", size), budget, 1024)
    w, h = sent.size
    assert max(w, h) <= MAX_SENT_ASPECT * min(w, h) * 1.1  # rounding to the factor aside
    assert max(w, h) / min(w, h) < MAX_ASPECT  # what Qwen-VL's processor accepts
    # The stretch is across the strip only: its long side stays the long side.
    assert (w >= h) == (size[0] >= size[1]) or size[0] == size[1]
