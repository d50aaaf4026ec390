"""Tiny random Qwen2.5-VL and Qwen3-VL checkpoints, built offline in seconds.

``build_tiny_qwen_vl(folder)`` writes a complete checkpoint folder (config, random
safetensors weights, generation config, tokenizer, image and video processors,
chat template) that ``AutoProcessor.from_pretrained(folder)`` and
``AutoModelForImageTextToText.from_pretrained(folder)`` load as they would a hub
checkpoint. The tokenizer is a byte-level BPE trained on a short built-in text, so
every string encodes, with Qwen's special tokens in Qwen's order. A random model
writes garbage; constrained decoding makes it write parseable JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError, MissingDependencyError

logger = logging.getLogger(__name__)

FAMILIES = ("qwen2_5_vl", "qwen3_vl")

#: Qwen's special tokens in Qwen's order (their ids follow the BPE vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: What the BPE learns its merges from; the byte alphabet covers everything else.
_CORPUS = """\
You are a helpful assistant. You are an expert photographer who crops photos well.
system user assistant Picture 1: Picture 2: the photo, the image, the crop, the subject.
Here are example photos with their best crops as boxes (x0, y0, x1, y1) from 0 to 1000.
Propose 6 crops for the query photo. Reply with JSON only: {"crops": [[x0, y0, x1, y1]]}.
{"crops": [[0, 0, 1000, 1000], [12, 40, 980, 1000], [100, 250, 875, 963]]}
{"box": [0.125, 0.5, 0.75, 0.9]} score 4.25 ratio 16:9 3:2 4:3 1:1 size (1024, 768)
(s, x1, y1, x2, y2) ((cx, cy), x1, y1, x2, y2) (left, upper, right, lower)
The subject is a dog on the grass; keep the horizon level and the eyes on a third.
Candidate crops and their scores: aesthetic, area, content. Find similar crops that
score higher. 0 1 2 3 4 5 6 7 8 9 10 100 1000 0.0 0.5 1.0 - + * / = < > ? ! ' " ` ~
"""

#: Qwen-style chat template: content is a string or a list of image / text parts.
_CHAT_TEMPLATE = """\
{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- for message in messages -%}
{%- if loop.first and message['role'] != 'system' and default_system -%}
<|im_start|>system
{{ default_system }}<|im_end|>
{% endif -%}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string -%}
{{ message['content'] }}
{%- else -%}
{%- for content in message['content'] -%}
{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}
{%- set image_count.value = image_count.value + 1 -%}
{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
<|vision_start|><|image_pad|><|vision_end|>
{%- elif content['type'] == 'video' or 'video' in content -%}
{%- set video_count.value = video_count.value + 1 -%}
{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
<|vision_start|><|video_pad|><|vision_end|>
{%- elif 'text' in content -%}
{{ content['text'] }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

#: Qwen2.5-VL's template adds a default system prompt; Qwen3-VL's does not.
_DEFAULT_SYSTEM = {"qwen2_5_vl": "You are a helpful assistant.", "qwen3_vl": ""}

_BPE_VOCAB_SIZE = 600  # bytes (256) plus merges: small, yet words encode in few tokens
_TEXT_HIDDEN = 64
_TEXT_HEADS = 4  # head_dim 16, so the mrope sections below sum to 8
_VISION_HIDDEN = 32


def build_tiny_qwen_vl(
    out_dir: str | os.PathLike, family: str = "qwen2_5_vl", seed: int = 0
) -> Path:
    """Write a tiny random ``family`` checkpoint to ``out_dir`` and return its path.

    ``family`` is ``"qwen2_5_vl"`` or ``"qwen3_vl"``. Weights are drawn from
    ``seed``. A folder that already holds a checkpoint of that family is reused.
    The folder appears whole or not at all (built aside, then renamed).
    """
    if family not in FAMILIES:
        raise ConfigError(f"tiny VLM family {family!r} is unknown; use one of {FAMILIES}")
    out = Path(out_dir)
    config_file = out / "config.json"
    if config_file.is_file():
        built = json.loads(config_file.read_text()).get("model_type")
        if built != family:
            raise ConfigError(f"{out} already holds a {built} checkpoint, not {family}")
        return out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no checkpoint; pick an empty folder")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "transformers", purpose="tiny VLMs") from None

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        processor = _processor(family)
        config = _model_config(family, processor.tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.AutoModelForImageTextToText.from_config(config)
        _set_generation_config(model.generation_config, processor.tokenizer)
        from cropper.vlm.transformers_engine import quiet_loading_bar

        quiet_loading_bar()  # no "Writing model shards" bar unless cropper logs at INFO
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the checkpoint from other users
        try:
            # An empty target folder (pytest's mktemp) is replaced by the rename.
            os.replace(staging, out)
        except OSError:
            if not config_file.is_file():  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built a tiny random %s checkpoint at %s", family, out)
    return out


def _tokenizer() -> Any:
    """A byte-level BPE with Qwen2's pre-tokenizer, trained on :data:`_CORPUS`."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    # The same pipeline Qwen2Tokenizer rebuilds around the vocabulary, so merges match.
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in SPECIAL_TOKENS:  # Qwen's order, right after the BPE tokens
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in model["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )


def _processor(family: str) -> Any:
    """The family's processor with small min/max pixels: a photo is 4 to 8 vision tokens."""
    from transformers import Qwen2VLImageProcessor

    tokenizer = _tokenizer()
    template = (
        f"{{%- set default_system = {json.dumps(_DEFAULT_SYSTEM[family])} -%}}\n{_CHAT_TEMPLATE}"
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

        factor = 14 * 2  # patch size x merge size
        pixels = {"shortest_edge": factor * factor * 4, "longest_edge": factor * factor * 8}
        common = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "size": pixels}
        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**common),
            video_processor=Qwen2VLVideoProcessor(**common),
            tokenizer=tokenizer,
            chat_template=template,
        )
    from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

    factor = 16 * 2
    pixels = {"shortest_edge": factor * factor * 4, "longest_edge": factor * factor * 8}
    half = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    common = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2, "size": pixels, **half}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=Qwen3VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=template,
    )


def _model_config(family: str, tokenizer: Any) -> Any:
    """Two text layers, two vision blocks, hidden sizes of tens; token ids from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    # Pad the lm head past the tokenizer, as Qwen's checkpoints do (151936 > 151665).
    vocab_size = -(-len(tokenizer) // 64) * 64
    text = {
        "vocab_size": vocab_size,
        "hidden_size": _TEXT_HIDDEN,
        "intermediate_size": 2 * _TEXT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": _TEXT_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": 2,
        "hidden_size": _VISION_HIDDEN,
        "intermediate_size": 2 * _VISION_HIDDEN,
        "num_heads": 2,
        "out_hidden_size": _TEXT_HIDDEN,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [2, 3, 3],
        }
        vision |= {"patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1]}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    text["head_dim"] = _TEXT_HIDDEN // _TEXT_HEADS
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
    }
    vision |= {
        "patch_size": 16,
        "num_position_embeddings": 64,  # an 8 x 8 grid, interpolated to the image
        "deepstack_visual_indexes": [0],
    }
    return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)


def _set_generation_config(generation_config: Any, tokenizer: Any) -> None:
    """Stop on ``<|im_end|>`` or ``<|endoftext|>``, as Qwen's instruct checkpoints do."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    generation_config.bos_token_id = end_of_text
    generation_config.eos_token_id = [end_of_turn, end_of_text]
    generation_config.pad_token_id = end_of_text
