"""Every answer honours its request, or says plainly that it fell back and why.

Scripted replies stand for what real VLMs write (slivers, boxes that miss the subject,
empty and null replies, prose where JSON was asked for); every other part is the real loop.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from PIL import Image

from cropper import ConfigError, Cropper, VLMError
from cropper.agent.constraints import Constraints
from cropper.core.boxes import Box
from cropper.core.messages import ImagePart
from cropper.core.tasks import Subject
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.testing.scripted import ScriptedVLM, crops_reply

SIZE = (400, 300)


def photo(width: int = SIZE[0]) -> Image.Image:
    return Image.new("RGB", (width, SIZE[1]), (90, 120, 150))


def make(script, **settings) -> Cropper:
    # No CLIP and no head: scores are the area term alone, so the tests know the ranking.
    return Cropper(vlm=ScriptedVLM(script), clip=None, head=None, index=None, **settings)


def every_crop(result) -> list[Box]:
    return [c.box for c in result.candidates] + [c.box for c in result.top] + [result.box]


# -- thin, empty and subject-less boxes ----------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        crops_reply((100, 500, 189, 513)),  # 36x4 px of 400x300
        crops_reply((250, 250, 300, 287)),  # 20x11 px
        crops_reply((10, 10, 15, 223)),  # 2x64 px
        crops_reply((100, 500, 189, 513), (0, 0, 1000, 1000)),  # a sliver beside a good crop
    ],
)
def test_no_sliver_is_ever_selected_shown_or_fed_back(reply):
    cropper = make(lambda conv, s: [reply] * s.n, top_k=3)
    result = cropper.crop(photo(), task="free")
    constraints = Constraints(SIZE)
    assert all(constraints.check(box) == "" for box in every_crop(result))
    # Fed back: each refine prompt shows the previous round's crops, none a sliver.
    for r in result.rounds[1:]:
        shown = [p.image for m in r.prompt for p in m.parts if isinstance(p, ImagePart)][1:]
        assert shown and all(min(i.size) >= 11 for i in shown)  # min_side 0.1 of 400x300
    repaired = [c for c in result.candidates if c.repair]
    assert repaired and all(c.repair.startswith("grown from") for c in repaired)
    assert any("grown from" in n for n in result.rounds[0].notes)
    assert result.fallback is None


def test_min_side_is_a_setting_per_call():
    cropper = make(lambda conv, s: [crops_reply((100, 100, 300, 300))] * s.n)
    result = cropper.crop(photo(), task="free", min_side=0.5)
    left, top, right, bottom = result.pixels
    assert right - left >= 200 and bottom - top >= 150
    with pytest.raises(ConfigError, match="min_side"):
        cropper.crop(photo(), task="free", min_side=2)


@pytest.mark.parametrize("subject", [(0.4, 0.5), (0.05, 0.95), (0.3, 0.3, 0.45, 0.6)])
def test_every_subject_crop_holds_the_subject(subject):
    # Boxes that miss the subject, as 6 of 11 real seeded crops did.
    misses = crops_reply((600, 600, 900, 900), (700, 0, 1000, 400), (500, 100, 980, 520))
    cropper = make(lambda conv, s: [misses] * s.n, top_k=4)
    result = cropper.crop(photo(), task="subject", subject=subject)
    point = result.subject.point
    for box in every_crop(result):
        assert box.contains(*point)
        if result.subject.box is not None:
            held = result.subject.box
            assert box.x0 <= held.x0 + 1e-9 and box.x1 >= held.x1 - 1e-9
    assert any(c.repair == "widened to hold the subject" for c in result.candidates)


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "the model's replies were empty"),
        ("   \n", "the model's replies were empty"),
        ("I cannot see any photo.", "no numbers found"),
        (crops_reply((1200, 1200, 1400, 1400)), "outside the image"),
    ],
)
def test_a_reply_without_a_valid_box_falls_back_visibly(reply, why, caplog):
    cropper = make(lambda conv, s: [reply] * s.n)
    with caplog.at_level(logging.WARNING, logger="cropper.agent.loop"):
        result = cropper.crop(photo(), task="free")
    assert result.box == Box.whole()
    assert result.fallback.startswith("the whole photo, as propose round 0 gave no valid box")
    assert why in result.fallback
    line = result.to_json()
    assert line["fallback"] == result.fallback and any("fell back" in n for n in line["notes"])
    assert any("fell back" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert {c.source for c in result.candidates} == {"fallback"}


class SchemaIgnoringServerVLM(ScriptedVLM):
    """Stands in for a server asked for structured outputs that writes prose anyway."""

    constrains_output = True


def test_replies_that_are_not_json_under_a_schema_say_the_server_ignores_it():
    vlm = SchemaIgnoringServerVLM(lambda conv, s: ["Here is a nice crop of the photo."] * s.n)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    result = cropper.crop(photo(), task="free")
    assert "ignores it" in result.fallback and "response_format" in result.fallback
    assert "vLLM, SGLang" in result.fallback
    # The same prose from a backend that was not asked to hold the schema: no such claim.
    plain = make(lambda conv, s: ["Here is a nice crop of the photo."] * s.n)
    assert "response_format" not in plain.crop(photo(), task="free").fallback


def test_a_null_content_from_a_server_falls_back_and_says_the_reply_was_empty():
    with OpenAICompatibleServer(responder=lambda request: [None] * request.get("n", 1)) as server:
        cropper = Cropper(vlm=server.url, clip=None, head=None, index=None, refine_rounds=0)
        result = cropper.crop(photo(), task="free")
    assert "the model's replies were empty" in result.fallback
    assert "raise max_tokens" in result.fallback


def test_an_assumed_subject_is_a_fallback_too():
    # The ground step's reply holds no box: the photo's centre stands in, and says so.
    def script(conv, sampling):
        text = " ".join(p.text for m in conv for p in m.parts if hasattr(p, "text"))
        if "Locate" in text or "locate" in text or "main subject" in text:
            return ["no idea"] * sampling.n
        return [crops_reply((100, 100, 900, 900))] * sampling.n

    result = make(script).crop(photo(), task="subject")
    assert result.subject.source == "fallback"
    assert "the photo's centre as the subject" in result.fallback


# -- what was chosen, and why ----------------------------------------------------------------


def test_a_chosen_crop_that_is_not_the_best_scored_says_why():
    script = [
        [crops_reply((0, 0, 1000, 1000))],
        [crops_reply((50, 50, 950, 950))],
        [crops_reply((100, 100, 900, 900))],
    ]
    result = make(script, crops=1).crop(photo(), task="free")
    assert max(c.score for c in result.candidates) > result.score
    why = "chosen from the last round, as the paper chooses free crops: a crop of round 0"
    assert any(n.startswith(why) for n in result.notes)


def test_the_terms_that_scored_are_named_when_they_are_not_the_ones_asked_for():
    result = make(lambda conv, s: [crops_reply((100, 100, 900, 900))] * s.n).crop(photo())
    assert any(n.startswith("scored with area: no embedder") for n in result.notes)


def test_a_strip_is_sent_stretched_and_its_crop_maps_back():
    seen = []

    def script(conv, sampling):
        seen.extend(p.image.size for m in conv for p in m.parts if isinstance(p, ImagePart))
        return [crops_reply((0, 400, 1000, 600))] * sampling.n

    strip = Image.new("RGB", (1, 2000), (200, 10, 10))
    result = make(script).crop(strip, task="free")
    assert all(max(s) <= 100 * min(s) for s in seen)  # what Qwen-VL's processor accepts
    assert result.pixels == (0, 800, 1, 1200)
    assert any("sent stretched across" in n for n in result.notes)


# -- one photo's failure is its own ---------------------------------------------------------


class FailsOnePhoto(ScriptedVLM):
    """A batch backend whose whole call fails when it holds the photo 333 px wide."""

    def generate(self, conversations, sampling):
        widths = [
            next(p.image.width for m in c for p in m.parts if isinstance(p, ImagePart))
            for c in conversations
        ]
        if 333 in widths:
            raise VLMError("cannot turn the conversation into model input: bad image")
        return super().generate(conversations, sampling)


def test_a_photo_the_backend_refuses_fails_alone_and_keeps_its_trace():
    vlm = FailsOnePhoto(lambda conv, s: [crops_reply((100, 100, 900, 900))] * s.n)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    results = cropper.crop_batch([photo(w) for w in (320, 333, 360, 380)], task="free")
    assert [type(r).__name__ for r in results] == ["CropResult", "VLMError", "CropResult"] + [
        "CropResult"
    ]
    failed = results[1]
    assert not failed.stops_batch and failed.partial.photo.size == (333, 300)
    assert [r.stage for r in failed.partial.rounds] == ["propose"]
    assert failed.partial.rounds[0].notes[0].startswith("failed: cannot turn")


# -- sampling ----------------------------------------------------------------------------


def test_temperature_zero_with_several_samples_is_refused_when_the_config_is_made():
    with pytest.raises(ConfigError, match="temperature=0 gives the same reply every time"):
        make(lambda conv, s: [], temperature=0, samples=3)
    make(lambda conv, s: [], temperature=0, samples=1)  # one greedy reply is fine


def test_retry_seeds_never_repeat_a_seed_of_the_rounds_samples():
    # A server that ignores n and writes no box: asked again per sample, then retried.
    def one_reply(request):
        return ["no box here"]

    with OpenAICompatibleServer(models=["m"], responder=one_reply) as server:
        cropper = Cropper(vlm=server.url, clip=None, head=None, index=None, refine_rounds=0)
        cropper.crop(photo(), task="free", samples=3, seed=7, retries=2)
        seeds = [r.body["seed"] for r in server.chat_requests]
    assert seeds == list(range(7, 16))  # three tries of three samples, each its own seed


def test_top_p_and_the_sampling_top_k_are_sent_only_when_set():
    with OpenAICompatibleServer(models=["m"]) as server:
        cropper = Cropper(vlm=server.url, clip=None, head=None, index=None, refine_rounds=0)
        cropper.crop(photo(), task="free")
        cropper.crop(photo(), task="free", top_p=0.9, sampling_top_k=20)
        plain, tuned = (r.body for r in server.chat_requests)
    assert "top_p" not in plain and "top_k" not in plain
    assert (tuned["top_p"], tuned["top_k"]) == (0.9, 20)


# -- a batch of degenerate replies, counted --------------------------------------------------

#: The degenerate replies real VLMs write, a kind for each of 50 photos in turn.
DEGENERATE = {
    "sliver": crops_reply((100, 500, 189, 513)),  # repaired
    "zero area": crops_reply((500, 500, 500, 500)),  # dropped; nothing left: falls back
    "empty": "",  # falls back
    "outside": crops_reply((1200, 1200, 1400, 1400)),  # dropped; falls back
    "mixed": crops_reply((100, 100, 900, 900), (100, 500, 189, 513), (100, 100, 900, 901)),
}


def degenerate_batch() -> tuple[list, list[str]]:
    kinds = [list(DEGENERATE)[i % len(DEGENERATE)] for i in range(50)]

    def script(conv, sampling):
        width = next(p.image.width for m in conv for p in m.parts if isinstance(p, ImagePart))
        return [DEGENERATE[kinds[width - 300]]] * sampling.n

    cropper = make(script)
    return cropper.crop_batch([photo(300 + i) for i in range(50)], task="free"), kinds


def count_outcomes(results) -> Counter:
    counts: Counter = Counter()
    for r in results:
        counts["repaired"] += any(c.repair for c in r.candidates)
        counts["dropped"] += any(round_.dropped for round_ in r.rounds)
        counts["fell back"] += r.fallback is not None
    return counts


def test_a_batch_of_50_degenerate_replies_is_repaired_dropped_or_falls_back_visibly():
    results, kinds = degenerate_batch()
    assert all(not isinstance(r, Exception) for r in results)
    counts = count_outcomes(results)
    # 10 photos a kind: slivers and mixed are repaired; zero-area, outside and mixed have
    # proposals dropped; zero-area, empty and outside fall back.
    assert counts == Counter({"repaired": 20, "dropped": 30, "fell back": 30})
    for r, kind in zip(results, kinds, strict=True):
        assert all(Constraints(r.size).check(b) == "" for b in every_crop(r))
        assert (r.fallback is not None) == (kind in ("zero area", "empty", "outside"))


# -- conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coords", "written"),
    [
        ("norm1000", (100, 200, 700, 900)),
        ("rel1000", (100, 200, 700, 900)),
        ("norm1", (0.1, 0.2, 0.7, 0.9)),
        ("pixel", (40, 60, 280, 270)),
    ],
)
def test_each_convention_reads_the_same_crop(coords, written):
    result = make(lambda conv, s: [crops_reply(written)] * s.n, coords=coords).crop(photo())
    assert result.pixels == (40, 60, 280, 270)
    assert result.fallback is None


def test_a_subject_given_as_a_subject_object_is_kept():
    subject = Subject((0.25, 0.25), Box(0.2, 0.2, 0.3, 0.3), source="box")
    result = make(lambda conv, s: [crops_reply((500, 500, 900, 900))] * s.n).crop(
        photo(), task="subject", subject=subject
    )
    assert result.box.contains(0.25, 0.25) and result.box.x0 <= 0.2


def test_a_photo_in_the_bank_is_not_its_own_exemplar_and_the_result_says_so(tmp_path):
    from types import SimpleNamespace

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.jpg")
        photo(300 + 10 * i).save(paths[-1])

    class Bank:
        embedder_name = "toy"

        def search(self, embedding, k):
            return [
                SimpleNamespace(image=str(p), size=(300, 300), crops=(Box(0.1, 0.1, 0.9, 0.9),),
                                scores=(4.0,), subjects=None, similarity=0.9 - i / 10)
                for i, p in enumerate(paths)
            ][:k]  # fmt: skip

    class Toy:
        name, dim = "toy", 3

        def embed(self, images):
            import numpy as np

            return np.ones((len(images), 3), np.float32)

    vlm = ScriptedVLM(lambda conv, s: [crops_reply((100, 100, 900, 900))] * s.n)
    cropper = Cropper(vlm=vlm, clip=Toy(), head=None, index=Bank(), refine_rounds=0)
    result = cropper.crop(str(paths[0]), task="free")
    shown = [p.key for m in vlm.calls[0][0] for p in m.parts if isinstance(p, ImagePart)]
    assert not any(k.startswith(f"{paths[0]}@") for k in shown)  # not among the exemplars
    assert any(k.startswith(f"{paths[1]}@") for k in shown)
    assert any("the photo itself is in the exemplar bank" in n for n in result.notes)


def test_a_bank_that_cannot_be_used_is_reported_before_any_model_loads(tmp_path):
    from cropper.core.errors import ExemplarIndexError

    with pytest.raises(ExemplarIndexError, match="no exemplar bank there"):
        # The CLIP named cannot load (a large one would take long): the bank is checked first.
        Cropper(vlm=ScriptedVLM(lambda conv, s: []), clip="local-dir:/nowhere/clip",
                index=tmp_path / "no-bank")  # fmt: skip
