"""The defaults behind ``Cropper()`` with no arguments, and the environment that overrides them."""

from __future__ import annotations

import os

#: The VLM when neither an argument nor ``CROPPER_VLM`` names one, on a machine with a
#: CUDA GPU: an open model run in-process by transformers, fetched from the hub on first
#: use and cached.
DEFAULT_VLM = "Qwen/Qwen3-VL-8B-Instruct"

#: The CLIP model that embeds photos for retrieval and scoring (open_clip name:tag), with
#: a GPU. ViT-L/14 because the best aesthetic head was trained on its embeddings.
DEFAULT_CLIP = "ViT-L-14:openai"

#: On a machine without a CUDA GPU: the smallest Qwen3-VL and CLIP ViT-B/32 (with its
#: LAION v1 head), so that a crop takes minutes rather than an hour
#: (benchmarks/cpu_default.py measures it).
CPU_VLM = "Qwen/Qwen3-VL-2B-Instruct"
CPU_CLIP = "ViT-B-32:openai"

#: The LAION improved aesthetic predictor (an MLP over CLIP ViT-L/14 embeddings),
#: as TRL's DDPO example publishes it on the hub.
DEFAULT_HEAD = "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"

_LAION_V1 = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/"

#: The default aesthetic head per CLIP: the improved predictor for ViT-L/14, the
#: LAION-Aesthetics predictor v1 (MIT, one linear layer) for ViT-B/32 and B/16, fetched
#: from GitHub and pinned by SHA-256. Another CLIP gets no head unless one is given.
DEFAULT_HEADS: dict[str, str] = {
    "ViT-L-14:openai": DEFAULT_HEAD,
    "ViT-B-32:openai": _LAION_V1 + "sa_0_4_vit_b_32_linear.pth"
    "#sha256=c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f",
    "ViT-B-16:openai": _LAION_V1 + "sa_0_4_vit_b_16_linear.pth"
    "#sha256=8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0",
}

ENV_VLM = "CROPPER_VLM"
ENV_CLIP = "CROPPER_CLIP"
ENV_HEAD = "CROPPER_HEAD"
ENV_INDEX = "CROPPER_INDEX"


def from_env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def has_cuda() -> bool:
    """Whether torch sees a CUDA GPU (torch is imported here, when a default is needed)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def default_vlm() -> str:
    """The VLM for this machine: :data:`DEFAULT_VLM` with a GPU, else :data:`CPU_VLM`."""
    return DEFAULT_VLM if has_cuda() else CPU_VLM


def default_clip() -> str:
    """The CLIP for this machine: :data:`DEFAULT_CLIP` with a GPU, else :data:`CPU_CLIP`."""
    return DEFAULT_CLIP if has_cuda() else CPU_CLIP
