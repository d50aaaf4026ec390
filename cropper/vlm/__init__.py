"""VLM backends, one module each, picked from a string by a registry.

``load_vlm("http://host:8000/v1")`` talks to an OpenAI-compatible server;
``load_vlm("vllm:Qwen/Qwen3-VL-8B-Instruct")`` runs vLLM's engine in-process;
anything else is a hub id or a local folder for transformers. Backends import
their heavy dependencies only when built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cropper.core.errors import ConfigError
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
    scheme = _URL_SCHEME.match(spec)
    if scheme and f"{scheme.group(1).lower()}:" not in BACKENDS and not Path(spec).exists():
        _check_url(spec, scheme.group(1).lower())
        spec = f"{scheme.group(1).lower()}{spec[len(scheme.group(1)) :]}"
    prefix = max((p for p in BACKENDS if spec.startswith(p)), key=len)
    return BACKENDS[prefix]


# A scheme of two letters or more ("C:" is a Windows drive, and a folder), as in "ftp:",
# "javascript:" or "file:"; hub ids ("Qwen/Qwen3-VL-8B-Instruct") hold no colon.
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def _check_url(spec: str, scheme: str) -> None:
    """Only http(s) URLs are served, and with no password in them (it would be logged)."""
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"VLM URL {_redacted(spec)!r}: only http:// or https:// URLs are served (an "
            "OpenAI-compatible server such as `vllm serve`); give a local model by its folder "
            "or hub id, or as vllm:MODEL"
        )
    try:
        parts = urlsplit(spec)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"VLM URL {_redacted(spec)!r} is malformed ({exc})") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"VLM URL {_redacted(spec)!r} carries credentials, which would show in logs and "
            "reports: give the key with api_key= / --api-key or $CROPPER_API_KEY instead"
        )
    if not parts.hostname:
        raise ConfigError(
            f"VLM URL {_redacted(spec)!r} names no host: write e.g. http://localhost:8000/v1"
        )


def _redacted(spec: str) -> str:
    """The URL without anything between its ``//`` and an ``@`` (a user name or password)."""
    return re.sub(r"(?<=//)[^/@]*@", "***@", spec)


def load_vlm(spec: str | VLM, **kwargs: Any) -> VLM:
    """Build the backend a spec names (a URL, ``vllm:MODEL``, or a hub id or folder)."""
    if isinstance(spec, VLM):
        return spec
    return backend_for(spec)(spec.strip(), **kwargs)


__all__ = ["BACKENDS", "VLM", "Sampling", "backend_for", "load_vlm"]
