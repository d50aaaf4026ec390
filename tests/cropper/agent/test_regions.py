"""Keep regions and protected faces: repaired crops hold the one and cut none of the other."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cropper.agent.constraints import Constraints, _cuts, _holds, avoid_shares
from cropper.core.boxes import Box, fit_aspect, fit_box
from cropper.core.errors import ConfigError

sizes = st.tuples(st.integers(50, 4000), st.integers(50, 4000))
ratios = st.one_of(st.none(), st.sampled_from([1.0, 0.8, 16 / 9, 9 / 16, 3.0]))


@st.composite
def boxes(draw, most: float = 1.0) -> Box:
    w = draw(st.floats(0.02, most))
    h = draw(st.floats(0.02, most))
    x0 = draw(st.floats(0, 1 - w))
    y0 = draw(st.floats(0, 1 - h))
    return Box(x0, y0, x0 + w, y0 + h)


RAN = {"faces": 0, "keep": 0, "fit": 0}


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    size=sizes,
    proposal=boxes(),
    ratio=ratios,
    faces=st.lists(boxes(most=0.25), min_size=1, max_size=6),
    keep=st.lists(boxes(most=0.3), max_size=1),
)
def test_no_repaired_crop_cuts_a_face_or_leaves_out_a_keep_region(
    size, proposal, ratio, faces, keep
):
    constraints = Constraints(size, 0.1, None, ratio, keep=tuple(keep), faces=tuple(faces))
    try:
        constraints.check_keep()
    except ConfigError:
        assume(False)  # a keep region no crop of the ratio holds: refused before any work
    repaired = constraints.repair(proposal)
    crop = repaired.box.to_pixels(size)
    for region in keep:
        assert _holds(crop, region.to_pixels(size))
    if "no crop of the request can hold or leave out" not in repaired.change:
        assert constraints.check(repaired.box) == "", (repaired, crop, constraints._face_pixels)
        assert not any(_cuts(crop, f) for f in constraints._face_pixels)
        RAN["faces"] += 1
    if keep:
        RAN["keep"] += 1


def test_the_region_property_ran_its_examples():
    # Nearly every request can be honoured whole; those that cannot say so in the change.
    assert RAN["faces"] >= 350 and RAN["keep"] >= 100, RAN


def test_a_face_at_the_edge_of_a_proposal_is_taken_in_or_left_out_whole():
    size = (2000, 1000)
    big, small = Box(0.1, 0.2, 0.2, 0.4), Box(0.45, 0.3, 0.5, 0.4)
    constraints = Constraints(size, ratio=1.0, faces=(big, small))
    # A square through the small face's middle, holding the big one.
    repaired = constraints.repair(Box(0.05, 0.0, 0.475, 0.85))
    crop = repaired.box.to_pixels(size)
    assert constraints.check(repaired.box) == ""
    assert _holds(crop, constraints._face_pixels[0])  # the largest face is in
    assert "face" in repaired.change
    assert abs((crop[2] - crop[0]) - (crop[3] - crop[1])) <= 1  # still square


def test_the_largest_face_is_held_when_the_ratio_allows_and_not_when_it_cannot():
    size = (3000, 1000)
    face = Box(0.05, 0.3, 0.1, 0.6)  # left edge
    constraints = Constraints(size, ratio=1.0, faces=(face,))
    repaired = constraints.repair(Box(0.6, 0.0, 0.93, 1.0))  # a square at the right
    assert _holds(repaired.box.to_pixels(size), constraints._face_pixels[0])
    assert "largest face" in repaired.change
    # A keep region at the right that no square holding the face can also hold.
    far = Constraints(size, ratio=1.0, faces=(face,), keep=(Box(0.8, 0.4, 0.9, 0.5),))
    repaired = far.repair(Box(0.6, 0.0, 0.93, 1.0))
    crop = repaired.box.to_pixels(size)
    assert far.check(repaired.box) == "" and not _cuts(crop, far._face_pixels[0])
    assert not _holds(crop, far._face_pixels[0])


def test_keep_regions_that_no_crop_of_the_ratio_holds_are_refused_in_one_line():
    constraints = Constraints((2000, 1000), ratio=1.0, keep=(Box(0.1, 0.1, 0.9, 0.5),))
    with pytest.raises(ConfigError, match="keep regions .* 1600x400 px .* ratio 1 cannot hold"):
        constraints.check_keep()


def test_a_proposal_that_misses_a_keep_region_is_widened_to_it():
    constraints = Constraints((1000, 1000), keep=(Box(0.7, 0.7, 0.9, 0.9),))
    repaired = constraints.repair(Box(0.1, 0.1, 0.4, 0.4))
    assert repaired.box.to_pixels((1000, 1000)) == (100, 100, 900, 900)
    assert repaired.change == "widened to hold the keep regions"
    assert constraints.check(Box(0.1, 0.1, 0.4, 0.4)) == "misses a keep region"


def test_avoid_shares_count_the_part_of_each_region_a_crop_holds():
    avoid = [Box(0.8, 0.0, 1.0, 0.2), Box(0.0, 0.8, 0.2, 1.0)]
    crops = [Box(0.0, 0.0, 0.5, 0.5), Box(0.9, 0.0, 1.0, 1.0), Box.whole()]
    assert avoid_shares(crops, avoid) == pytest.approx([0.0, 0.25, 1.0])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(size=sizes, proposal=boxes(), ratio=st.floats(0.05, 20.0))
def test_fit_box_without_a_region_is_fit_aspect(size, proposal, ratio):
    fitted = fit_box(proposal.to_pixels(size), size, ratio=ratio)
    assert fitted is not None
    assert Box.from_pixels(fitted, size) == fit_aspect(proposal, ratio, size)
    RAN["fit"] += 1


@settings(max_examples=200, deadline=None, derandomize=True)
@given(size=sizes, proposal=boxes(), hold=boxes(most=0.5), ratio=ratios)
def test_fit_box_holds_its_region_inside_its_window(size, proposal, hold, ratio):
    held = hold.to_pixels(size)
    window = (0, 0, size[0], held[3] + (size[1] - held[3]) // 2)
    fitted = fit_box(proposal.to_pixels(size), size, ratio=ratio, hold=held, within=window)
    if fitted is None:
        return  # no box of the ratio holds it in that window: said, not faked
    assert _holds(fitted, held) and _holds(window, fitted)
    if ratio is not None:
        w, h = fitted[2] - fitted[0], fitted[3] - fitted[1]
        assert abs(w - ratio * h) <= 1 or abs(h - w / ratio) <= 1
    RAN["fit"] += 1


def test_the_fit_properties_ran_their_examples():
    assert RAN["fit"] >= 300, RAN


def test_avoid_shares_are_zero_without_regions():
    assert np.array_equal(avoid_shares([Box.whole()], []), [0.0])
