"""The VLM-free baselines: each task, the same errors as Cropper.crop, and what each picks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cropper.agent.baselines import (
    BASELINES,
    CentreCrop,
    HeadGridCrop,
    SaliencyCrop,
    SmartcropCrop,
    WholePhoto,
    make_baseline,
)
from cropper.agent.grid import grid_candidates, largest_fitting, ratio_candidates
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.scoring.head import AestheticHead, HeadConfig
from cropper.scoring.scorer import EMBED_BATCH, Scorer
from cropper.testing.synthetic import salient_square


class RampEmbedder:
    """Embeds a crop as ``(f, sqrt(1 - f^2))``, ``f`` a fixed mix of its mean red and green.

    A unit vector already, so the head (which re-normalizes) reads ``f`` back exactly.
    """

    name, dim = "ramp", 2

    def __init__(self):
        self.batches: list[int] = []

    @staticmethod
    def feature(image: Image.Image) -> float:
        pixels = np.asarray(image, dtype=np.float64) / 255.0
        return 0.5 * pixels[..., 0].mean() + 0.3 * pixels[..., 1].mean()

    def embed(self, images):
        self.batches.append(len(images))
        f = np.array([self.feature(image) for image in images])
        return np.stack([f, np.sqrt(1 - f**2)], axis=1).astype(np.float32)


def reading_head() -> AestheticHead:
    """A head whose score is the embedding's first value."""
    config = HeadConfig(dims=(2, 1), output_range=(0.0, 1.0))
    state = {"linear0.weight": torch.tensor([[1.0, 0.0]]), "linear0.bias": torch.zeros(1)}
    return AestheticHead(config, state)


def ramp_photo(size=(600, 400)) -> Image.Image:
    """Red rises to the right, green to the bottom: the head prefers crops low and right."""
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, w)[None, :]
    pixels[..., 1] = np.linspace(0, 255, h)[:, None]
    return Image.fromarray(pixels)


@pytest.fixture
def photo() -> Image.Image:
    return salient_square()


def head_baseline(embedder=None, **kwargs) -> HeadGridCrop:
    return HeadGridCrop(Scorer(embedder or RampEmbedder(), reading_head()), **kwargs)


def all_baselines() -> list:
    return [WholePhoto(), CentreCrop(), SaliencyCrop(), head_baseline(), SmartcropCrop()]


@pytest.mark.parametrize("baseline", all_baselines(), ids=lambda b: b.name)
@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        ("free", {}),
        ("subject", {"subject": (0.3, 0.6)}),
        ("aspect", {"ratio": "16:9"}),
        ("aspect", {"ratio": 0.5}),
    ],
)
def test_every_baseline_returns_a_valid_result_for_every_task(baseline, photo, task, kwargs):
    result = baseline.crop(photo, task, **kwargs)
    assert result.task == task and result.rounds == () and result.source is None
    assert result.candidates and result.box == result.candidates[0].box
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True) and result.score == scores[0]
    assert {(c.source, c.round) for c in result.candidates} == {(baseline.name, 0)}
    left, top, right, bottom = result.pixels
    assert 0 <= left < right <= 640 and 0 <= top < bottom <= 480
    if task == "aspect":
        for c in result.candidates:
            cl, ct, cr, cb = c.box.to_pixels(photo.size)
            assert abs((cr - cl) - (cb - ct) * result.ratio.value) <= 0.5 + 1e-9
    if task == "subject":
        assert result.subject.point == (0.3, 0.6) and result.box.contains(0.3, 0.6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "zoom"}, "unknown task"),
        ({"task": "aspect"}, "needs ratio="),
        ({"task": "aspect", "ratio": "wide"}, "not valid"),
        ({"task": "free", "ratio": "1:1"}, "applies to task='aspect'"),
        ({"task": "free", "subject": (0.5, 0.5)}, "applies to task='subject'"),
        ({"task": "subject", "subject": (2.0, 0.5)}, "normalized"),
        ({"task": "subject", "subject": "the red kite"}, "needs a VLM"),
    ],
)
@pytest.mark.parametrize("baseline", [WholePhoto(), SaliencyCrop()], ids=lambda b: b.name)
def test_bad_arguments_get_the_croppers_errors(photo, baseline, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        baseline.crop(photo, **kwargs)


def test_a_path_is_loaded_and_named(photo, tmp_path):
    path = tmp_path / "blob.png"
    photo.save(path)
    result = CentreCrop().crop(path)
    assert result.source == str(path) and result.to_json()["image"] == str(path)


@pytest.mark.parametrize(
    ("task", "kwargs", "pixels"),
    [
        ("free", {}, (0, 0, 640, 480)),
        ("subject", {"subject": (0.9, 0.1)}, (0, 0, 640, 480)),
        ("aspect", {"ratio": "1:1"}, (80, 0, 560, 480)),
    ],
)
def test_whole_photo(photo, task, kwargs, pixels):
    assert WholePhoto().crop(photo, task, **kwargs).pixels == pixels


@pytest.mark.parametrize(
    ("task", "kwargs", "pixels"),
    [
        ("free", {}, (64, 48, 576, 432)),  # 0.8 of each side, centred
        ("subject", {"subject": (0.3, 0.5)}, (0, 48, 512, 432)),  # centred there, moved inside
        ("subject", {"subject": (0.95, 0.05)}, (128, 0, 640, 384)),
        ("aspect", {"ratio": "16:9"}, (0, 60, 640, 420)),  # the largest centred 16:9
    ],
)
def test_centre_crop(photo, task, kwargs, pixels):
    assert CentreCrop().crop(photo, task, **kwargs).pixels == pixels


def test_centre_crop_scale_is_checked():
    assert CentreCrop(0.5).crop(Image.new("RGB", (100, 100))).pixels == (25, 25, 75, 75)
    with pytest.raises(ConfigError, match="scale"):
        CentreCrop(1.5)


def test_saliency_crop_frames_the_salient_square(photo):
    result = SaliencyCrop().crop(photo)
    left, top, right, bottom = result.pixels
    assert left <= 420 and top <= 300 and right >= 500 and bottom >= 380  # the square is in
    assert result.box.area < 0.6  # and the dull rest is mostly cut
    best = result.candidates[0]
    assert set(best.terms) == {"saliency", "cut"} and best.terms["saliency"] > 0.5


def test_saliency_subject_defaults_to_the_salient_point(photo):
    result = SaliencyCrop().crop(photo, "subject")
    assert result.subject.source == "saliency"
    assert all(c.box.contains(*result.subject.point) for c in result.candidates)


def test_head_baseline_picks_the_crop_the_head_likes_best_in_one_embed():
    image = ramp_photo()
    embedder = RampEmbedder()
    result = head_baseline(embedder, narrow=None).crop(image)  # the whole grid
    grid = grid_candidates(image.size)
    # One pass over every candidate, its crops cut a batch at a time (scorer.EMBED_BATCH).
    assert sum(embedder.batches) == len(grid) and max(embedder.batches) <= EMBED_BATCH
    wanted = [RampEmbedder.feature(image.crop(b.to_pixels(image.size))) for b in grid]
    order = np.argsort(wanted)[::-1]
    assert wanted[order[0]] - wanted[order[1]] > 1e-4  # the winner is unambiguous
    assert result.box == grid[order[0]]
    assert result.score == pytest.approx(wanted[order[0]], abs=1e-5)
    assert result.box.area < max(b.area for b in grid)  # not merely the largest
    assert set(result.candidates[0].terms) == {"aesthetic"}
    assert len(result.candidates) == len(grid)


def test_head_baseline_without_a_head_says_so_and_ranks_by_area(photo, caplog):
    with caplog.at_level(logging.WARNING, logger="cropper.agent.baselines"):
        baseline = HeadGridCrop(Scorer(None, None))
    assert "ranked by area alone" in caplog.text
    result = baseline.crop(photo)
    assert result.box.area == pytest.approx(max(b.area for b in grid_candidates(photo.size)))


@pytest.mark.parametrize("point", [(0.5, 0.5), (0.02, 0.5), (0.005, 0.995)])
def test_head_baseline_subject_keeps_only_crops_holding_it(photo, point):
    result = head_baseline(narrow=None).crop(photo, "subject", subject=point)
    assert all(c.box.contains(*point) for c in result.candidates)
    # Near an edge the grid holds no such crop, but the photo-ratio sweep does.
    pool = grid_candidates(photo.size) + ratio_candidates(photo.size, 640 / 480, steps=3)
    assert 0 < len(result.candidates) == sum(b.contains(*point) for b in pool)


def test_registry_and_factory(tiny_clip):
    assert list(BASELINES) == ["whole", "centre", "saliency", "head", "smartcrop"]
    assert isinstance(make_baseline("centre"), CentreCrop)
    assert isinstance(make_baseline("smartcrop"), SmartcropCrop)
    with pytest.raises(ConfigError, match="whole, centre, saliency, head, smartcrop"):
        make_baseline("random")
    head = make_baseline("head", clip=tiny_clip, head=None)
    assert isinstance(head, HeadGridCrop) and head.scorer.embedder.dim == 32
    with head:
        result = head.crop(Image.new("RGB", (320, 240), (10, 200, 30)))
    # No head: the knowledge term (CLIP's sense of good composition) stands in, not area.
    assert set(result.candidates[0].terms) == {"knowledge"}
    assert "goes to the knowledge term" in result.notes[0]


def test_score_boxes_is_what_each_baseline_ranks_by(photo):
    boxes = grid_candidates(photo.size)[:5]
    # The area for the whole photo and the centre crop, as their rank_boxes says.
    assert CentreCrop().score_boxes(photo, boxes) == pytest.approx([b.area for b in boxes])
    # The head baseline: the head over each crop's embedding, the score its crops carry.
    image = ramp_photo()
    wanted = [RampEmbedder.feature(image.crop(b.to_pixels(image.size))) for b in boxes]
    assert head_baseline().score_boxes(image, boxes) == pytest.approx(wanted, abs=1e-5)
    # Saliency: its score ranks the box holding the salient square above one without it.
    square, corner = Box(0.3, 0.3, 0.8, 0.8), Box(0.0, 0.0, 0.2, 0.2)
    held, missed = SaliencyCrop().score_boxes(photo, [square, corner])
    assert held > missed


# -- smartcrop, the package ----------------------------------------------------------------


def test_smartcrop_returns_the_best_window_smartcrop_itself_finds_over_the_ratios(photo):
    baseline = SmartcropCrop()
    result = baseline.crop(photo)
    # smartcrop's own search, ratio by ratio, on the photo as analysed (640x480 -> 256x192).
    small = photo.resize((256, 192), Image.Resampling.LANCZOS)
    tops = []
    for ratio in [640 / 480, 1.0, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16]:  # own, then common
        width, height = largest_fitting(small.size, ratio)
        found = baseline.engine.analyse(small, width, height)  # smartcrop's own defaults
        tops.append(found["top_crop"])
    best = max(tops, key=lambda c: c["score"])
    assert result.score == pytest.approx(best["score"])
    assert result.box.to_pixels(small.size) == (
        best["x"], best["y"], best["x"] + best["width"], best["y"] + best["height"])  # fmt: skip
    assert result.box.contains(*Box(420 / 640, 300 / 480, 500 / 640, 380 / 480).center)
    assert result.candidates[0].source == "smartcrop" and "smartcrop" in result.notes[0]


def test_smartcrop_scores_any_box_as_its_analysis_scores_its_windows(photo):
    baseline = SmartcropCrop()
    small = photo.resize((256, 192), Image.Resampling.LANCZOS)
    found = baseline.engine.analyse(small, 200, 150, min_scale=0.5, num_scale_steps=6)
    windows = found["crops"][::37]  # windows of several sizes and places
    boxes = [Box(c["x"] / 256, c["y"] / 192, (c["x"] + c["width"]) / 256,
                 (c["y"] + c["height"]) / 192) for c in windows]  # fmt: skip
    assert len(boxes) > 10
    assert baseline.score_boxes(photo, boxes) == pytest.approx([c["score"] for c in windows])


def test_smartcrop_aspect_crops_have_the_exact_ratio(photo):
    result = SmartcropCrop().crop(photo, "aspect", ratio="16:9")
    left, top, right, bottom = result.box.to_pixels(photo.size)
    assert abs((right - left) - (bottom - top) * 16 / 9) <= 1


def test_smartcrop_without_its_extra_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "smartcrop", None)  # as if not installed
    with pytest.raises(ConfigError) as caught:
        make_baseline("smartcrop")
    assert str(caught.value) == (
        "smartcrop is needed for the smartcrop baseline but is not installed: "
        "run pip install 'cropper[smartcrop]'"
    )
