"""Thin factories that turn ``Cropper``'s arguments into its parts.

Each argument may be a ready object, a string naming one, ``None`` (leave the
part out), or :data:`DEFAULT` (the environment, else the documented default).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cropper import defaults
from cropper.errors import ConfigError, CropperError

log = logging.getLogger(__name__)


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: "Use the environment, else the documented default."
DEFAULT: Any = _Default()


def vlm_spec(vlm: Any) -> Any:
    """The VLM a ``vlm=`` argument names, checked before anything heavy loads.

    ``None`` or ``"none"`` (also as ``$CROPPER_VLM``) means no VLM at all: returns ``None``.
    """
    from cropper.vlm import VLM, backend_for

    if isinstance(vlm, VLM):
        return vlm
    spec = defaults.from_env(defaults.ENV_VLM, defaults.DEFAULT_VLM) if vlm is DEFAULT else vlm
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return None
    backend_for(spec)
    return spec


def make_vlm(vlm: Any, api_key: str | None = None, options: dict | None = None) -> Any:
    """The VLM, loaded; ``None`` when the spec names none.

    ``options`` go to a server backend's constructor (``timeout=``, ``max_retries=``).
    """
    from cropper.vlm import load_vlm

    spec = vlm_spec(vlm)
    if spec is None:
        return None
    kwargs = dict(options or {})
    server = isinstance(spec, str) and "://" in spec
    if kwargs and not server:
        raise ConfigError(
            f"VLM {spec!r} takes no {', '.join(sorted(kwargs))}: those options apply to a "
            "server URL (http://host:8000/v1)"
        )
    if api_key and server:
        kwargs["api_key"] = api_key
    return load_vlm(spec, **kwargs)


def index_embedder_name(index: Any) -> str | None:
    """The embedder a bank folder was built with, read from its manifest."""
    if index is None or not isinstance(index, (str, Path)):
        return getattr(index, "embedder_name", None)
    import json

    try:
        manifest = json.loads((Path(index) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # ExemplarIndex.load reports what is wrong with the folder
    name = manifest.get("embedder") if isinstance(manifest, dict) else None
    return name if isinstance(name, str) and name.strip() else None


def make_embedder(clip: Any, index: Any = None) -> Any:
    """The embedder (open_clip, or transformers by ``hf:``); by default the bank's, for both."""
    if clip is None or (isinstance(clip, str) and not clip.strip()):
        return None
    if clip is DEFAULT:
        clip = index_embedder_name(index) or defaults.from_env(
            defaults.ENV_CLIP, defaults.DEFAULT_CLIP
        )
    if not isinstance(clip, str):
        return clip  # a ready embedder: anything with name, dim and embed()
    from retrieval.embedder import load_embedder

    return load_embedder(clip)


def make_head(head: Any, embedder: Any) -> Any:
    """The aesthetic head, or ``None``; a default that cannot be had is left out, with a note."""
    from cropper.head import AestheticHead, canonical_embedder, load_head

    if head is None or isinstance(head, AestheticHead):
        return head
    if head is not DEFAULT:
        return load_head(head)
    spec = defaults.from_env(defaults.ENV_HEAD, None)
    if spec is not None:
        return load_head(spec)
    name = getattr(embedder, "name", None) if embedder is not None else None
    spec = defaults.DEFAULT_HEADS.get(canonical_embedder(name) or "")
    if spec is None:
        log.info("no aesthetic head for embedder %s; pass head= to use one", name)
        return None
    try:
        return load_head(spec)
    except CropperError as exc:
        log.warning("default aesthetic head unavailable (%s); scoring without it", exc)
        return None


def index_spec(index: Any) -> Any:
    """The bank an ``index=`` argument names: ``$CROPPER_INDEX`` for the default."""
    return defaults.from_env(defaults.ENV_INDEX, None) if index is DEFAULT else index


def check_index(index: Any) -> None:
    """Refuse, before any model loads, a bank folder that cannot be used (one line)."""
    if isinstance(index, (str, Path)):
        from retrieval.index import check_bank

        check_bank(index)


def make_index(index: Any, embedder: Any) -> Any:
    if index is None or not isinstance(index, (str, Path)):
        return index
    from retrieval.index import ExemplarIndex

    if embedder is None:
        raise ConfigError(
            f"index {index} needs a CLIP embedder to search it; do not pass clip=None"
        )
    return ExemplarIndex.load(index, embedder=embedder)


def make_knowledge(embedder: Any, folder: Path, weights: dict, head: Any) -> Any:
    """The knowledge term when some task weighs it, or to stand in for a missing head.

    Without an aesthetic head the scorer gives the aesthetic weight to the knowledge term
    (CLIP's sense of good composition), so it is built then too, when the embedder has a
    text tower; otherwise ``None``. ``weights`` are the tasks' :class:`Weights`.
    """
    from cropper.knowledge import KnowledgeTerm
    from cropper.scoring import TASK_WEIGHTS

    if embedder is None:
        return None
    if any(w.knowledge > 0 for w in weights.values()):
        return KnowledgeTerm.from_folder(embedder, folder)
    wants_aesthetic = any(w.aesthetic > 0 for w in {**TASK_WEIGHTS, **weights}.values())
    if head is not None or not wants_aesthetic:
        return None
    if not callable(getattr(embedder, "embed_text", None)):
        return None
    try:
        return KnowledgeTerm.from_folder(embedder, folder)
    except CropperError as exc:
        log.info("no knowledge term to stand in for the aesthetic head: %s", exc)
        return None
