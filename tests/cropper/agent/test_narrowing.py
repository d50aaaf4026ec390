"""The head baseline ranks few crops: the cheap first pass, the search, and what it tells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cropper.agent import narrowing
from cropper.agent.baselines import HeadGridCrop, scoring_copy, scoring_side
from cropper.agent.grid import grid_candidates
from cropper.agent.narrowing import (
    NARROW,
    ROUNDS,
    SEEDS,
    cheap_scores,
    check_narrow,
    composition_scores,
    search,
    spread,
)
from cropper.core.boxes import Box, iou_matrix
from cropper.core.errors import ConfigError
from cropper.scoring.head import AestheticHead, HeadConfig
from cropper.scoring.saliency import saliency_map
from cropper.scoring.scorer import Scorer
from cropper.testing.synthetic import salient_square, synthetic_photo


class RampEmbedder:
    """Embeds a crop as ``(f, sqrt(1 - f^2))``, ``f`` a fixed mix of its mean red and green.

    As in test_baselines: a unit vector, so the head below reads ``f`` back exactly.
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


class SizeEmbedder(RampEmbedder):
    """The ramp embedder that also records the size of every image it is given."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def embed(self, images):
        self.sizes += [image.size for image in images]
        return super().embed(images)


def baseline(embedder=None, **kwargs) -> HeadGridCrop:
    return HeadGridCrop(Scorer(embedder or RampEmbedder(), reading_head()), **kwargs)


def head_scores(image: Image.Image, boxes: list[Box]) -> np.ndarray:
    return np.array([RampEmbedder.feature(image.crop(b.to_pixels(image.size))) for b in boxes])


# -- the baseline ----------------------------------------------------------------------------


def test_by_default_only_narrow_crops_are_embedded_and_the_notes_say_so():
    image = ramp_photo()
    embedder = RampEmbedder()
    result = baseline(embedder).crop(image)
    grid = grid_candidates(image.size)
    assert sum(embedder.batches) == NARROW < len(grid)  # 16 of 87 crops embedded
    assert embedder.batches[0] == SEEDS and len(embedder.batches) == 1 + ROUNDS
    assert len(result.candidates) == NARROW and {c.box for c in result.candidates} <= set(grid)
    note = next(n for n in result.notes if n.startswith("ranked"))
    assert f"ranked {NARROW} of the {len(grid)} grid crops" in note
    assert "saliency and composition" in note and "narrow=None ranks them all" in note
    # The scores are the head's, as with the whole grid.
    ranked = [c.box for c in result.candidates]
    np.testing.assert_allclose(
        [c.score for c in result.candidates], head_scores(image, ranked), atol=1e-5
    )


def test_narrow_none_ranks_the_whole_grid_in_one_pass_and_says_nothing_of_narrowing():
    from cropper.scoring.scorer import EMBED_BATCH

    image = ramp_photo()
    embedder = RampEmbedder()
    result = baseline(embedder, narrow=None).crop(image)
    grid = grid_candidates(image.size)
    # One pass over the grid, its crops cut a batch at a time.
    assert sum(embedder.batches) == len(grid) and max(embedder.batches) <= EMBED_BATCH
    assert len(result.candidates) == len(grid)
    assert not any(n.startswith("ranked") for n in result.notes)
    assert result.box == grid[int(np.argmax(head_scores(image, grid)))]


@pytest.mark.parametrize("narrow", [87, 90, 500])
def test_a_budget_as_large_as_the_grid_chooses_what_the_whole_grid_chooses(narrow):
    image = synthetic_photo(3, (640, 480))
    whole = baseline(narrow=None).crop(image)
    embedder = RampEmbedder()
    narrowed = baseline(embedder, narrow=narrow).crop(image)
    assert sum(embedder.batches) == 87  # every grid crop, a batch at a time
    assert narrowed.box == whole.box and narrowed.score == whole.score
    assert narrowed.notes == whole.notes


def test_the_narrowed_choice_is_the_grids_when_the_head_likes_one_region():
    # The ramp head's score rises smoothly to the bottom right: the search climbs there.
    image = ramp_photo()
    assert baseline().crop(image).box == baseline(narrow=None).crop(image).box


@pytest.mark.parametrize("narrow", [0, -3, 1.5, True, "16"])
def test_narrow_is_checked(narrow):
    with pytest.raises(ConfigError, match="narrow must be"):
        baseline(narrow=narrow)
    assert check_narrow(None) is None and check_narrow(1) == 1


def test_the_budget_goes_to_crops_the_request_allows():
    image = ramp_photo()
    keep = Box(0.15, 0.15, 0.2, 0.2)  # the head prefers the bottom right: keep pulls up left
    result = baseline().crop(image, keep=[keep])
    holding = [b for b in grid_candidates(image.size) if b.contains(0.15, 0.15)]
    assert len(holding) > NARROW == len(result.candidates)
    assert all(c.box.contains(0.15, 0.15) for c in result.candidates)
    assert not any("broke the request" in n for n in result.notes)


def test_the_search_climbs_the_score_taken_off_for_avoided_regions():
    image = ramp_photo()
    avoid = Box(0.7, 0.7, 1.0, 1.0)  # where the head would go
    result = baseline().crop(image, avoid=[avoid])
    whole = baseline(narrow=None).crop(image, avoid=[avoid])
    assert result.box == whole.box
    assert all("avoid" in c.terms for c in result.candidates)


def test_subject_and_aspect_candidates_are_narrowed_too():
    image = ramp_photo()
    embedder = RampEmbedder()
    result = baseline(embedder).crop(image, "aspect", ratio="1:1")
    assert sum(embedder.batches) == NARROW and "candidate crops" in " ".join(result.notes)
    result = baseline().crop(image, "subject", subject=(0.5, 0.5))
    assert all(c.box.contains(0.5, 0.5) for c in result.candidates)


def test_without_an_embedder_nothing_is_narrowed():
    result = HeadGridCrop(Scorer(None, None)).crop(ramp_photo())
    assert len(result.candidates) == len(grid_candidates((600, 400)))


# -- the scoring copy ------------------------------------------------------------------------


def test_a_large_photo_is_embedded_from_a_reduced_copy_with_every_crop_at_least_224():
    photo = synthetic_photo(1, (4000, 3000))
    embedder = SizeEmbedder()
    result = baseline(embedder, narrow=None).crop(photo)
    assert len(embedder.sizes) == 87
    assert all(224 <= min(size) < 2 * 224 for size in embedder.sizes)
    assert result.photo.size == (4000, 3000)  # the result is the full photo's
    assert result.box in grid_candidates((4000, 3000))


def test_scoring_copy_reduces_by_the_largest_whole_factor():
    photo = Image.new("RGB", (4000, 3000))
    boxes = grid_candidates(photo.size)
    copy = scoring_copy(photo, boxes, 224)
    short = min(min(b.width * 4000, b.height * 3000) for b in boxes)  # 2/3 of 3000 px
    assert short == 2000 and copy.size == (500, 375)  # reduced 8 times: 250 px at least
    assert scoring_copy(photo, boxes, 1300) is photo  # no whole factor leaves 1300 px
    assert scoring_copy(Image.new("RGB", (1024, 768)), boxes, 224).size == (512, 384)
    assert scoring_copy(photo, [], 224) is photo


def test_scoring_side_is_the_embedders_input_at_least_224():
    class Big:
        preprocess_info = {"image_size": [336, 336]}

    class Small:
        preprocess_info = {"image_size": 32}

    assert scoring_side(Big()) == 336
    assert scoring_side(Small()) == 224
    assert scoring_side(RampEmbedder()) == 224
    assert scoring_side(None) == 224


# -- the cheap pass and the search -----------------------------------------------------------


def test_cheap_scores_prefer_crops_that_keep_the_salient_square():
    photo = salient_square()
    sal = saliency_map(photo)
    boxes = [Box(0.3, 0.3, 1.0, 1.0), Box(0.0, 0.0, 0.6, 0.6)]  # holds the square; misses it
    holds, misses = cheap_scores(sal, boxes)
    assert 0 <= misses < holds <= 1
    assert cheap_scores(sal, []).shape == (0,)


def test_composition_is_one_when_the_salient_centroid_sits_on_a_power_point():
    sal = np.zeros((30, 30))
    sal[9, 9] = 1.0  # centroid (0.3167, 0.3167)
    rows = np.array([[0.0, 0.0, 0.95, 0.95], [0.3, 0.3, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    on_third, in_corner, empty = composition_scores(sal, rows)
    assert on_third == pytest.approx(1.0, abs=1e-6)
    assert 0 <= in_corner < 0.2 and empty == 0.0


def test_spread_keeps_seeds_apart_then_fills_with_the_best():
    boxes = grid_candidates((640, 480))
    rows = np.array([b.as_array() for b in boxes])
    ious = iou_matrix(rows, rows)
    seeds = spread(range(len(boxes)), ious, 6, limit=0.75)
    assert len(seeds) == 6
    assert all(ious[a, b] < 0.75 for a in seeds for b in seeds if a != b)
    assert spread([0, 1, 2], np.ones((3, 3)), 2, limit=0.5) == [0, 1]  # none apart: the best


def test_search_finds_the_peak_of_a_smooth_score_from_afar():
    boxes = grid_candidates((1024, 768))
    rows = np.array([b.as_array() for b in boxes])
    ious = iou_matrix(rows, rows)
    cheap = np.array([b.area for b in boxes])
    found = 0
    for target in range(len(boxes)):
        calls: list[int] = []

        def rank(indices, target=target, calls=calls):
            calls.append(len(indices))
            return ious[target, indices]

        scores = search(boxes, cheap, rank)
        assert len(scores) == sum(calls) == NARROW and calls[0] == SEEDS
        found += max(scores, key=scores.get) == target
    # A score peaked at any one crop: the search reaches the peak from its seeds for 84 of 87.
    assert found >= 80


def test_search_ranks_everything_in_one_call_when_the_budget_allows():
    boxes = grid_candidates((640, 480))[:10]
    calls = []
    scores = search(boxes, np.zeros(10), lambda idx: (calls.append(idx), [0.5] * len(idx))[1])
    assert calls == [list(range(10))] and set(scores) == set(range(10))
    with pytest.raises(ConfigError, match="cheap scores"):
        search(grid_candidates((640, 480)), np.zeros(3), lambda idx: [0.0] * len(idx))


def test_constants_hold_together():
    assert 1 <= narrowing.SEEDS < narrowing.NARROW and narrowing.ROUNDS >= 1
    assert sum(narrowing.CHEAP_WEIGHTS.values()) > 0
