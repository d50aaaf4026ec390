from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.errors import ConfigError, MissingDependencyError, VLMError, WeightsNotFoundError
from cropper.core.images import fit_within, load_image
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.vlm.base import Sampling
from cropper.vlm.schema import boxes_schema
from cropper.vlm.transformers_engine import (
    STATIC_CACHE_STEP,
    TransformersVLM,
    resolve_static_cache,
    static_cache_length,
    to_chat_messages,
)

RED = Image.new("RGB", (8, 6), (255, 0, 0))
BLUE = Image.new("RGB", (6, 8), (0, 0, 255))


@pytest.mark.parametrize(
    ("conversation", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param(
            [Message("user", (TextPart("crop it"),))],
            [{"role": "user", "content": [{"type": "text", "text": "crop it"}]}],
            id="text-only",
        ),
        pytest.param(
            [
                Message("system", (TextPart("You crop."),)),
                Message("user", (ImagePart(RED, "a.jpg"), TextPart("Example."), ImagePart(BLUE))),
            ],
            [
                {"role": "system", "content": [{"type": "text", "text": "You crop."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": RED},
                        {"type": "text", "text": "Example."},
                        {"type": "image", "image": BLUE},
                    ],
                },
            ],
            id="system-then-interleaved-images-in-order",
        ),
        pytest.param(
            [
                Message("user", (ImagePart(RED), TextPart(""))),
                Message("assistant", (TextPart('{"crops": [[0, 0, 1000, 1000]]}'),)),
            ],
            [
                {"role": "user", "content": [{"type": "image", "image": RED}]},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": '{"crops": [[0, 0, 1000, 1000]]}'}],
                },
            ],
            id="empty-text-dropped-assistant-kept",
        ),
    ],
)
def test_to_chat_messages(conversation, expected):
    messages = to_chat_messages(conversation)
    assert messages == expected
    # Images pass through as the very same PIL objects, not copies or paths.
    got = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
    want = [p["image"] for m in expected for p in m["content"] if p["type"] == "image"]
    assert all(a is b for a, b in zip(got, want, strict=True))


def test_to_chat_messages_rejects_unknown_parts():
    with pytest.raises(ConfigError, match="neither TextPart nor ImagePart"):
        to_chat_messages([Message("user", ("plain string",))])


@pytest.mark.parametrize(
    ("asked", "device", "expected"),
    [
        (None, "cpu", False),
        (None, "cuda", True),
        (None, "cuda:1", True),
        (None, "mps", False),
        (True, "cpu", True),
        (False, "cuda", False),
    ],
)
def test_static_cache_defaults_on_for_cuda_only(asked, device, expected):
    import torch

    # torch.device("cuda") needs no GPU to exist, so the rule is tested here.
    assert resolve_static_cache(asked, torch.device(device)) is expected


@pytest.mark.parametrize(
    ("prompt", "new", "expected"),
    [
        (1, 1, STATIC_CACHE_STEP),
        (STATIC_CACHE_STEP - 512, 512, STATIC_CACHE_STEP),
        (STATIC_CACHE_STEP - 511, 512, 2 * STATIC_CACHE_STEP),
        (11_000, 512, 6 * STATIC_CACHE_STEP),
    ],
)
def test_static_cache_length_rounds_up_to_the_step(prompt, new, expected):
    assert static_cache_length(prompt, new) == expected


def test_missing_transformers_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match="transformers.*pip install"):
        TransformersVLM("Qwen/Qwen2.5-VL-3B-Instruct")


def test_unknown_hub_model_offline_says_how_to_get_weights():
    with pytest.raises(WeightsNotFoundError) as info:
        TransformersVLM("cropper-tests/no-such-vlm")
    message = str(info.value)
    assert "cropper-tests/no-such-vlm" in message
    assert "download cropper-tests/no-such-vlm --local-dir DIR" in message
    assert "Cropper(vlm=DIR)" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("make_spec", "fragment"),
    [
        (lambda tmp: str(tmp / "missing"), "does not exist"),
        (lambda tmp: str(tmp), "holds no checkpoint"),
    ],
    ids=["missing-folder", "empty-folder"],
)
def test_bad_local_folders(tmp_path, make_spec, fragment):
    spec = make_spec(tmp_path)
    with pytest.raises(WeightsNotFoundError, match=fragment) as info:
        TransformersVLM(spec)
    assert spec in str(info.value)


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _conversation(seed: int) -> list[Message]:
    """An in-context prompt in miniature: a system line, then two photos and text."""
    return [
        Message("system", (TextPart("You crop photos well."),)),
        Message(
            "user",
            (
                TextPart("Example photo, best crops [[100, 50, 900, 950]]:"),
                ImagePart(_photo(seed, (320, 240))),
                TextPart("Query photo:"),
                ImagePart(_photo(seed + 1, (200, 300))),
                TextPart('Reply with {"crops": [[x0, y0, x1, y1], ...]} in 0-1000.'),
            ),
        ),
    ]


def _assert_boxes_json(reply: str, max_boxes: int) -> None:
    data = json.loads(reply)
    assert set(data) == {"crops"}
    assert 1 <= len(data["crops"]) <= max_boxes
    for box in data["crops"]:
        assert len(box) == 4
        assert all(isinstance(v, int) and 0 <= v <= 1000 for v in box)


# The JSON of 6 boxes of 4 numbers up to 1000 is under 200 characters, so 256 tokens
# always let a constrained reply finish.
BOXES = Sampling(n=3, temperature=0.8, max_tokens=256, json_schema=boxes_schema(6, "norm1000"))


@pytest.fixture(scope="module", params=["tiny_qwen25_vl", "tiny_qwen3_vl"])
def tiny_vlm(request):
    vlm = TransformersVLM(str(request.getfixturevalue(request.param)), batch_size=8)
    yield vlm
    vlm.close()


@pytest.fixture(scope="module")
def qwen25_vlm(tiny_qwen25_vl):
    vlm = TransformersVLM(str(tiny_qwen25_vl))
    yield vlm
    vlm.close()


@pytest.mark.slow
def test_loads_by_folder_on_cpu_in_float32(tiny_vlm):
    import torch

    assert tiny_vlm.device.type == "cpu" and tiny_vlm.dtype == torch.float32
    assert (Path(tiny_vlm.name) / "model.safetensors").is_file()
    assert tiny_vlm.tokenizer.padding_side == "left"


@pytest.mark.slow
def test_constrained_batch_gives_n_valid_box_replies_each(tiny_vlm):
    sampling = dataclasses.replace(BOXES, seed=7)
    replies = tiny_vlm.generate([_conversation(0), _conversation(10)], sampling)
    assert len(replies) == 2
    assert all(len(per_conversation) == 3 for per_conversation in replies)
    for reply in (r for per_conversation in replies for r in per_conversation):
        _assert_boxes_json(reply, max_boxes=6)
    # The same seed draws the same replies.
    assert tiny_vlm.generate([_conversation(0), _conversation(10)], sampling) == replies


@pytest.mark.slow
@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-cache", "whole-prefill"])
def test_static_cache_gives_the_dynamic_caches_greedy_boxes(tiny_vlm, monkeypatch, prefix_cache):
    from transformers import StaticCache

    assert tiny_vlm.static_cache is False  # the CPU default
    monkeypatch.setattr(tiny_vlm, "prefix_cache", prefix_cache)
    sampling = Sampling(
        n=1, temperature=0.0, max_tokens=256, json_schema=boxes_schema(6, "norm1000")
    )
    conversations = [_conversation(0), _conversation(10)]
    dynamic = tiny_vlm.generate(conversations, sampling)

    seen = []
    generate = tiny_vlm.model.generate
    monkeypatch.setattr(tiny_vlm.model, "generate", lambda **kw: seen.append(kw) or generate(**kw))
    monkeypatch.setattr(tiny_vlm, "static_cache", True)
    static = tiny_vlm.generate(conversations, sampling)
    if prefix_cache:  # the prompts' states go in a static cache of its own
        assert isinstance(seen[0]["cache"], StaticCache)
        assert seen[0]["cache"].get_max_length() % STATIC_CACHE_STEP == 0
    else:
        assert seen[0]["cache_implementation"] == "static"
        assert seen[0]["max_cache_len"] % STATIC_CACHE_STEP == 0
    assert static == dynamic
    for [reply] in static:
        _assert_boxes_json(reply, max_boxes=6)


@pytest.mark.slow
def test_static_cache_option_reaches_the_backend(tiny_qwen25_vl):
    vlm = TransformersVLM(str(tiny_qwen25_vl), static_cache=True)
    assert vlm.static_cache is True
    sampling = Sampling(
        n=2, temperature=0.7, max_tokens=256, json_schema=boxes_schema(6, "norm1000"), seed=4
    )
    [replies] = vlm.generate([_conversation(3)], sampling)
    assert len(replies) == 2
    for reply in replies:
        _assert_boxes_json(reply, max_boxes=6)
    vlm.close()


@pytest.mark.slow
def test_unseeded_calls_draw_afresh(qwen25_vlm):
    import torch

    torch.manual_seed(0)  # the draws below are fixed, yet each call's are new
    sampling = dataclasses.replace(BOXES, n=2)
    first = qwen25_vlm.generate([_conversation(0)], sampling)
    second = qwen25_vlm.generate([_conversation(0)], sampling)
    assert first != second


@pytest.mark.slow
def test_chunks_of_batch_size_give_the_same_shape(tiny_vlm, monkeypatch):
    monkeypatch.setattr(tiny_vlm, "batch_size", 1)
    sampling = Sampling(
        n=2, temperature=0.5, max_tokens=256, json_schema=boxes_schema(2, "norm1000")
    )
    replies = tiny_vlm.generate([_conversation(1), _conversation(2), _conversation(3)], sampling)
    assert [len(r) for r in replies] == [2, 2, 2]
    for reply in (r for per_conversation in replies for r in per_conversation):
        _assert_boxes_json(reply, max_boxes=2)


@pytest.mark.slow
def test_greedy_repeats_its_one_reply_n_times(qwen25_vlm):
    sampling = Sampling(
        n=3, temperature=0.0, max_tokens=256, json_schema=boxes_schema(6, "norm1000")
    )
    [replies] = qwen25_vlm.generate([_conversation(0)], sampling)
    assert len(replies) == 3 and len(set(replies)) == 1
    _assert_boxes_json(replies[0], max_boxes=6)


@pytest.mark.slow
def test_sampling_ignores_the_hubs_top_k(qwen25_vlm, monkeypatch):
    # Qwen's generation_config.json ships top_k=1, which would make every sample one.
    config = qwen25_vlm.model.generation_config
    for name, value in {"do_sample": True, "top_k": 1, "top_p": 0.001, "temperature": 0.1}.items():
        monkeypatch.setattr(config, name, value)
    sampling = Sampling(
        n=4, temperature=1.0, max_tokens=256, json_schema=boxes_schema(6, "norm1000"), seed=3
    )
    [replies] = qwen25_vlm.generate([_conversation(0)], sampling)
    assert len(set(replies)) > 1


@pytest.mark.slow
def test_text_only_conversations_need_no_images(qwen25_vlm):
    conversation = [Message("user", (TextPart("Give one crop of the whole photo as JSON."),))]
    sampling = Sampling(
        n=1, temperature=0.0, max_tokens=64, json_schema=boxes_schema(1, "norm1000")
    )
    [[reply]] = qwen25_vlm.generate([conversation], sampling)
    _assert_boxes_json(reply, max_boxes=1)


@pytest.mark.slow
def test_unconstrained_generation_returns_strings(qwen25_vlm):
    sampling = Sampling(n=2, temperature=0.7, max_tokens=6, seed=0)
    replies = qwen25_vlm.generate([_conversation(0), _conversation(5)], sampling)
    assert [len(r) for r in replies] == [2, 2]
    assert all(isinstance(r, str) for per_conversation in replies for r in per_conversation)
    # A random model left alone does not write the boxes JSON.
    assert not any(
        r.startswith('{"crops"') for per_conversation in replies for r in per_conversation
    )


@pytest.mark.slow
def test_constrained_false_ignores_the_schema(tiny_qwen25_vl):
    vlm = TransformersVLM(str(tiny_qwen25_vl), constrained=False)
    sampling = Sampling(
        n=1, temperature=0.7, max_tokens=6, json_schema=boxes_schema(6, "norm1000"), seed=0
    )
    [[reply]] = vlm.generate([_conversation(0)], sampling)
    assert not reply.startswith('{"crops"')


@pytest.mark.slow
def test_real_gaicd_photo_through_the_tiny_model(qwen25_vlm, gaicd_photo):
    photo = fit_within(load_image(gaicd_photo), 512)
    conversation = [
        Message("user", (ImagePart(photo, str(gaicd_photo)), TextPart("Propose 3 crops as JSON."))),
    ]
    sampling = Sampling(
        n=2, temperature=0.05, max_tokens=128, json_schema=boxes_schema(3, "norm1000")
    )
    [replies] = qwen25_vlm.generate([conversation], sampling)
    assert len(replies) == 2
    for reply in replies:
        _assert_boxes_json(reply, max_boxes=3)


@pytest.mark.slow
def test_unreadable_input_raises_vlm_error(qwen25_vlm):
    sliver = Image.new("RGB", (1000, 4))  # aspect ratio 250: the processor refuses it
    conversation = [Message("user", (ImagePart(sliver), TextPart("crop")))]
    with pytest.raises(VLMError, match="cannot turn the conversation into model input"):
        qwen25_vlm.generate([conversation], Sampling(max_tokens=4))


@pytest.mark.slow
def test_schema_xgrammar_cannot_compile_is_a_config_error(qwen25_vlm):
    sampling = Sampling(max_tokens=4, json_schema={"type": "array", "minItems": 5, "maxItems": 2})
    with pytest.raises(ConfigError, match="json_schema"):
        qwen25_vlm.generate([_conversation(0)], sampling)


@pytest.mark.gpu
@pytest.mark.slow
def test_constrained_batch_on_cuda_in_bfloat16(tiny_qwen3_vl):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    vlm = TransformersVLM(str(tiny_qwen3_vl))
    assert vlm.device.type == "cuda" and vlm.dtype == torch.bfloat16
    assert vlm.static_cache is True
    replies = vlm.generate(
        [_conversation(0), _conversation(10)], dataclasses.replace(BOXES, seed=1)
    )
    assert [len(r) for r in replies] == [3, 3]
    for reply in (r for per_conversation in replies for r in per_conversation):
        _assert_boxes_json(reply, max_boxes=6)
    vlm.close()


@pytest.mark.slow
def test_a_mixed_batch_in_process_crops_every_photo(tiny_qwen3_vl, real_gaicd_photos):
    """One strip used to fail every photo of its generate call: now none fails at all."""
    from cropper import Cropper
    from cropper.agent.constraints import Constraints
    from cropper.testing.synthetic import synthetic_photo

    odd = {
        "1x2000": Image.new("RGB", (1, 2000), (200, 30, 30)),
        "2000x1": Image.new("RGB", (2000, 1), (30, 200, 30)),
        "3x3": Image.new("RGB", (3, 3), (30, 30, 200)),
        "1x1": Image.new("RGB", (1, 1), (90, 90, 90)),
        "1x500": Image.new("RGB", (1, 500), (90, 30, 90)),
        "500x1": Image.new("RGB", (500, 1), (30, 90, 90)),
        "8:1 panorama": Image.new("RGB", (800, 100), (60, 60, 160)),
        "30000x10": Image.new("RGB", (30000, 10), (120, 120, 30)),
    }
    ordinary = {f"synthetic-{i}": synthetic_photo(i, size=(320, 240)) for i in range(2)}
    real = {p.name: load_image(p) for p in real_gaicd_photos}
    photos = {**odd, **ordinary, **real}
    cropper = Cropper(
        vlm=str(tiny_qwen3_vl),
        clip=None,
        head=None,
        index=None,
        refine_rounds=1,
        crops=2,
        max_tokens=160,
        query_side=448,
        candidate_side=112,
        seed=0,
    )
    with cropper:
        results = cropper.crop_batch(list(photos.values()), concurrency=len(photos))
    for name, result in zip(photos, results, strict=True):
        assert not isinstance(result, Exception), f"{name}: {result}"
        for c in result.candidates:
            assert Constraints(result.size).check(c.box) == "", (name, c)
    stretched = {n for n, r in zip(photos, results, strict=True) if "stretched" in str(r.notes)}
    assert stretched == {"1x2000", "2000x1", "30000x10", "1x500", "500x1"}
