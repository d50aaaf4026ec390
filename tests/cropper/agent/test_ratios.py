"""Several ratios in one call: one crop each, what they share done once, their rounds together.

The scripted VLM stands in for the model's replies only; every other part is the real one.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cropper import Cropper
from cropper.agent.result import CropResult, RatioCrops
from cropper.core.boxes import Box
from cropper.core.errors import VLMError
from cropper.core.messages import conversation_text
from cropper.testing.scripted import ScriptedVLM, crops_reply

RATIOS = ["1:1", "4:5", "16:9", "9:16"]


def photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


class Counting:
    """Counts the model calls the loop makes: VLM batches, embedder passes, bank searches."""

    def __init__(self, script=None):
        self.vlm = ScriptedVLM(
            script or (lambda conv, s: [crops_reply((100, 100, 700, 900))] * s.n)
        )
        self.batches: list[int] = []
        generate = self.vlm.generate

        def batched(conversations, sampling, **kw):
            self.batches.append(len(conversations))
            return generate(conversations, sampling, **kw)

        self.vlm.generate = batched
        self.embeds: list[int] = []
        self.searches = 0
        counter = self

        class Toy:
            name, dim = "toy", 3

            def embed(self, images):
                counter.embeds.append(len(images))
                return np.ones((len(images), 3), np.float32)

        class Bank:
            embedder_name = "toy"

            def search(self, embedding, k):
                counter.searches += 1
                return [
                    SimpleNamespace(
                        image=str(p), size=(300, 300), similarity=0.9 - i / 10, scores=None,
                        crops=(Box(0.1, 0.1, 0.9, 0.9), Box(0.0, 0.2, 1.0, 0.7)), subjects=None,
                    )
                    for i, p in enumerate(self.paths)
                ][:k]  # fmt: skip

        self.bank = Bank()
        self.toy = Toy()


@pytest.fixture
def counting(tmp_path) -> Counting:
    counting = Counting()
    counting.bank.paths = []
    for i in range(3):
        counting.bank.paths.append(tmp_path / f"ex{i}.jpg")
        photo(10 + i).save(counting.bank.paths[-1])
    return counting


def test_each_ratio_gets_its_crop_keyed_as_written_and_shared_work_is_done_once(counting):
    cropper = Cropper(
        vlm=counting.vlm,
        clip=counting.toy,
        head=None,
        index=counting.bank,
        score_weights="content=1",
    )
    result = cropper.crop(photo(), task="aspect", ratio=RATIOS)
    assert isinstance(result, RatioCrops) and list(result) == RATIOS
    for text, ratio in zip(RATIOS, (1, 0.8, 16 / 9, 9 / 16), strict=True):
        crop = result[text]
        assert isinstance(crop, CropResult) and crop.ratio.text == text
        w, h = crop.image.size
        assert abs(w - ratio * h) <= 1 or abs(h - w / ratio) <= 1
        assert crop.box.contains(*crop.focus)
    # The photo is embedded once (the query), the bank searched once; each round's four
    # prompts went to the VLM in one call and their crops to one embedder pass.
    assert counting.searches == 1
    assert counting.batches == [4, 4, 4]
    assert counting.embeds[0] == 1 and len(counting.embeds) == 1 + 3
    # Each ratio's prompt asks for its own ratio and shows the exemplar crops nearest it.
    first_round = [conversation_text(conv) for conv, _ in counting.vlm.calls[:4]]
    for text, prompt in zip(RATIOS, first_round, strict=True):
        assert f"with ratio {text} " in prompt
    with pytest.raises(KeyError, match="no crop of ratio '3:2': the ratios are 1:1, 4:5"):
        result["3:2"]


def test_a_batch_of_photos_with_several_ratios_sends_every_prompt_of_a_round_at_once(counting):
    cropper = Cropper(vlm=counting.vlm, clip=None, head=None, index=None)
    results = cropper.crop_batch([photo(i) for i in range(3)], task="aspect", ratio=RATIOS[:3])
    assert all(isinstance(r, RatioCrops) and list(r) == RATIOS[:3] for r in results)
    assert counting.batches == [9, 9, 9]


def test_the_json_line_holds_every_ratio_under_ratios():
    cropper = Cropper(vlm=Counting().vlm, clip=None, head=None, index=None, refine_rounds=0)
    result = cropper.crop(photo(), task="aspect", ratio=["1:1", "16:9"], size=300)
    line = result.to_json()
    assert set(line) == {"image", "task", "ratios", "fallback", "notes"}
    assert list(line["ratios"]) == ["1:1", "16:9"]
    for text, crop in line["ratios"].items():
        assert crop["box"] == list(result[text].pixels)
        assert crop["score"] == pytest.approx(result[text].score, abs=1e-6)
        assert crop["focus"] == list(result[text].focus)
        assert max(crop["size"]) == 300 and result[text].image.size == tuple(crop["size"])


def test_a_ratio_whose_request_fails_fails_the_photo_naming_the_ratio():
    def script(conversation, sampling):
        if "ratio 16:9" in conversation_text(conversation):
            raise VLMError("the model refused this prompt")
        return [crops_reply((100, 100, 700, 900))] * sampling.n

    cropper = Cropper(vlm=Counting(script).vlm, clip=None, head=None, index=None)
    results = cropper.crop_batch([photo()], task="aspect", ratio=["1:1", "16:9"])
    assert isinstance(results[0], VLMError)
    assert str(results[0]).startswith("ratio 16:9: ")


def test_keep_and_avoid_reach_the_prompt_and_the_scores():
    counting = Counting(
        lambda conv, s: [crops_reply((0, 0, 500, 500), (500, 500, 1000, 1000))] * s.n
    )
    cropper = Cropper(vlm=counting.vlm, clip=None, head=None, index=None, refine_rounds=0)
    keep, avoid = (0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 1.0, 1.0)
    result = cropper.crop(photo(), keep=[keep], avoid=[avoid])
    prompt = conversation_text(counting.vlm.calls[0][0])
    assert "must contain these regions whole: (100, 100, 300, 300)" in prompt
    assert "Keep these regions out of the crops" in prompt and "(600, 600, 1000, 1000)" in prompt
    held = {c.box: c.terms["avoid"] for c in result.candidates}
    assert sorted(held.values()) == pytest.approx([0.0, 1.0])
    # The same area, but the crop holding the avoided region lost a point and lost.
    assert result.box == Box(0.0, 0.0, 0.5, 0.5)
    assert result.keep == (Box(*keep),) and result.avoid == (Box(*avoid),)
    assert all(c.box.x0 <= 0.1 and c.box.y0 <= 0.1 and c.box.x1 >= 0.3 for c in result.candidates)


def test_without_a_vlm_every_ratio_is_cropped_by_the_baseline(tmp_path):
    cropper = Cropper(vlm=None, clip=None, head=None, index=None)
    result = cropper.crop(photo(), task="aspect", ratio=RATIOS, keep=[(0.4, 0.4, 0.6, 0.6)])
    assert list(result) == RATIOS
    for text in RATIOS:
        assert result[text].box.x0 <= 0.4 and result[text].box.x1 >= 0.6
        assert result[text].focus is not None
