"""cropper: crop photos well with a vision-language model and in-context learning.

>>> from cropper import Cropper
>>> result = Cropper(vlm="http://localhost:8000/v1").crop("photo.jpg", task="free")
>>> result.box, result.pixels, result.image

Importing cropper is light: torch, transformers, vllm, open_clip and faiss load
only when a part that needs them is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; loaded on first access.
_EXPORTS = {
    "Cropper": "cropper.loop",
    "CropConfig": "cropper.loop",
    "CropResult": "cropper.result",
    "Candidate": "cropper.result",
    "Round": "cropper.result",
    "Box": "cropper.boxes",
    "fit_aspect": "cropper.boxes",
    "parse_boxes": "cropper.parsing",
    "parse_reply": "cropper.parsing",
    "PromptSet": "cropper.prompts",
    "load_image": "cropper.images",
    "load_vlm": "cropper.vlm",
    "VLM": "cropper.vlm.base",
    "Sampling": "cropper.vlm.base",
    "CropperError": "cropper.errors",
    "ConfigError": "cropper.errors",
    "ImageError": "cropper.errors",
    "VLMError": "cropper.errors",
    "ExemplarIndexError": "cropper.errors",
    "WeightsNotFoundError": "cropper.errors",
}

__all__ = [
    "Box",
    "Candidate",
    "ConfigError",
    "CropConfig",
    "CropResult",
    "Cropper",
    "CropperError",
    "ExemplarIndexError",
    "ImageError",
    "PromptSet",
    "Round",
    "Sampling",
    "VLM",
    "VLMError",
    "WeightsNotFoundError",
    "fit_aspect",
    "load_image",
    "load_vlm",
    "parse_boxes",
    "parse_reply",
]

if TYPE_CHECKING:
    from cropper.boxes import Box, fit_aspect
    from cropper.errors import (
        ConfigError,
        CropperError,
        ExemplarIndexError,
        ImageError,
        VLMError,
        WeightsNotFoundError,
    )
    from cropper.images import load_image
    from cropper.loop import CropConfig, Cropper
    from cropper.parsing import parse_boxes, parse_reply
    from cropper.prompts import PromptSet
    from cropper.result import Candidate, CropResult, Round
    from cropper.vlm import load_vlm
    from cropper.vlm.base import VLM, Sampling


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cropper' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The exports load lazily, so the module's own names alone would hide them.
    return sorted({*globals(), *__all__})
