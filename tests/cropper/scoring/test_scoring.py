from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.scoring.head import AestheticHead, HeadConfig, random_head, save_head
from cropper.scoring.scorer import TASK_WEIGHTS, Score, Scorer, Weights

LEFT, RIGHT, WHOLE = Box(0.0, 0.0, 0.5, 1.0), Box(0.5, 0.0, 1.0, 1.0), Box.whole()


class ToyEmbedder:
    """Embeds an image as its unit mean colour plus a constant; counts its calls."""

    name = "toy:rgb"
    dim = 4

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, images) -> np.ndarray:
        self.calls.append(len(images))
        rows = []
        for image in images:
            rgb = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255
            rows.append(np.append(rgb, 0.2))
        out = np.array(rows)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def red_blue_photo() -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40, 0] = 255
    pixels[:, 40:, 2] = 255
    return Image.fromarray(pixels)


def red_loving_head(embedder: str | None = "toy:rgb") -> AestheticHead:
    """Raw score = the red component of the unit embedding: the planted preference."""
    config = HeadConfig(dims=(4, 1), output_range=(0.0, 1.0), embedder=embedder)
    weights = {"linear0.weight": torch.tensor([[1.0, 0, 0, 0]]), "linear0.bias": torch.zeros(1)}
    return AestheticHead(config, weights)


RED_UNIT = 1 / np.sqrt(1 + 0.2**2)  # red component of the red half's unit embedding


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("free", Weights(aesthetic=1, area=1)),
        ("subject", Weights(aesthetic=1, area=1)),
        ("aspect", Weights(content=1)),
    ],
)
def test_paper_task_weights(task: str, expected: Weights):
    assert TASK_WEIGHTS[task] == expected


@pytest.mark.parametrize(
    ("task", "weights", "expected_terms", "total"),
    [
        # total = sum w * term / sum w over the terms in play
        ("free", None, {"aesthetic", "area"}, lambda t: (t["aesthetic"] + t["area"]) / 2),
        ("subject", None, {"aesthetic", "area"}, lambda t: (t["aesthetic"] + t["area"]) / 2),
        ("aspect", None, {"content"}, lambda t: t["content"]),
        (
            "free",
            {"free": Weights(aesthetic=2, area=1, content=1)},
            {"aesthetic", "area", "content"},
            lambda t: (2 * t["aesthetic"] + t["area"] + t["content"]) / 4,
        ),
        ("mine", {"mine": Weights(area=3)}, {"area"}, lambda t: t["area"]),
    ],
)
def test_total_is_the_weighted_mean_of_the_terms(task, weights, expected_terms, total):
    scorer = Scorer(ToyEmbedder(), red_loving_head(), weights)
    boxes = [LEFT, Box(0.1, 0.2, 0.9, 0.7), WHOLE]
    scores = scorer.score(red_blue_photo(), boxes, task)
    assert len(scores) == len(boxes)
    for score in scores:
        assert isinstance(score, Score)
        assert set(score.terms) == expected_terms
        assert all(0.0 <= v <= 1.0 for v in score.terms.values())
        assert score.total == pytest.approx(total(score.terms))
    if "area" in expected_terms:
        assert [s.terms["area"] for s in scores] == pytest.approx([0.5, 0.4, 1.0])


def test_the_head_prefers_the_planted_crop():
    scorer = Scorer(ToyEmbedder(), red_loving_head())
    left, right = scorer.score(red_blue_photo(), [LEFT, RIGHT], "free")
    assert left.terms["aesthetic"] == pytest.approx(RED_UNIT, abs=1e-5)
    assert right.terms["aesthetic"] == pytest.approx(0.0, abs=1e-5)
    assert left.terms["area"] == right.terms["area"] == pytest.approx(0.5)
    assert left.total > right.total


def test_content_is_one_for_the_whole_photo_and_lower_for_a_part():
    scorer = Scorer(ToyEmbedder())
    whole, left = scorer.score(red_blue_photo(), [WHOLE, LEFT], "aspect")
    assert whole.terms == {"content": pytest.approx(1.0, abs=1e-6)}
    assert whole.total == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= left.terms["content"] < 0.9


def test_content_is_clipped_at_zero():
    class Opposite(ToyEmbedder):
        def embed(self, images):
            self.calls.append(len(images))
            return np.array([[-1.0, 0, 0, 0]] * (len(images) - 1) + [[1.0, 0, 0, 0]], np.float32)

    (score,) = Scorer(Opposite()).score(red_blue_photo(), [LEFT], "aspect")
    assert score.terms["content"] == 0.0


@pytest.mark.parametrize(
    ("task", "given_whole", "expected_calls"),
    [
        ("free", False, [3]),  # crops only
        ("aspect", False, [4]),  # crops + the whole photo, in the same call
        ("aspect", True, [3]),  # the whole photo's embedding was given
    ],
)
def test_one_embed_call_per_score(task: str, given_whole: bool, expected_calls: list[int]):
    embedder = ToyEmbedder()
    scorer = Scorer(embedder, red_loving_head())
    photo = red_blue_photo()
    whole = embedder.embed([photo])[0] if given_whole else None
    embedder.calls.clear()
    scores = scorer.score(photo, [LEFT, RIGHT, WHOLE], task, image_embedding=whole)
    assert embedder.calls == expected_calls
    if task == "aspect":
        assert scores[2].terms["content"] == pytest.approx(1.0, abs=1e-6)


def test_area_only_tasks_and_no_boxes_embed_nothing():
    embedder = ToyEmbedder()
    scorer = Scorer(embedder, red_loving_head(), {"area": Weights(area=1)})
    assert scorer.score(red_blue_photo(), [LEFT], "area")[0].total == pytest.approx(0.5)
    assert scorer.score(red_blue_photo(), [], "free") == []
    assert embedder.calls == []


def test_missing_head_gives_its_weight_to_content_logs_once_and_says_so(
    caplog: pytest.LogCaptureFixture,
):
    embedder = ToyEmbedder()
    scorer = Scorer(embedder)
    with caplog.at_level(logging.WARNING, logger="cropper.scoring.scorer"):
        first = scorer.score(red_blue_photo(), [LEFT, WHOLE], "free")
        second = scorer.score(red_blue_photo(), [RIGHT], "subject")
    notes = [r.getMessage() for r in caplog.records if "no aesthetic head" in r.getMessage()]
    assert len(notes) == 1 and "goes to the content term" in notes[0]
    assert all(set(s.terms) == {"area", "content"} for s in first + second)
    assert first[1].terms["content"] == pytest.approx(1.0, abs=1e-6)  # the whole photo itself
    assert scorer.scoring_note("free").startswith("scored with area, content: no aesthetic head")
    assert scorer.scoring_note("aspect") is None  # content alone, as asked


def test_missing_head_gives_its_weight_to_knowledge_when_there_is_one():
    from cropper.scoring.knowledge import KnowledgePrompts, KnowledgeTerm

    class WarmClip(ToyEmbedder):
        def embed_text(self, texts):
            return np.array([[1.0, 0, 0, 0.2] if "warm" in t else [0, 0, 1.0, 0.2] for t in texts])

    knowledge = KnowledgeTerm(WarmClip(), KnowledgePrompts(good=("warm",), bad=("cold",)))
    scorer = Scorer(WarmClip(), knowledge=knowledge)
    mostly_red = Box(0.0, 0.0, 0.6, 1.0)
    red, blue, whole = scorer.score(red_blue_photo(), [mostly_red, RIGHT, WHOLE], "free")
    assert set(red.terms) == {"area", "knowledge"}
    # Not area alone: a mostly red crop beats the whole photo, which is larger.
    assert red.total > whole.total > blue.total
    assert "goes to the knowledge term" in scorer.scoring_note("free")


def test_missing_embedder_falls_back_to_area_once(caplog: pytest.LogCaptureFixture):
    scorer = Scorer(head=random_head(4))
    with caplog.at_level(logging.WARNING, logger="cropper.scoring.scorer"):
        for _ in range(2):
            (free,) = scorer.score(red_blue_photo(), [LEFT], "free")
            (aspect,) = scorer.score(red_blue_photo(), [LEFT], "aspect")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no embedder" in m for m in messages) == 1
    assert sum("area only" in m and "'aspect'" in m for m in messages) == 1
    assert free == aspect == Score(total=0.5, terms={"area": 0.5})


def test_head_trained_on_another_embedder_is_refused():
    with pytest.raises(ConfigError, match="ViT-L-14:openai"):
        Scorer(ToyEmbedder(), red_loving_head(embedder="ViT-L-14:openai"))


def test_head_of_another_dim_is_refused():
    with pytest.raises(ConfigError, match="8-d"):
        Scorer(ToyEmbedder(), random_head(8))


def test_head_without_a_card_embedder_is_accepted():
    scorer = Scorer(ToyEmbedder(), red_loving_head(embedder=None))
    assert scorer.score(red_blue_photo(), [LEFT], "free")[0].terms["aesthetic"] > 0.9


def test_head_given_as_a_path(tmp_path: Path):
    path = save_head(red_loving_head(), tmp_path / "red.safetensors")
    scorer = Scorer(ToyEmbedder(), str(path))
    (left,) = scorer.score(red_blue_photo(), [LEFT], "free")
    assert left.terms["aesthetic"] == pytest.approx(RED_UNIT, abs=1e-5)


def test_unknown_task_and_bad_inputs():
    scorer = Scorer(ToyEmbedder())
    with pytest.raises(ConfigError, match="'free'"):
        scorer.score(red_blue_photo(), [LEFT], "nope")
    with pytest.raises(ConfigError, match="4 values"):
        scorer.score(red_blue_photo(), [LEFT], "aspect", image_embedding=np.zeros(3))
    with pytest.raises(ConfigError, match=">= 0"):
        Weights(area=-1)


def test_a_crop_is_cut_at_the_size_clips_own_resize_gives_it(tmp_path: Path):
    """The embedder's resize then leaves it as it is, and its pixels are bicubic's, near enough."""
    from cropper.scoring.scorer import input_side, scoring_crop
    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_tiny_clip
    from retrieval import ClipEmbedder

    clip = ClipEmbedder(build_tiny_clip(tmp_path / "clip"))
    side = input_side(clip)
    assert side == 32  # the tiny CLIP's input: bicubic, shortest side
    resize = clip.transform.transforms[0]  # open_clip's Resize(side)
    photo = synthetic_photo(4, size=(1600, 1200))
    for box in (Box(0.1, 0.05, 0.8, 0.9), Box(0.3, 0.0, 0.5, 1.0), Box(0, 0, 1, 0.02), WHOLE):
        crop = scoring_crop(photo, box, side)
        region = photo.crop(box.to_pixels(photo.size))
        if min(region.size) <= side:  # already small: cut as without a known input
            assert crop.size == scoring_crop(photo, box, None).size == (1024, 15)
            continue
        assert min(crop.size) == side
        assert resize(crop).size == crop.size == resize(region).size
        bicubic = np.asarray(resize(region), dtype=np.float64)
        error = np.mean((np.asarray(crop, dtype=np.float64) - bicubic) ** 2)
        assert 10 * np.log10(255**2 / error) > 30  # PSNR, dB


def test_without_a_known_input_a_crop_is_at_most_1024_a_side():
    from cropper.scoring.scorer import SCORING_SIDE, input_side, scoring_crop

    assert input_side(ToyEmbedder()) is None
    big = Image.new("RGB", (3000, 2000), "grey")
    assert scoring_crop(big, WHOLE, None).size == (SCORING_SIDE, 683)
    assert scoring_crop(big, LEFT, None).size == (768, SCORING_SIDE)
