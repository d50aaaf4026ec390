"""Notebook views: a result before and after with its rounds, and a prompt as the VLM read it."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cropper import Cropper
from cropper.core.messages import ImagePart, Message, TextPart, conversation_text
from cropper.testing.scripted import ScriptedVLM, crops_reply
from cropper.testing.synthetic import synthetic_photo
from cropper.views.display import (
    PHOTO_SIDE,
    PROMPT_SIDE,
    ROUND_SIDE,
    TOP,
    Messages,
    conversation_html,
    result_html,
)

HOSTILE = "<script>alert('x')</script>"
REPLIES = [
    [f"{HOSTILE} " + crops_reply((100, 100, 800, 700)), crops_reply((0, 0, 500, 500))],
    ["no boxes, sorry & goodbye", crops_reply((150, 120, 850, 760))],
    [crops_reply((200, 200, 900, 900)), crops_reply((210, 200, 900, 880))],
]
IMG = re.compile(r"<img src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    # A file name with markup in it: the view must show it, not run it.
    path = tmp_path_factory.mktemp("photos") / "<i>odd&.png"
    synthetic_photo(3, size=(640, 480)).save(path)
    cropper = Cropper(vlm=ScriptedVLM(REPLIES), clip=None, head=None, index=None, samples=2)
    return cropper.crop(path, task="free")


def _images(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in IMG.findall(text)]


def test_a_result_shows_before_after_the_request_and_each_round(result):
    page = result_html(result)
    assert page.count("<br>before<") == 1 and page.count("<br>after<") == 1
    assert "<td>free</td>" in page
    assert "({}, {}, {}, {})".format(*result.pixels) in page
    assert f"{result.score:.3f}" in page
    for r in result.rounds:
        assert f"round {r.index}: {r.stage}" in page
        for c in r.candidates:
            assert "({}, {}, {}, {})".format(*c.box.to_pixels(result.size)) in page
    # One table row a candidate (plus a header a round), the chosen one starred once.
    assert page.count("<td>vlm</td>") == len(result.candidates)
    assert page.count("&#9733;") == 1


def test_a_crop_proposed_again_in_each_round_is_starred_once_in_the_last():
    same = [[crops_reply((100, 100, 800, 700))]] * 3
    cropper = Cropper(vlm=ScriptedVLM(same), clip=None, head=None, index=None)
    page = result_html(cropper.crop(synthetic_photo(4, size=(320, 240)), task="free"))
    assert page.count("&#9733;") == 1
    assert "&#9733;" in page.split("round 2: refine")[1]


def test_a_result_without_a_vlm_lists_its_best_candidates():
    cropper = Cropper(vlm=None, clip=None, head=None)
    result = cropper.crop(synthetic_photo(5, size=(320, 240)), task="free")
    assert not result.rounds and len(result.candidates) > TOP
    page = result_html(result)
    assert f"{len(result.candidates)} candidates" in page
    assert page.count("<td>saliency</td>") == TOP  # no VLM and no embedder: saliency
    assert page.count("&#9733;") == 1
    assert len(_images(page)) == 3  # before, after, every candidate


def test_a_result_inlines_every_picture_bounded(result):
    pictures = _images(result_html(result))
    # before, after, then one overlay a round
    assert len(pictures) == 2 + len(result.rounds)
    assert max(pictures[0].size) <= PHOTO_SIDE
    assert pictures[1].size == _fit(result.image.size, PHOTO_SIDE)
    assert all(max(p.size) <= ROUND_SIDE for p in pictures[2:])


def test_a_result_escapes_every_text_it_shows(result):
    page = result_html(result)
    assert HOSTILE not in page and "<i>odd" not in page
    assert "&lt;script&gt;" in page and "&lt;i&gt;odd&amp;.png" in page
    assert "sorry &amp; goodbye" in page


def test_the_notebook_shows_a_result_with_this_view(result):
    assert result._repr_html_() == result_html(result)


def test_a_runaway_reply_is_cut(result):
    import dataclasses

    huge = "[" * 1_000_000
    first = dataclasses.replace(result.rounds[0], replies=(huge,))
    page = result_html(dataclasses.replace(result, rounds=(first,)))
    assert len(page) < 200_000
    assert "more characters" in page


def _conversation(n_images: int, side: int = 1024) -> list[Message]:
    rng = np.random.default_rng(0)
    noise = [  # noise is the worst case for a compressed thumbnail
        Image.fromarray(rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8))
        for _ in range(n_images)
    ]
    parts = [TextPart("Photos <with> good crops & more:\n")]
    for i, image in enumerate(noise):
        parts += [TextPart(f"Photo {i}: "), ImagePart(image, key=f"ex{i}"), TextPart("\n")]
    return [
        Message("system", (TextPart(f"You crop photos. {HOSTILE}"),)),
        Message("user", tuple(parts)),
        Message("assistant", (TextPart('{"crops": [[1, 2, 3, 4]]}'),)),
    ]


def test_a_conversation_shows_each_role_text_and_image_in_order():
    conversation = _conversation(3, side=64)
    page = conversation_html(conversation)
    assert re.findall(r"<b>\[(\w+)\]</b>", page) == ["system", "user", "assistant"]
    # Images sit where they are in the prompt: after "Photo i:", before "Photo i+1:".
    order = re.findall(r"Photo (\d): </pre><img ", page)
    assert order == ["0", "1", "2"]
    assert len(_images(page)) == 3
    assert HOSTILE not in page and "&lt;with&gt; good crops &amp; more" in page


def test_a_long_prompt_stays_small():
    conversation = _conversation(30)
    page = conversation_html(conversation)
    pictures = _images(page)
    assert len(pictures) == 30
    assert all(max(p.size) <= PROMPT_SIDE for p in pictures)
    # Far below the photos themselves: each thumbnail at most its raw pixels in base64.
    assert len(page) < 30 * PROMPT_SIDE * PROMPT_SIDE * 3 * 4 // 3


def test_messages_show_in_a_notebook_and_as_text():
    conversation = _conversation(2, side=32)
    shown = Messages(conversation)
    assert shown._repr_html_() == conversation_html(conversation)
    assert str(shown) == conversation_text(conversation)
    assert repr(shown) == "Messages(3 messages, 2 images)"


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))
