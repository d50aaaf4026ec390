from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.core.tasks import Subject, parse_ratio, subject_from_spec


@pytest.mark.parametrize(
    ("ratio", "value", "text"),
    [
        ("16:9", 16 / 9, "16:9"),
        ("4/5", 0.8, "4/5"),
        ("1.5", 1.5, "1.5"),
        (2, 2.0, "2"),
        ((3, 2), 1.5, "3:2"),
        (" 1 : 1 ", 1.0, "1 : 1"),
    ],
)
def test_ratios_are_read(ratio, value, text):
    parsed = parse_ratio(ratio)
    assert parsed.value == pytest.approx(value) and parsed.text == text


@pytest.mark.parametrize("ratio", ["wide", "16:0", "-1", 0, float("nan"), (1,), "1:2:3", True])
def test_bad_ratios_are_refused(ratio):
    with pytest.raises(ConfigError, match="W:H"):
        parse_ratio(ratio)


SIZE = (100, 50)


@pytest.mark.parametrize(
    ("spec", "point", "source"),
    [
        ((0.4, 0.5), (0.4, 0.5), "point"),
        ("0.4,0.5", (0.4, 0.5), "point"),
        ((0.2, 0.2, 0.6, 0.4), (0.4, 0.3), "box"),
        ("0.2 0.2 0.6 0.4", (0.4, 0.3), "box"),
        (Box(0.0, 0.0, 0.5, 1.0), (0.25, 0.5), "box"),
    ],
)
def test_subject_points_and_boxes(spec, point, source):
    subject = subject_from_spec(spec, SIZE)
    assert isinstance(subject, Subject)
    assert subject.point == pytest.approx(point) and subject.source == source


def test_subject_mask_gives_centroid_and_box(tmp_path):
    mask = np.zeros((50, 100), dtype=np.uint8)
    mask[10:20, 60:80] = 255
    for spec in (mask, Image.fromarray(mask), mask > 0):
        subject = subject_from_spec(spec, SIZE)
        assert subject.source == "mask"
        assert subject.point == pytest.approx((0.7, 0.3))
        assert subject.box.to_pixels(SIZE) == (60, 10, 80, 20)
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert subject_from_spec(str(tmp_path / "m.png"), SIZE).source == "mask"


def test_subject_text_and_none_need_the_vlm():
    assert subject_from_spec("the red kite", SIZE) == "the red kite"
    assert subject_from_spec(None, SIZE) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ((1.5, 0.5), "normalized"),
        (np.zeros((10, 10)), "mask is 10x10"),
        (np.zeros((50, 100)), "empty"),
        (object(), "not understood"),
        ("missing.png", "does not exist"),
    ],
)
def test_bad_subjects_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        subject_from_spec(spec, SIZE)
