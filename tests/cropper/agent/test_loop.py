"""The loop's logic (rounds, retry, fallback, selection rules) with a scripted VLM.

The scripted VLM only stands in for the model's replies; every other part is the
real one. Backends are tested against real models and servers elsewhere.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cropper import ConfigError, Cropper
from cropper.core.boxes import Box
from cropper.core.messages import ImagePart, conversation_text
from cropper.testing.scripted import ScriptedVLM, crops_reply


def crops(*boxes: tuple[int, int, int, int]) -> str:
    return crops_reply(*boxes)


@pytest.fixture
def photo() -> Image.Image:
    return Image.new("RGB", (640, 480), (90, 120, 150))


def make(script, **settings) -> tuple[Cropper, ScriptedVLM]:
    vlm = ScriptedVLM(script)
    # No CLIP and no head: scores are the area term alone, so the tests know the ranking.
    return Cropper(vlm=vlm, clip=None, head=None, index=None, **settings), vlm


def test_rounds_follow_the_paper_defaults(photo):
    cropper, vlm = make(lambda conv, s: [crops((100, 100, 900, 900))] * s.n)
    result = cropper.crop(photo, task="free")
    assert [r.stage for r in result.rounds] == ["propose", "refine", "refine"]
    assert len(vlm.calls) == 3
    sampling = vlm.calls[0][1]
    assert (sampling.n, sampling.temperature) == (1, 0.05)
    assert sampling.json_schema["properties"]["crops"]["maxItems"] == 6


def test_free_form_selects_from_the_last_round_only(photo):
    script = [
        [crops((0, 0, 1000, 1000))],
        [crops((50, 50, 950, 950))],
        [crops((100, 100, 900, 900), (200, 200, 800, 800))],
    ]
    cropper, _ = make(script, crops=1)
    result = cropper.crop(photo, task="free")
    # The whole photo scored highest (area) but came in round 0: free-form picks from the last.
    assert list(result.box.as_array()) == pytest.approx([0.1, 0.1, 0.9, 0.9])
    assert max(c.score for c in result.candidates) > result.score
    assert {c.round for c in result.candidates} == {0, 1, 2}


def test_aspect_selects_from_all_rounds_with_exact_ratio(photo):
    script = [
        [crops((0, 0, 1000, 1000))],
        [crops((300, 300, 600, 600))],
        [crops((400, 400, 500, 500))],
    ]
    cropper, _ = make(script, crops=1)
    result = cropper.crop(photo, task="aspect", ratio="16:9")
    assert result.candidates[0].round == 0
    assert result.box == result.candidates[0].box  # the best of all rounds
    for c in result.candidates:
        left, top, right, bottom = c.box.to_pixels(photo.size)
        assert abs((right - left) - (bottom - top) * 16 / 9) <= 16 / 9 * 0.5 + 1e-6
    assert result.pixels[2] - result.pixels[0] == 640  # the whole width: the largest 16:9


def test_a_garbage_round_is_retried_once(photo):
    script = [
        ["I cannot see any photo."],
        [crops((100, 100, 900, 900))],
        [crops((100, 100, 800, 800))],
        [crops((100, 100, 700, 700))],
    ]
    cropper, vlm = make(script, crops=1, seed=5)
    result = cropper.crop(photo, task="free")
    assert len(vlm.calls) == 4
    first = result.rounds[0]
    assert len(first.replies) == 2 and "no valid box" in first.notes[0]
    assert all(c.source == "vlm" for c in result.candidates)
    assert [call[1].seed for call in vlm.calls[:2]] == [5, 6]  # a retry draws anew


@pytest.mark.parametrize(
    ("task", "ratio", "expected"),
    [
        ("free", None, "the whole photo"),
        ("aspect", "1:1", "the largest centred crop"),
    ],
)
def test_no_valid_box_falls_back_without_raising(photo, task, ratio, expected):
    cropper, vlm = make(lambda conv, s: ["nothing useful"] * s.n, refine_rounds=1)
    result = cropper.crop(photo, task=task, ratio=ratio)
    assert len(vlm.calls) == 4  # two rounds, each tried twice
    assert expected in result.rounds[0].notes[-1]
    assert all(c.source == "fallback" for c in result.candidates)
    if task == "aspect":
        assert result.pixels == (80, 0, 560, 480)
    else:
        assert result.pixels == (0, 0, 640, 480)
        assert "and refine round 1 gave none either" in result.rounds[1].notes[-1]


def test_refine_prompt_keeps_the_propose_prompt_as_its_prefix(photo):
    cropper, vlm = make(
        lambda conv, s: [crops((100, 100, 900, 900), (0, 0, 500, 500))] * s.n, refine_rounds=1
    )
    result = cropper.crop(photo, task="free")
    propose, refine = (conversation_text(r.prompt) for r in result.rounds)
    head = propose.split("Propose 6 different crops")[0]
    assert refine.startswith(head)
    assert "Earlier crops of this photo" in refine and "Earlier crops" not in propose
    # Each earlier candidate is shown as its own crop image, after the query photo.
    refine_images = [
        p for m in result.rounds[1].prompt for p in m.parts if isinstance(p, ImagePart)
    ]
    assert len(refine_images) == 1 + len(result.rounds[0].candidates)
    assert refine_images[1].image.size[0] <= cropper.config.candidate_side


def test_subject_point_goes_into_the_prompt_without_grounding(photo):
    cropper, vlm = make(lambda conv, s: [crops((300, 300, 700, 700))] * s.n, refine_rounds=0)
    result = cropper.crop(photo, task="subject", subject=(0.5, 0.25))
    assert [r.stage for r in result.rounds] == ["propose"]
    assert "centred at (500, 250)" in result.rounds[0].prompt_text
    assert result.subject.source == "point"


@pytest.mark.parametrize(("subject", "source"), [("the red kite", "text"), (None, "auto")])
def test_subject_phrase_or_none_is_grounded_by_the_vlm(photo, subject, source):
    def script(conv, sampling):
        if "box" in sampling.json_schema["properties"]:
            return [json.dumps({"box": [100, 200, 300, 400]})]
        return [crops((50, 100, 400, 500))] * sampling.n

    cropper, vlm = make(script, refine_rounds=0)
    result = cropper.crop(photo, task="subject", subject=subject)
    assert [r.stage for r in result.rounds] == ["ground", "propose"]
    assert result.subject.source == source
    assert result.subject.point == pytest.approx((0.2, 0.3))
    assert vlm.calls[0][1].temperature == 0.0
    if subject:
        assert "the red kite" in result.rounds[0].prompt_text


def test_ungroundable_subject_falls_back_to_the_centre(photo):
    cropper, _ = make(lambda conv, s: ["no idea"] * s.n, refine_rounds=0)
    result = cropper.crop(photo, task="subject")
    assert result.subject.source == "fallback" and result.subject.point == (0.5, 0.5)
    assert "centre" in result.rounds[0].notes[0]


def test_per_call_settings_override_the_defaults(photo):
    cropper, vlm = make(lambda conv, s: ['{"crops": [[0.1, 0.1, 0.9, 0.9]]}'] * s.n)
    result = cropper.crop(photo, task="free", refine_rounds=0, crops=3, samples=2, coords="norm1")
    assert len(result.rounds) == 1 and vlm.calls[0][1].n == 2
    assert vlm.calls[0][1].json_schema["properties"]["crops"]["maxItems"] == 3
    assert len(result.rounds[0].replies) == 2
    assert vlm.calls[0][1].json_schema["properties"]["crops"]["items"]["items"]["type"] == "number"


def test_result_exposes_pixels_image_and_json(photo, tmp_path):
    path = tmp_path / "p.png"
    photo.save(path)
    cropper, _ = make(lambda conv, s: [crops((250, 0, 750, 1000))] * s.n, refine_rounds=0)
    result = cropper.crop(path)
    assert result.pixels == (160, 0, 480, 480)
    assert result.image.size == (320, 480)
    assert result.to_json() == {
        "image": str(path),
        "task": "free",
        "box": [160, 0, 480, 480],
        "score": pytest.approx(result.score, abs=1e-6),
        "focus": [0.5, 0.5],  # a flat photo: nothing stands out, the crop's centre
        "fallback": None,
        "notes": [
            "scored with area: no embedder, so no aesthetic, content or knowledge term (they "
            "need image embeddings; pass clip=)"
        ],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "zoom"}, "unknown task"),
        ({"task": "aspect"}, "needs ratio="),
        ({"task": "aspect", "ratio": "wide"}, "not valid"),
        ({"task": "free", "ratio": "1:1"}, "applies to task='aspect'"),
        ({"task": "free", "subject": (0.5, 0.5)}, "applies to task='subject'"),
        ({"task": "subject", "subject": (2.0, 0.5)}, "normalized"),
        ({"task": "free", "bogus": 1}, "unknown setting"),
    ],
)
def test_bad_arguments_get_a_clear_error(photo, kwargs, message):
    cropper, _ = make(lambda conv, s: [crops((0, 0, 10, 10))])
    with pytest.raises(ConfigError, match=message):
        cropper.crop(photo, **kwargs)


class CountingEmbedder:
    name, dim = "counting", 4

    def __init__(self):
        self.batches = []

    def embed(self, images):
        import numpy as np

        self.batches.append(len(images))
        return np.tile(np.array([[1.0, 0, 0, 0]], dtype=np.float32), (len(images), 1))


@pytest.mark.parametrize(
    ("task", "ratio", "weights", "batches"),
    [
        ("free", None, "area=1", []),  # no bank, area alone: no embedding at all
        # No head: the content term stands in, so the query once, then the round's crop.
        ("free", None, None, [1, 1]),
        ("aspect", "1:1", None, [1, 1]),  # content: the query once, then the round's one crop
    ],
)
def test_the_query_is_embedded_only_when_something_uses_it(photo, task, ratio, weights, batches):
    embedder = CountingEmbedder()
    vlm = ScriptedVLM(lambda conv, s: [crops((100, 100, 900, 900))] * s.n)
    cropper = Cropper(
        vlm=vlm, clip=embedder, head=None, index=None, refine_rounds=0, score_weights=weights
    )
    cropper.crop(photo, task=task, ratio=ratio)
    assert embedder.batches == batches


# -- no VLM: the aesthetic head over GAICD's grid --------------------------------------------


@pytest.mark.parametrize("vlm", [None, "none", " None "])
def test_no_vlm_and_no_embedder_crops_by_saliency(photo, vlm):
    from cropper.agent.grid import grid_candidates

    with Cropper(vlm=vlm, clip=None, head=None, index=None) as cropper:
        assert cropper.vlm is None
        result = cropper.crop(photo)
    assert result.rounds == () and {c.source for c in result.candidates} == {"saliency"}
    assert set(grid_candidates(photo.size)) <= {c.box for c in result.candidates}
    # Ranked by what stands out, not by area: the whole photo is not simply the winner.
    assert {"saliency", "cut"} == set(result.candidates[0].terms)


def test_no_vlm_from_the_environment(photo, monkeypatch):
    monkeypatch.setenv("CROPPER_VLM", "none")
    cropper = Cropper(clip=None, head=None, index=None)
    assert cropper.vlm is None
    left, top, right, bottom = cropper.crop(photo, task="aspect", ratio="1:1").pixels
    assert right - left == bottom - top


def test_no_vlm_leaves_the_bank_unloaded(photo, tmp_path):
    cropper = Cropper(vlm=None, clip=None, head=None, index=tmp_path / "no-such-bank")
    assert cropper.index is None
    assert cropper.crop(photo, task="subject", subject=(0.5, 0.5)).box.contains(0.5, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "zoom"}, "unknown task"),
        ({"task": "aspect"}, "needs ratio="),
        ({"task": "free", "subject": (0.5, 0.5)}, "applies to task='subject'"),
        ({"task": "subject", "subject": "the red kite"}, "needs a VLM"),
        ({"task": "free", "bogus": 1}, "unknown setting"),
    ],
)
def test_no_vlm_keeps_the_argument_errors(photo, kwargs, message):
    cropper = Cropper(vlm=None, clip=None, head=None, index=None)
    with pytest.raises(ConfigError, match=message):
        cropper.crop(photo, **kwargs)


@pytest.fixture(scope="module")
def tiny_head_file(tmp_path_factory):
    from cropper.scoring.head import random_head, save_head

    return save_head(random_head(32, seed=3), tmp_path_factory.mktemp("head") / "gaicd.safetensors")


@pytest.mark.parametrize(("task", "kwargs"), [("free", {}), ("aspect", {"ratio": "4:3"})])
def test_no_vlm_crops_a_real_gaicd_photo(gaicd_photo, tiny_clip, tiny_head_file, task, kwargs):
    from cropper.agent.grid import grid_candidates, ratio_candidates

    cropper = Cropper(vlm=None, clip=tiny_clip, head=str(tiny_head_file))
    result = cropper.crop(gaicd_photo, task=task, **kwargs)
    size = result.size
    pool = grid_candidates(size) if task == "free" else ratio_candidates(size, 4 / 3)
    # The head ranks 16 of them (NARROW): a cheap pass picks which, and the notes say so.
    assert {c.box for c in result.candidates} <= set(pool)
    assert len(result.candidates) == min(16, len(pool))
    assert any(f"ranked 16 of the {len(pool)}" in n for n in result.notes)
    assert result.box in pool and result.source == str(gaicd_photo)
    assert set(result.candidates[0].terms) == {"aesthetic"}
    assert len({round(c.score, 9) for c in result.candidates}) > 1  # the head tells them apart


def test_cli_crops_with_no_vlm(gaicd_photo, tiny_clip, tiny_head_file, capsys):
    from cropper.cli.main import main

    argv = ["crop", str(gaicd_photo), "--vlm", "none", "--clip", tiny_clip]
    assert main([*argv, "--head", str(tiny_head_file), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    with Image.open(gaicd_photo) as image:
        w, h = image.size
    left, top, right, bottom = line["box"]
    assert line["image"] == str(gaicd_photo) and line["task"] == "free"
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert (right - left) * (bottom - top) >= 0.45 * w * h  # a grid crop: half the photo or more


def test_score_boxes_gives_the_scores_the_loop_ranks_candidates_by(photo):
    boxes = [Box(0.1, 0.1, 0.9, 0.9), Box(0.0, 0.0, 0.5, 0.5), Box.whole()]
    cropper, vlm = make(lambda conv, s: [crops((100, 100, 900, 900))] * s.n)
    # No CLIP, no head: the area term alone, as the candidates of a crop are scored.
    assert cropper.score_boxes(photo, boxes) == pytest.approx([0.64, 0.25, 1.0])
    result = cropper.crop(photo)
    assert cropper.score_boxes(photo, [result.box]) == pytest.approx([result.score])
    calls = len(vlm.calls)
    cropper.score_boxes(photo, boxes)
    assert len(vlm.calls) == calls  # scoring asks the VLM nothing
    # Without a VLM, the baseline it crops with scores: saliency, with no embedder either.
    from cropper.agent.baselines import SaliencyCrop

    alone = Cropper(vlm=None, clip=None, head=None, index=None)
    assert alone.score_boxes(photo, boxes) == SaliencyCrop().score_boxes(photo, boxes)
