"""The defaults behind ``Cropper()`` with no arguments, and the environment that overrides them."""

from __future__ import annotations

import os

#: The VLM when neither an argument nor ``CROPPER_VLM`` names one: an open model
#: run in-process by transformers, fetched from the hub on first use and cached.
DEFAULT_VLM = "Qwen/Qwen3-VL-8B-Instruct"

#: The CLIP model that embeds photos for retrieval and scoring (open_clip name:tag).
#: ViT-L/14 because the default aesthetic head was trained on its embeddings.
DEFAULT_CLIP = "ViT-L-14:openai"

#: The LAION improved aesthetic predictor (an MLP over CLIP ViT-L/14 embeddings),
#: as TRL's DDPO example publishes it on the hub.
DEFAULT_HEAD = "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"

ENV_VLM = "CROPPER_VLM"
ENV_CLIP = "CROPPER_CLIP"
ENV_HEAD = "CROPPER_HEAD"
ENV_INDEX = "CROPPER_INDEX"


def from_env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default
