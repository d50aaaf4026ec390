"""A crop call's arguments read once, with a one-line error for each kind of mistake."""

from __future__ import annotations

import pytest

from cropper.agent.request import OutputSize, make_request, parse_size
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError


def test_a_list_of_ratios_asks_for_one_crop_each_keyed_as_written():
    request = make_request("aspect", ratio=["1:1", "4:5", " 16:9", (3, 2), 1.5])
    assert request.several and [r.text for r in request.ratios] == [
        "1:1",
        "4:5",
        "16:9",
        "3:2",
        "1.5",
    ]
    assert request.ratio is None


@pytest.mark.parametrize("ratio", [(16, 9), [16, 9], "16:9", 1.78])
def test_one_ratio_however_written_is_not_several(ratio):
    request = make_request("aspect", ratio=ratio)
    assert not request.several and request.ratio is not None


def test_an_exact_size_implies_its_ratio_and_a_long_side_does_not():
    request = make_request(size="1080x1350")
    assert request.task == "aspect" and request.ratio.value == pytest.approx(0.8)
    assert request.size.for_crop((123, 456)) == (1080, 1350)
    long_side = make_request(size=1080)
    assert long_side.task == "free" and long_side.size.for_crop((400, 300)) == (1080, 810)
    assert long_side.size.for_crop((300, 400)) == (810, 1080)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"task": "aspect", "ratio": "16:9", "size": "1080x1350"},
            "size 1080x1350 is not of ratio 16:9",
        ),
        ({"task": "aspect", "ratio": ["1:1", "4:5"], "size": "1080x1080"}, "not of ratio 4:5"),
        ({"task": "subject", "size": "1080x1350"}, "fixes the ratio 1080:1350"),
        ({"size": "big"}, "size 'big' is not valid"),
        ({"size": 0}, "size 0 is not valid"),
        ({"size": (1080, -5)}, "is not valid"),
        ({"task": "aspect", "ratio": []}, "lists no ratio"),
        ({"task": "aspect", "ratio": ["1:1", "1:1"]}, "'1:1' is listed twice"),
        ({"task": "aspect", "ratio": ["1:1", "wide"]}, "aspect ratio 'wide' is not valid"),
        ({"keep": [(0.5, 0.2, 0.4, 0.6)]}, "keep box .* is not valid: give x0,y0,x1,y1"),
        ({"avoid": ["1,2,3"]}, "avoid box '1,2,3' is not valid"),
        ({"protect": "cats"}, "protect='cats' is not known: use one of faces"),
        ({"task": "free", "ratio": ["1:1", "4:5"]}, "ratio= applies to task='aspect'"),
    ],
)
def test_bad_requests_fail_in_one_line_naming_what_is_wrong(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_request(**kwargs)
    assert "\n" not in str(caught.value)


def test_regions_are_read_as_boxes_one_or_many_and_as_text():
    one = make_request(keep=(0.1, 0.2, 0.4, 0.6))
    assert one.keep == (Box(0.1, 0.2, 0.4, 0.6),)
    many = make_request(keep=["0.1,0.2,0.4,0.6", (0.5, 0.5, 0.9, 0.9)], avoid=[Box(0.8, 0, 1, 0.2)])
    assert len(many.keep) == 2 and many.avoid == (Box(0.8, 0, 1, 0.2),)
    assert make_request(protect=["faces", "faces"]).protect == ("faces",)


def test_sizes_read_as_written():
    assert parse_size("1080") == OutputSize(long_side=1080)
    assert parse_size(" 1080 x 1350 ") == OutputSize(exact=(1080, 1350))
    assert parse_size((640, 480)) == OutputSize(exact=(640, 480))
    assert parse_size(None) is None
