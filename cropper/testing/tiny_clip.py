"""A tiny random open_clip model on disk, loadable as ``local-dir:`` like a real checkpoint.

The folder holds ``open_clip_config.json`` (model and preprocess settings) and
``open_clip_model.safetensors``, the layout open_clip's ``local-dir:`` schema reads.
The text tower keeps CLIP's vocabulary size so open_clip's bundled tokenizer works
offline; everything else is as small as a transformer gets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cropper.core.errors import ConfigError
from cropper.core.fileio import atomic_path, write_text

#: CLIP's (OpenAI) image normalization, as real checkpoints record it.
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_config(embed_dim: int = 32) -> dict:
    """The ``open_clip_config.json`` content: a 1-layer ViT on 32 px, a 1-layer text tower."""
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "image_size": 32,
                "patch_size": 16,
                "width": 32,
                "head_width": 16,
                "layers": 1,
                "mlp_ratio": 2.0,
            },
            "text_cfg": {
                "context_length": 16,
                "vocab_size": 49408,  # open_clip's SimpleTokenizer emits ids up to this
                "width": 32,
                "heads": 2,
                "layers": 1,
                "mlp_ratio": 2.0,
            },
        },
        "preprocess_cfg": {
            "mean": list(_MEAN),
            "std": list(_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def build_tiny_clip(out_dir: str | os.PathLike, seed: int = 0, embed_dim: int = 32) -> str:
    """Write a tiny random open_clip model to ``out_dir``; return its ``local-dir:`` spec.

    The same ``seed`` and ``embed_dim`` always give the same weights.
    """
    return _write_clip(out_dir, tiny_clip_config(embed_dim), seed)


def build_random_clip(
    out_dir: str | os.PathLike, model_name: str = "ViT-B-32", seed: int = 0
) -> str:
    """A full-size open_clip architecture with random weights (nothing downloaded).

    It costs what the real model costs to run, so benchmarks use it in place of
    pretrained weights.
    """
    import open_clip

    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ConfigError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    config = tiny_clip_config()
    config["model_cfg"] = model_cfg
    return _write_clip(out_dir, config, seed)


def _write_clip(out_dir: str | os.PathLike, config: dict, seed: int) -> str:
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(out_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # A private RNG stream: building the model must not disturb the caller's seeds.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**config["model_cfg"])
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_text(folder / "open_clip_config.json", json.dumps(config, indent=2))
    return f"local-dir:{folder}"
