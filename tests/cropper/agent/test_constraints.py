"""Every crop satisfies its request: repaired proposals are valid and near what was proposed."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cropper.agent.constraints import DEFAULT_MIN_SIDE, Constraints, check_min_side
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.core.tasks import Subject

sizes = st.tuples(st.integers(1, 6000), st.integers(1, 6000))
shares = st.floats(0.0, 1.0)
ratios = st.one_of(st.none(), st.floats(0.01, 100.0))


@st.composite
def boxes(draw) -> Box:
    x0, x1 = sorted(draw(st.lists(st.floats(0, 1), min_size=2, max_size=2)))
    y0, y1 = sorted(draw(st.lists(st.floats(0, 1), min_size=2, max_size=2)))
    assume(x1 - x0 > 1e-9 and y1 - y0 > 1e-9)
    return Box(x0, y0, x1, y1)


@st.composite
def subjects(draw) -> Subject | None:
    kind = draw(st.sampled_from(["none", "point", "box"]))
    if kind == "none":
        return None
    if kind == "point":
        return Subject((draw(st.floats(0, 1)), draw(st.floats(0, 1))))
    box = draw(boxes())
    return Subject(box.center, box, source="box")


RAN = {"repair": 0}


@settings(max_examples=600, deadline=None, derandomize=True)
@given(size=sizes, proposal=boxes(), min_side=shares, subject=subjects(), ratio=ratios)
def test_any_proposal_is_repaired_into_a_crop_that_satisfies_the_request(
    size, proposal, min_side, subject, ratio
):
    # A subject crop has no ratio, as a request cannot ask for both.
    constraints = Constraints(size, min_side, None if ratio else subject, ratio)
    repaired = constraints.repair(proposal)
    assert constraints.check(repaired.box) == "", (repaired, repaired.box.to_pixels(size))
    if not constraints.check(proposal) and ratio is None:
        assert repaired.box.to_pixels(size) == proposal.to_pixels(size) and not repaired.change
    RAN["repair"] += 1


def test_the_property_ran_its_examples():
    # Run after the property above (pytest keeps file order): it really tried 600 requests.
    assert RAN["repair"] == 600


@pytest.mark.parametrize(
    ("size", "pixels", "change"),
    [
        ((4000, 3000), (378, 300, 734, 304), "grown from 356x4 px"),  # a real reply's sliver
        ((400, 300), (100, 100, 120, 111), "grown from 20x11 px"),
        ((400, 300), (10, 10, 12, 74), "grown from 2x64 px"),
    ],
)
def test_a_sliver_is_grown_about_its_centre_to_the_least_side(size, pixels, change):
    constraints = Constraints(size)
    repaired = constraints.repair(Box.from_pixels(pixels, size))
    left, top, right, bottom = repaired.box.to_pixels(size)
    assert right - left >= DEFAULT_MIN_SIDE * size[0] and bottom - top >= DEFAULT_MIN_SIDE * size[1]
    assert repaired.change.startswith(change)
    # Its centre stays where the proposal was, unless the photo's edge moved it.
    assert abs((left + right) / 2 - (pixels[0] + pixels[2]) / 2) <= 1 or left == 0


def test_a_crop_that_misses_the_subject_is_widened_to_hold_it():
    size = (400, 300)
    point = Subject((0.4, 0.5))
    repaired = Constraints(size, subject=point).repair(Box(0.6, 0.6, 0.9, 0.9))
    assert repaired.box.contains(0.4, 0.5) and "widened to hold the subject" in repaired.change
    held = Subject((0.5, 0.5), Box(0.3, 0.3, 0.7, 0.7), source="box")
    repaired = Constraints(size, subject=held).repair(Box(0.4, 0.4, 0.6, 0.6))
    assert repaired.box == Box(0.3, 0.3, 0.7, 0.7)


def test_a_ratio_too_thin_for_the_least_side_gives_its_largest_crop():
    constraints = Constraints((400, 300), ratio=100.0)
    repaired = constraints.repair(Box(0.5, 0.5, 0.51, 0.51))
    assert repaired.box.to_pixels((400, 300)) == (0, 148, 400, 152)  # 400 wide: all it can be
    assert constraints.check(repaired.box) == ""


def test_repairs_that_meet_are_dropped_and_counted_in_the_notes():
    applied = Constraints((400, 300)).apply(
        [Box(0.5, 0.5, 0.51, 0.51), Box(0.5, 0.5, 0.51, 0.5101), Box.whole()]
    )
    assert len(applied.boxes) == 2 and applied.dropped == ("repeated another crop once repaired",)
    assert applied.changes[1] == ""
    assert applied.notes == [
        "1 proposal grown from 4x3 px to min_side 0.1",
        "1 proposal dropped: repeated another crop once repaired",
    ]


@pytest.mark.parametrize("value", [-0.1, 1.5, "0.1", True, float("nan")])
def test_a_bad_min_side_is_one_clear_error(value):
    with pytest.raises(ConfigError, match="min_side must be a share"):
        check_min_side(value)
