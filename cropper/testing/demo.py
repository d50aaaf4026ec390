"""Tiny random models for notebooks and demos: the whole loop offline, in seconds.

``Cropper(**demo_models())`` runs every real part of the loop (a Qwen2.5-VL through
transformers with constrained decoding, open_clip, an aesthetic head) on random weights.
Its crops are arbitrary; only the plumbing is real. The models are built once into a cache
folder and reused.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

#: Where the demo models are kept when ``folder`` is not given (else ``~/.cache/cropper/demo``).
ENV_DEMO_DIR = "CROPPER_DEMO_DIR"

_CLIP_DIM = 32  # tiny_clip_config's embedding width, known without loading the model


def demo_dir() -> Path:
    """``$CROPPER_DEMO_DIR``, else ``~/.cache/cropper/demo``, else a folder in the temp dir."""
    env = os.environ.get(ENV_DEMO_DIR)
    if env:
        return Path(env).expanduser()
    home = Path.home() / ".cache" / "cropper" / "demo"
    try:
        home.mkdir(parents=True, exist_ok=True)
        return home
    except OSError:  # a read-only or missing home: the demo still runs
        return Path(tempfile.gettempdir()) / "cropper-demo"


def demo_models(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build (once) and return the tiny models as ``Cropper`` arguments.

    Returns ``{"vlm": folder, "clip": "local-dir:...", "head": path, "coords": "pixel"}``:
    Qwen2.5-VL writes boxes in pixels of the photo it sees, hence ``coords``. Models already
    in ``folder`` (default :func:`demo_dir`) are reused.
    """
    from cropper.testing.tiny_clip import build_tiny_clip
    from cropper.testing.tiny_vlm import build_tiny_qwen_vl

    root = Path(folder).expanduser() if folder is not None else demo_dir()
    root.mkdir(parents=True, exist_ok=True)
    vlm = build_tiny_qwen_vl(root / "qwen2_5_vl", family="qwen2_5_vl")
    clip_dir = (root / "clip").resolve()
    if (clip_dir / "open_clip_config.json").is_file():
        clip = f"local-dir:{clip_dir}"  # build_tiny_clip writes the config last
    else:
        clip = build_tiny_clip(clip_dir, embed_dim=_CLIP_DIM)
    return {"vlm": str(vlm), "clip": clip, "head": str(_head(root, clip)), "coords": "pixel"}


def _head(root: Path, clip: str) -> Path:
    """A random head tied to ``clip``; rebuilt when the folder moved and the spec changed."""
    from cropper.scoring.head import random_head, save_head

    path = root / "head.safetensors"
    card = path.with_suffix(".json")
    if path.is_file() and card.is_file():
        try:
            if json.loads(card.read_text())["config"]["embedder"] == clip:
                return path
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable card: write the head again
    return save_head(random_head(_CLIP_DIM, embedder=clip), path)


def demo_photo(seed: int = 0, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A small synthetic photo (coloured discs), different for each ``seed``."""
    from cropper.testing.synthetic import synthetic_photo

    return synthetic_photo(seed, size=size, discs=8)
