"""Tiny random transformers vision models on disk, loadable as ``hf:/folder`` like real ones.

``build_tiny_hf_vision(folder, kind)`` writes a checkpoint with ``save_pretrained`` (config,
safetensors weights, the image processor's ``preprocessor_config.json``, and for ``clip`` a
tokenizer) that :class:`retrieval.hf_embedder.HFVisionEmbedder` loads through the very
``AutoModel`` / ``AutoImageProcessor`` path a hub checkpoint takes. Kinds:

- ``"vit"``: a ``ViTModel`` with its pooler, no text (the ``pooler`` reading);
- ``"dinov2"``: a ``Dinov2Model``, no text, DINOv2's preprocessing (shortest edge + crop);
- ``"clip"``: a ``CLIPModel`` with a text tower and a small byte-level BPE tokenizer, so
  ``embed_text`` works (the ``image_features`` reading).

Every kind is 2 layers of width 32 on 32 px images in 8 px patches; the image vectors are
32-d (``clip``: ``projection_dim``, 16 by default). Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError, MissingDependencyError

#: The layers every kind shares: as small as a transformer gets and still runs.
_TOWER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
_SQUARE = {"height": 32, "width": 32}

#: What the tokenizer's merges are learned from; the byte alphabet covers any other text.
_CORPUS = (
    "a well composed photo with the subject on a third and a level horizon",
    "a badly cropped photo, the subject cut off at the edge, a tilted horizon",
    "a beautiful landscape, a portrait, a street scene, an animal, food, architecture",
)


def _vit(transformers: Any, seed_model: Callable[[Callable[[], Any]], Any]) -> tuple[Any, ...]:
    model = seed_model(lambda: transformers.ViTModel(transformers.ViTConfig(**_TOWER)))
    return model, transformers.ViTImageProcessor(size=_SQUARE)


def _dinov2(transformers: Any, seed_model: Callable[[Callable[[], Any]], Any]) -> tuple[Any, ...]:
    tower = {k: v for k, v in _TOWER.items() if k != "intermediate_size"}
    config = transformers.Dinov2Config(**tower, mlp_ratio=2)
    model = seed_model(lambda: transformers.Dinov2Model(config))
    processor = transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size=_SQUARE)
    return model, processor


def _clip(
    transformers: Any, seed_model: Callable[[Callable[[], Any]], Any], projection_dim: int = 16
) -> tuple[Any, ...]:
    tokenizer = _tokenizer(transformers)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    text = {k: v for k, v in _TOWER.items() if k not in ("image_size", "patch_size")}
    # CLIP pools the text at the first end token; pad with it, as OpenAI's tokenizer does.
    text.update(
        vocab_size=len(tokenizer),
        max_position_embeddings=16,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    config = transformers.CLIPConfig(
        text_config=text, vision_config=dict(_TOWER), projection_dim=projection_dim
    )
    model = seed_model(lambda: transformers.CLIPModel(config))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=_SQUARE)
    return model, processor, tokenizer


def _tokenizer(transformers: Any) -> Any:
    """A byte-level BPE with CLIP's start and end tokens around every text."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    start, end = "<|startoftext|>", "<|endoftext|>"
    bpe = Tokenizer(BPE(unk_token=end))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[start, end],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    ids = [(start, bpe.token_to_id(start)), (end, bpe.token_to_id(end))]
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=ids
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=start,
        eos_token=end,
        pad_token=end,
        unk_token=end,
        model_max_length=16,
    )


#: Kind -> builder of (model, image processor[, tokenizer]).
KINDS: dict[str, Callable[..., tuple[Any, ...]]] = {"vit": _vit, "dinov2": _dinov2, "clip": _clip}
_MODEL_TYPES = {"vit": "vit", "dinov2": "dinov2", "clip": "clip"}


def build_tiny_hf_vision(
    out_dir: str | os.PathLike[str], kind: str = "vit", seed: int = 0, **options: Any
) -> str:
    """Write a tiny random transformers vision model to ``out_dir``; return its ``hf:`` spec.

    The same ``kind``, ``seed`` and ``options`` (``clip``: ``projection_dim``) always give
    the same weights. A folder that already holds this kind is reused.
    """
    if kind not in KINDS:
        raise ConfigError(f"tiny transformers vision kind {kind!r}: use one of {sorted(KINDS)}")
    out = Path(out_dir).resolve()
    config_file = out / "config.json"
    if config_file.is_file():
        built = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        if built != _MODEL_TYPES[kind]:
            raise ConfigError(f"{out} already holds a {built} checkpoint, not {kind}")
        return f"hf:{out}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no checkpoint; pick an empty folder")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or "transformers", purpose="tiny vision models"
        ) from None

    def seed_model(make: Callable[[], Any]) -> Any:
        # A private RNG stream: building the model must not disturb the caller's seeds.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make().eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then renamed: a build stopped halfway leaves no half checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for part in KINDS[kind](transformers, seed_model, **options):
            part.save_pretrained(staging)
        staging.chmod(0o755)
        try:
            os.replace(staging, out)  # an empty target folder (pytest's mktemp) is replaced
        except OSError:
            if not config_file.is_file():  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"hf:{out}"
