"""Debug folders: the overlays, the exact prompts the VLM read, and its raw replies."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from cropper import Cropper
from cropper.cli.main import main
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.testing.scripted import ScriptedVLM, crops_reply
from cropper.testing.synthetic import synthetic_photo
from cropper.views.debug import write_debug

REPLIES = [
    ["I would crop " + crops_reply((100, 100, 800, 700)), crops_reply((0, 0, 500, 500))],
    ["```json\n" + crops_reply((150, 120, 850, 760)) + "\n```", "no boxes, sorry"],
    [crops_reply((200, 200, 900, 900)), crops_reply((210, 200, 900, 880))],
]


@pytest.fixture(scope="module")
def result():
    cropper = Cropper(vlm=ScriptedVLM(REPLIES), clip=None, head=None, index=None, samples=2)
    return cropper.crop(synthetic_photo(3, size=(320, 240)), task="aspect", ratio="4:3")


@pytest.fixture(scope="module")
def folder(result, tmp_path_factory):
    return write_debug(result, tmp_path_factory.mktemp("debug") / "photo")


def test_the_layout(result, folder):
    rounds = [f"round-{r.index}-{r.stage}" for r in result.rounds]
    assert rounds == ["round-0-propose", "round-1-refine", "round-2-refine"]
    for name in rounds:
        for file in ("prompt.txt", "prompt.json", "replies.json", "overlay.png"):
            assert (folder / name / file).is_file(), f"{name}/{file}"
    assert Image.open(folder / "overlay.png").size == result.draw().size
    assert Image.open(folder / "crop.jpg").size == result.image.size
    assert not list(folder.rglob("*.tmp*")), "no temporary file is left behind"


def test_replies_are_kept_exactly_as_the_model_wrote_them(result, folder):
    for r, expected in zip(result.rounds, REPLIES, strict=True):
        assert json.loads((folder / f"round-{r.index}-{r.stage}" / "replies.json").read_text()) == (
            expected
        )


def test_the_prompt_text_is_the_rendered_prompt(result, folder):
    for r in result.rounds:
        text = (folder / f"round-{r.index}-{r.stage}" / "prompt.txt").read_text()
        assert re.sub(r"\[image \S+ \d+x\d+\]", "<image>", text) == r.prompt_text + "\n"


def test_every_prompt_image_is_saved_once_with_its_exact_pixels(result, folder):
    seen = set()
    for r in result.rounds:
        where = folder / f"round-{r.index}-{r.stage}"
        messages = json.loads((where / "prompt.json").read_text())
        assert [m["role"] for m in messages] == [m.role for m in r.prompt]
        files = [p["file"] for m in messages for p in m["content"] if p["type"] == "image"]
        sent = [img for m in r.prompt for img in m.images]
        assert len(files) == len(sent) > 0
        for file, image in zip(files, sent, strict=True):
            saved = np.asarray(Image.open(where / file).convert("RGB"))
            assert np.array_equal(saved, np.asarray(image.convert("RGB")))
            seen.add((where / file).resolve())
    # The query photo is in every round's prompt, yet saved once.
    assert (
        len(list((folder / "images").iterdir()))
        == len(seen)
        < sum(len([i for m in r.prompt for i in m.images]) for r in result.rounds)
    )


def test_the_trace_holds_every_candidate(result, folder):
    trace = json.loads((folder / "trace.json").read_text())
    assert trace["task"] == "aspect" and trace["ratio"] == "4:3"
    assert trace["box"] == list(result.pixels) and trace["score"] == result.score
    got = [(c["box"], c["score"]) for r in trace["rounds"] for c in r["candidates"]]
    assert got == [(list(c.box.to_pixels(result.size)), c.score) for c in result.candidates]
    assert [r["notes"] for r in trace["rounds"]] == [list(r.notes) for r in result.rounds]


def test_cli_debug_dir_per_photo_with_shared_prompt_images_and_no_api_key(tmp_path):
    key = "sk-debug-secret-0123456789"
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    synthetic_photo(1, size=(200, 150)).save(photos / "a.jpg")
    synthetic_photo(2, size=(150, 200)).save(photos / "sub" / "b.png")
    debug = tmp_path / "debug"
    with OpenAICompatibleServer(api_key=key) as server:
        code = main(
            ["crop", str(photos), "--vlm", server.url, "--api-key", key, "--clip", "none",
             "--head", "none", "--index", "none", "--debug-dir", str(debug)]
        )  # fmt: skip
    assert code == 0
    a, b = debug / "a.jpg", debug / "sub" / "b.png"  # a folder a photo, named as the photo
    assert (a / "trace.json").is_file() and (b / "trace.json").is_file()
    assert (debug / "prompt-images").is_dir() and not (a / "images").exists()
    prompt = json.loads((b / "round-0-propose" / "prompt.json").read_text())
    image = next(p["file"] for m in prompt for p in m["content"] if p["type"] == "image")
    assert (b / "round-0-propose" / image).resolve().parent == (
        debug / "prompt-images"
    ).resolve()
    for path in debug.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the API key leaked into {path}"
