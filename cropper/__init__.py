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
    "Cropper": "cropper.agent.loop",
    "CropConfig": "cropper.agent.loop",
    "CropResult": "cropper.agent.result",
    "RatioCrops": "cropper.agent.result",
    "Candidate": "cropper.agent.result",
    "Round": "cropper.agent.result",
    "Box": "cropper.core.boxes",
    "fit_aspect": "cropper.core.boxes",
    "parse_boxes": "cropper.agent.parsing",
    "parse_reply": "cropper.agent.parsing",
    "PromptSet": "cropper.agent.prompts",
    "load_image": "cropper.core.images",
    "load_dataset": "cropper.data.datasets",
    "load_vlm": "cropper.vlm",
    "VLM": "cropper.vlm.base",
    "Sampling": "cropper.vlm.base",
    "CropperError": "cropper.core.errors",
    "ConfigError": "cropper.core.errors",
    "ImageError": "cropper.core.errors",
    "VLMError": "cropper.core.errors",
    "ExemplarIndexError": "cropper.core.errors",
    "WeightsNotFoundError": "cropper.core.errors",
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
    "RatioCrops",
    "Round",
    "Sampling",
    "VLM",
    "VLMError",
    "WeightsNotFoundError",
    "fit_aspect",
    "load_dataset",
    "load_image",
    "load_vlm",
    "parse_boxes",
    "parse_reply",
]

if TYPE_CHECKING:
    from cropper.agent.loop import CropConfig, Cropper
    from cropper.agent.parsing import parse_boxes, parse_reply
    from cropper.agent.prompts import PromptSet
    from cropper.agent.result import Candidate, CropResult, RatioCrops, Round
    from cropper.core.boxes import Box, fit_aspect
    from cropper.core.errors import (
        ConfigError,
        CropperError,
        ExemplarIndexError,
        ImageError,
        VLMError,
        WeightsNotFoundError,
    )
    from cropper.core.images import load_image
    from cropper.data.datasets import load_dataset
    from cropper.vlm import load_vlm
    from cropper.vlm.base import VLM, Sampling


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cropper' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The exports load lazily, so the module's own names alone would hide them.
    return sorted({*globals(), *__all__})
