"""Pictures of a result: candidates a colour a round, the chosen crop in red."""

from __future__ import annotations

import pytest
from PIL import Image

from cropper import Cropper
from cropper.testing.scripted import ScriptedVLM, crops_reply
from cropper.views.drawing import PREDICTION, draw_result, round_colour

GREY = (128, 128, 128)

# Round k proposes one box of its own, so each round's colour has a place to show.
BOXES = [(100, 100, 300, 300), (400, 100, 600, 300), (100, 500, 300, 700)]


@pytest.fixture(scope="module")
def result():
    vlm = ScriptedVLM([[crops_reply(b)] for b in BOXES])
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None, coords="norm1000")
    return cropper.crop(Image.new("RGB", (400, 300), GREY), task="free")


def _left_edge(box, size):
    left, top, right, bottom = (round(v * s / 1000) for v, s in zip(box, size * 2, strict=True))
    return left, (top + bottom) // 2


def test_each_round_in_its_colour_and_the_chosen_crop_in_red(result):
    # Free-form picks from the last round, which proposed only BOXES[2].
    assert result.pixels == (40, 150, 120, 210)
    picture = draw_result(result, labels=False, legend=False, max_side=None)
    assert picture.size == (400, 300)
    assert picture.getpixel(_left_edge(BOXES[0], picture.size)) == round_colour(0)
    assert picture.getpixel(_left_edge(BOXES[1], picture.size)) == round_colour(1)
    assert picture.getpixel(_left_edge(BOXES[2], picture.size)) == PREDICTION
    assert picture.getpixel((5, 5)) == GREY  # outside every box, the photo itself


def test_rounds_limits_the_candidates_drawn(result):
    only_first = draw_result(result, rounds=[0], labels=False, legend=False, max_side=None)
    assert only_first.getpixel(_left_edge(BOXES[0], only_first.size)) == round_colour(0)
    x, y = _left_edge(BOXES[1], only_first.size)
    assert only_first.getpixel((x, y)) != round_colour(1)


def test_labels_and_legend_draw_more_and_the_legend_adds_a_strip(result):
    plain = draw_result(result, labels=False, legend=False, max_side=None)
    labelled = draw_result(result, labels=True, legend=False, max_side=None)
    assert plain.size == labelled.size and plain.tobytes() != labelled.tobytes()
    with_legend = draw_result(result, labels=False, legend=True, max_side=None)
    assert with_legend.width == plain.width and with_legend.height > plain.height
    strip = with_legend.crop((0, plain.height, with_legend.width, with_legend.height))
    colours = {c for _, c in strip.getcolors(1 << 16)}
    assert {round_colour(0), round_colour(1), round_colour(2), PREDICTION} <= colours


@pytest.mark.parametrize("max_side, expected", [(None, (400, 300)), (200, (200, 150))])
def test_max_side_bounds_the_picture(result, max_side, expected):
    assert draw_result(result, legend=False, max_side=max_side).size == expected


def test_crop_result_draw_is_the_overlay(result):
    assert result.draw(labels=False).tobytes() == draw_result(result, labels=False).tobytes()


@pytest.mark.parametrize("at", [(-20, 5), (190, 5), (5, 95), (195, 97)])
def test_a_label_at_an_edge_is_moved_inside_whole(at):
    from PIL import ImageDraw

    from cropper.views.drawing import _font, _label

    def white_pixels(where):
        canvas = Image.new("RGB", (200, 100), (0, 0, 0))
        _label(ImageDraw.Draw(canvas), where, "chosen 0.87", (200, 30, 30), _font(14))
        return sum(1 for p in canvas.getdata() if p == (255, 255, 255))

    assert white_pixels(at) == white_pixels((40, 40)) > 0  # the same text, none of it cut
