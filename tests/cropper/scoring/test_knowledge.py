"""The knowledge term: crops nearer the good prompts than the bad ones score higher."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cropper.agent.prompts import default_prompt_dir
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.scoring.knowledge import KnowledgePrompts, KnowledgeTerm, load_knowledge_prompts
from cropper.scoring.scorer import Scorer, Weights

LEFT, RIGHT = Box(0.0, 0.0, 0.5, 1.0), Box(0.5, 0.0, 1.0, 1.0)
# A good prompt reads "warm" (red), a bad one "cold" (blue): the planted signal.
PLANTED = KnowledgePrompts(good=("a warm photo", "warm light"), bad=("a cold photo",))


class ToyClip:
    """Images as their unit mean colour; texts mentioning warm as red, cold as blue."""

    name = "toy:clip"
    dim = 3

    def embed(self, images):
        rows = [np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0) + 1e-3 for im in images]
        return np.array([r / np.linalg.norm(r) for r in rows], dtype=np.float32)

    def embed_text(self, texts):
        table = {"warm": [1.0, 0.1, 0.0], "cold": [0.0, 0.1, 1.0]}
        rows = [next(v for k, v in table.items() if k in t) for t in texts]
        return np.array([np.array(r) / np.linalg.norm(r) for r in rows], dtype=np.float32)


class ImageOnly:
    name = "toy:images"
    dim = 3

    def embed(self, images):
        return np.ones((len(images), 3), np.float32) / math.sqrt(3)


def red_blue_photo() -> Image.Image:
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40, 0] = 230
    pixels[:, 40:, 2] = 230
    return Image.fromarray(pixels)


def knowledge_only(prompts: KnowledgePrompts) -> Scorer:
    term = KnowledgeTerm(ToyClip(), prompts)
    return Scorer(ToyClip(), weights={"free": Weights(knowledge=1)}, knowledge=term)


def test_the_planted_signal_ranks_crops():
    red, blue = knowledge_only(PLANTED).score(red_blue_photo(), [LEFT, RIGHT], "free")
    assert set(red.terms) == {"knowledge"}
    assert red.total > 0.99 and blue.total < 0.01  # sigmoid(100 * margin), margin ~ +-1
    swapped = KnowledgePrompts(good=PLANTED.bad, bad=PLANTED.good)
    red2, blue2 = knowledge_only(swapped).score(red_blue_photo(), [LEFT, RIGHT], "free")
    assert red2.total < blue2.total


def test_in_combination_it_is_one_weighted_term_of_several():
    knowledge = KnowledgeTerm(ToyClip(), PLANTED)
    weights = {"free": Weights(area=1, knowledge=3)}
    scorer = Scorer(ToyClip(), weights=weights, knowledge=knowledge)
    small_red = Box(0.0, 0.0, 0.25, 1.0)
    red, blue = scorer.score(red_blue_photo(), [small_red, RIGHT], "free")
    for s in (red, blue):
        assert s.total == pytest.approx((s.terms["area"] + 3 * s.terms["knowledge"]) / 4)
    assert red.total > blue.total  # knowledge outweighs the larger area of the blue half


def test_equal_similarity_is_one_half():
    term = KnowledgeTerm(ToyClip(), PLANTED)
    purple = np.array([[1.0, 0.1, 1.0]]) / np.linalg.norm([1.0, 0.1, 1.0])
    assert term.score(purple)[0] == pytest.approx(0.5, abs=1e-6)


def test_without_prompts_the_term_is_dropped_with_a_note(caplog):
    scorer = Scorer(ToyClip(), weights={"free": Weights(area=1, knowledge=1)})
    [score] = scorer.score(red_blue_photo(), [LEFT], "free")
    assert set(score.terms) == {"area"}
    assert any("no knowledge prompts" in r.getMessage() for r in caplog.records)


def test_an_embedder_without_a_text_encoder_is_refused():
    with pytest.raises(ConfigError, match="needs a text encoder.*toy:images"):
        KnowledgeTerm(ImageOnly(), PLANTED)


def test_the_shipped_prompts_load_without_comments():
    prompts = load_knowledge_prompts(default_prompt_dir() / "knowledge")
    assert len(prompts.good) >= 5 and len(prompts.bad) >= 5
    assert not any(p.startswith("#") or not p for p in prompts.good + prompts.bad)
    assert "a photo with the subject cut off at the edge" in prompts.bad
    assert "a photo with a tilted horizon" in prompts.bad


@pytest.mark.parametrize(
    "good, bad, message",
    [
        (None, "a\n", "good.txt: cannot read"),
        ("# only a comment\n\n", "a\n", "good.txt: no prompts"),
        ("a\n", b"\xff\xfe", "bad.txt: cannot read"),
    ],
)
def test_bad_prompt_files_are_one_clear_error(tmp_path, good, bad, message):
    for name, content in (("good.txt", good), ("bad.txt", bad)):
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif content is not None:
            (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_knowledge_prompts(tmp_path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("aesthetic=1,area=1", Weights(aesthetic=1, area=1)),
        ("knowledge", Weights(knowledge=1)),
        (" knowledge=0.5 , content=2 ", Weights(knowledge=0.5, content=2)),
        ("area=0", Weights()),
    ],
)
def test_weights_parse(text, expected):
    assert Weights.parse(text) == expected


@pytest.mark.parametrize("text", ["beauty=1", "area=-1", "area=x", "area=nan", "=1"])
def test_bad_weights_are_one_clear_error(text):
    with pytest.raises(ConfigError, match="TERM=WEIGHT"):
        Weights.parse(text)


def test_the_cropper_scores_with_the_prompt_folders_knowledge(tmp_path):
    import shutil

    from cropper import Cropper
    from cropper.testing.scripted import ScriptedVLM, crops_reply

    prompts = tmp_path / "prompts"
    shutil.copytree(default_prompt_dir(), prompts)
    (prompts / "knowledge" / "good.txt").write_text("a warm photo\n")
    (prompts / "knowledge" / "bad.txt").write_text("a cold photo\n")
    vlm = ScriptedVLM(lambda c, s: [crops_reply((0, 0, 500, 1000), (500, 0, 1000, 1000))])
    cropper = Cropper(vlm=vlm, clip=ToyClip(), head=None, index=None, prompts=prompts,
                      score_weights={"free": "knowledge=1"})  # fmt: skip
    result = cropper.crop(red_blue_photo(), task="free")
    assert result.box == LEFT  # the warm (red) half
    assert all(set(c.terms) == {"knowledge"} for c in result.candidates)
    # Other tasks keep the paper's weights, and no knowledge term is built without a weight
    # (unless it stands in for a missing aesthetic head).
    assert cropper.scorer.active_weights("aspect") == {"content": 1.0}
    from cropper.scoring.head import random_head

    plain = Cropper(vlm=vlm, clip=ToyClip(), head=random_head(3), index=None)
    assert plain.scorer.knowledge is None
    headless = Cropper(vlm=vlm, clip=ToyClip(), head=None, index=None, prompts=prompts)
    assert headless.scorer.active_weights("free") == {"area": 1.0, "knowledge": 1.0}


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, {}),
        ("knowledge=1", {t: Weights(knowledge=1) for t in ("free", "subject", "aspect")}),
        ({"aspect": {"content": 1, "knowledge": 2}}, {"aspect": Weights(content=1, knowledge=2)}),
        ({"free": Weights(area=1)}, {"free": Weights(area=1)}),
    ],
)
def test_score_weights_for_every_task_or_by_task(spec, expected):
    from cropper.scoring.scorer import weights_by_task

    assert weights_by_task(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [({"portrait": "area=1"}, "unknown task"), (3, "score_weights must be"), ({"free": 3}, "3")],
)
def test_bad_score_weights_are_one_clear_error(spec, message):
    from cropper.scoring.scorer import weights_by_task

    with pytest.raises(ConfigError, match=message):
        weights_by_task(spec)
