"""VLM backends, one module each, picked from a string by a registry.

``load_vlm("http://host:8000/v1")`` talks to an OpenAI-compatible server;
``load_vlm("vllm:Qwen/Qwen3-VL-8B-Instruct")`` runs vLLM's engine in-process;
anything else is a hub id or a local folder for transformers. Backends import
their heavy dependencies only when built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cropper.errors import ConfigError
from cropper.vlm.base import VLM, Sampling


def _server(spec: str, **kwargs: Any) -> VLM:
    from cropper.vlm.openai_server import OpenAIServerVLM

    return OpenAIServerVLM(spec, **kwargs)


def _vllm(spec: str, **kwargs: Any) -> VLM:
    from cropper.vlm.vllm_engine import VLLMEngineVLM

    return VLLMEngineVLM(spec.removeprefix("vllm:"), **kwargs)


def _transformers(spec: str, **kwargs: Any) -> VLM:
    from cropper.vlm.transformers_engine import TransformersVLM

    return TransformersVLM(spec.removeprefix("hf:"), **kwargs)


#: Prefix of a VLM spec -> the backend factory it selects. The empty prefix is the default.
BACKENDS: dict[str, Callable[..., VLM]] = {
    "http://": _server,
    "https://": _server,
    "vllm:": _vllm,
    "hf:": _transformers,
    "": _transformers,
}


def backend_for(spec: str) -> Callable[..., VLM]:
    """The factory a spec selects; a malformed spec fails here, before anything loads."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"vlm must be a server URL, a model id or folder, or a VLM instance; got {spec!r}"
        )
    spec = spec.strip()
    if "://" in spec and not spec.startswith(("http://", "https://")):
        raise ConfigError(f"VLM URL {spec!r} must start with http:// or https://")
    prefix = max((p for p in BACKENDS if spec.startswith(p)), key=len)
    return BACKENDS[prefix]


def load_vlm(spec: str | VLM, **kwargs: Any) -> VLM:
    """Build the backend a spec names (a URL, ``vllm:MODEL``, or a hub id or folder)."""
    if isinstance(spec, VLM):
        return spec
    return backend_for(spec)(spec.strip(), **kwargs)


__all__ = ["BACKENDS", "VLM", "Sampling", "backend_for", "load_vlm"]
