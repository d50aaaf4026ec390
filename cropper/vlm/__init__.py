"""VLM backends, one module each, picked from a string by a registry.

``load_vlm("http://host:8000/v1")`` talks to an OpenAI-compatible server;
``load_vlm("vllm:Qwen/Qwen3-VL-8B-Instruct")`` runs vLLM's engine in-process;
anything else is a hub id or a local folder for transformers. Backends import
their heavy dependencies only when built. The registry (:data:`BACKENDS`) also
knows the options each backend takes, so that one it does not take is refused
before anything loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Backend:
    """A registry entry: how to build a backend from a spec, and the options it takes."""

    build: Callable[..., VLM]  # (spec, **options) -> the backend
    what: str  # what such a spec is, for messages
    options: frozenset[str] = frozenset()  # keyword options its constructor takes
    engine_options: bool = False  # passes other keywords to its engine as they are
    foreign: frozenset[str] = frozenset()  # refused all the same: never its engine's

    def refused(self, options: Iterable[str]) -> list[str]:
        """The options, of those given, that this backend does not take; sorted."""
        return sorted(
            name
            for name in set(options)
            if name in self.foreign or not (self.engine_options or name in self.options)
        )


#: The options of OpenAIServerVLM (cropper.vlm.openai_server), named here so that they are
#: checked before httpx loads.
SERVER_OPTIONS = frozenset({
    "model", "api_key", "timeout", "max_retries", "concurrency", "max_concurrency",
    "image_format", "structured_outputs", "backoff_initial", "backoff_max", "image_cache_mb",
})  # fmt: skip
#: The options of TransformersVLM (cropper.vlm.transformers_engine).
TRANSFORMERS_OPTIONS = frozenset({
    "device", "dtype", "batch_size", "constrained", "trust_remote_code", "static_cache",
    "prefix_cache", "prefix_cache_mb",
})  # fmt: skip

_SERVER = Backend(_server, "a server URL (http://host:8000/v1)", SERVER_OPTIONS)
_TRANSFORMERS = Backend(
    _transformers, "a model run by transformers (a hub id or folder)", TRANSFORMERS_OPTIONS
)

#: Prefix of a VLM spec -> the backend it selects. The empty prefix is the default.
BACKENDS: dict[str, Backend] = {
    "http://": _SERVER,
    "https://": _SERVER,
    # vllm.LLM's engine arguments (max_model_len, gpu_memory_utilization, ...), as they are;
    # a server's are refused, as a mistake (--timeout with a vllm: model).
    "vllm:": Backend(
        _vllm, "a model run by vLLM (vllm:MODEL)", engine_options=True, foreign=SERVER_OPTIONS
    ),
    "hf:": _TRANSFORMERS,
    "": _TRANSFORMERS,
}


def backend_for(spec: str) -> Callable[..., VLM]:
    """The factory a spec selects; a malformed spec fails here, before anything loads."""
    return entry_for(spec).build


def entry_for(spec: str) -> Backend:
    """The registry's entry for a spec; a malformed spec fails here, before anything loads."""
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


def check_options(spec: str | VLM, options: Iterable[str]) -> None:
    """Refuse, in one line, options the backend a spec names does not take."""
    options = list(options)
    if not options:
        return
    if isinstance(spec, VLM):
        raise ConfigError(
            f"VLM {spec.name!r} is built already and takes no {', '.join(sorted(options))}: "
            "pass them to its constructor"
        )
    refused = entry_for(spec).refused(options)
    if not refused:
        return
    # Where they belong, if one kind of backend takes them all.
    others = [b for b in dict.fromkeys(BACKENDS.values()) if not b.engine_options]
    home = next((b for b in others if not b.refused(refused)), None)
    if home is not None:
        where = f"those options apply to {home.what}"
    else:
        where = f"it takes {', '.join(sorted(entry_for(spec).options)) or 'none'}"
    raise ConfigError(f"VLM {spec!r} takes no {', '.join(refused)}: {where}")


def load_vlm(spec: str | VLM, **kwargs: Any) -> VLM:
    """Build the backend a spec names (a URL, ``vllm:MODEL``, or a hub id or folder).

    ``kwargs`` are the backend's options; one it does not take is refused
    (:func:`check_options`) before it loads. A ready :class:`VLM` is returned as it is.
    """
    check_options(spec, kwargs)
    if isinstance(spec, VLM):
        return spec
    return entry_for(spec).build(spec.strip(), **kwargs)


__all__ = [
    "BACKENDS",
    "VLM",
    "Backend",
    "Sampling",
    "backend_for",
    "check_options",
    "entry_for",
    "load_vlm",
]
