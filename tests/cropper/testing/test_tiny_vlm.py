from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from cropper.core.errors import ConfigError
from cropper.testing.tiny_vlm import SPECIAL_TOKENS, build_tiny_qwen_vl

FAMILIES = {"tiny_qwen25_vl": "qwen2_5_vl", "tiny_qwen3_vl": "qwen3_vl"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request):
    """(folder, family, processor, model) of each tiny family, loaded the hub way."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = request.getfixturevalue(request.param)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    return folder, FAMILIES[request.param], processor, model


@pytest.mark.slow
def test_loads_as_the_familys_classes(checkpoint):
    _, family, processor, model = checkpoint
    assert model.config.model_type == family
    expected = {"qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[family]
    assert type(model).__name__.startswith(expected)
    assert type(processor).__name__.startswith(expected)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.slow
def test_token_ids_agree_between_tokenizer_and_config(checkpoint):
    _, _, processor, model = checkpoint
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # Qwen's order
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert model.get_output_embeddings().weight.shape[0] >= len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>"
    assert set(model.generation_config.eos_token_id) == {
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        '{"crops": [[0, 12, 999, 1000]]}',
        "((0.25, 0.5), 0.1, 0.2, 0.9, 1.0)",
        "café ☕ 日本語 \t tabs\nand lines",
        "<|im_start|>user\nhi<|im_end|>",
    ],
)
def test_every_string_round_trips(checkpoint, text):
    tokenizer = checkpoint[2].tokenizer
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.slow
def test_chat_template_places_images_like_qwen(checkpoint):
    _, family, processor, _ = checkpoint
    photo = Image.new("RGB", (300, 200), (10, 200, 30))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": photo},
                {"type": "text", "text": "Crop it."},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    user_turn = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Crop it.<|im_end|>\n"
    assert prompt.endswith(user_turn + "<|im_start|>assistant\n")
    has_default_system = prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert has_default_system == (family == "qwen2_5_vl")
    # A photo becomes a handful of vision tokens.
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    image_tokens = int((inputs["input_ids"] == image_pad).sum())
    assert 4 <= image_tokens <= 8


def _weights_digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_seed_fixes_the_weights(tiny_qwen25_vl, tmp_path):
    again = build_tiny_qwen_vl(tmp_path / "again", family="qwen2_5_vl", seed=0)
    other = build_tiny_qwen_vl(tmp_path / "other", family="qwen2_5_vl", seed=1)
    assert _weights_digest(again) == _weights_digest(tiny_qwen25_vl)
    assert _weights_digest(other) != _weights_digest(tiny_qwen25_vl)


def test_an_existing_checkpoint_is_reused(tiny_qwen3_vl):
    before = (tiny_qwen3_vl / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_qwen_vl(tiny_qwen3_vl, family="qwen3_vl") == tiny_qwen3_vl
    assert (tiny_qwen3_vl / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("family", "setup", "fragment"),
    [
        ("qwen9_vl", None, "unknown"),
        ("qwen2_5_vl", "stray.txt", "not empty"),
    ],
    ids=["unknown-family", "non-empty-folder"],
)
def test_refuses_bad_requests(tmp_path, family, setup, fragment):
    if setup:
        (tmp_path / setup).write_text("x")
    with pytest.raises(ConfigError, match=fragment):
        build_tiny_qwen_vl(tmp_path, family=family)


def test_refuses_a_folder_of_the_other_family(tiny_qwen3_vl):
    with pytest.raises(ConfigError, match="qwen3_vl checkpoint, not qwen2_5_vl"):
        build_tiny_qwen_vl(tiny_qwen3_vl, family="qwen2_5_vl")
