"""Diverse good crops: the best k of all rounds, no two overlapping past the threshold."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from cropper import Box, ConfigError, Cropper
from cropper.agent.diversity import diverse_top
from cropper.agent.result import Candidate
from cropper.testing.scripted import ScriptedVLM, crops_reply


def cand(box, score, round_=0):
    return Candidate(Box(*box), score, {}, round_)


A = cand((0.0, 0.0, 0.5, 0.5), 0.9)
A2 = cand((0.02, 0.0, 0.52, 0.5), 0.85)  # nearly A
B = cand((0.5, 0.5, 1.0, 1.0), 0.7)
C = cand((0.25, 0.0, 0.75, 0.5), 0.6)  # IoU 1/3 with A
D = cand((0.0, 0.5, 0.5, 1.0), 0.5)


@pytest.mark.parametrize(
    "candidates, k, max_iou, first, expected",
    [
        ([A, A2, B, C, D], 3, 0.5, None, [A, B, C]),
        ([A, A2, B, C, D], 3, 0.3, None, [A, B, D]),
        ([A, A2, B, C, D], 5, 0.99, None, [A, A2, B, C, D]),
        ([A, A2, B], 5, 0.5, None, [A, B]),  # fewer when the rest are too alike
        ([A, A2, B, C, D], 2, 0.5, D, [D, A]),  # the chosen crop leads
        ([A, B], 1, 0.5, None, [A]),
        ([], 3, 0.5, None, []),
    ],
)
def test_diverse_top(candidates, k, max_iou, first, expected):
    assert list(diverse_top(candidates, k, max_iou, first=first)) == expected


@pytest.mark.parametrize("k, max_iou", [(0, 0.5), (True, 0.5), (2, 1.5), (2, -0.1)])
def test_bad_settings_are_refused(k, max_iou):
    with pytest.raises(ConfigError):
        diverse_top([A], k, max_iou)
    with pytest.raises(ConfigError):
        Cropper(
            vlm=ScriptedVLM([]), clip=None, head=None, index=None, top_k=k, diversity_iou=max_iou
        )


def test_top_k_through_the_loop_draws_from_all_rounds():
    # Each round proposes overlapping and separate crops; areas differ, so scores differ.
    rounds = [
        [crops_reply((0, 0, 600, 600), (20, 0, 620, 600), (500, 500, 1000, 1000))],
        [crops_reply((0, 400, 500, 1000), (10, 410, 500, 1000))],
        [crops_reply((300, 0, 1000, 450))],
    ]
    cropper = Cropper(vlm=ScriptedVLM(rounds), clip=None, head=None, index=None, top_k=4)
    result = cropper.crop(Image.new("RGB", (400, 300)), task="free")
    assert result.top[0].box == result.box and result.top[0].score == result.score
    assert len(result.top) == 4
    assert {c.round for c in result.top} == {0, 1, 2}
    for a, b in itertools.combinations(result.top, 2):
        assert a.box.iou(b.box) <= 0.5
    assert [c.score for c in result.top[1:]] == sorted(
        (c.score for c in result.top[1:]), reverse=True
    )
    summary = result.to_json()["top"]
    assert [s["score"] for s in summary] == [round(c.score, 6) for c in result.top]
    assert [im.size for im in result.top_images][0] == result.image.size


def test_default_top_is_the_chosen_crop_alone():
    cropper = Cropper(
        vlm=ScriptedVLM(lambda c, s: [crops_reply((0, 0, 500, 500), (500, 500, 1000, 1000))]),
        clip=None,
        head=None,
        index=None,
    )
    result = cropper.crop(Image.new("RGB", (100, 100)))
    assert [c.box for c in result.top] == [result.box] and "top" not in result.to_json()
