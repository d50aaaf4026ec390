"""Thin factories that turn ``Cropper``'s arguments into its parts.

Each argument may be a ready object, a string naming one, ``None`` (leave the
part out), or :data:`DEFAULT` (the environment, else the documented default).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropper.core import defaults
from cropper.core.errors import ConfigError, CropperError, WeightsNotFoundError

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
    spec = defaults.from_env(defaults.ENV_VLM, None) if vlm is DEFAULT else vlm
    if vlm is DEFAULT and spec is None:
        spec = defaults.default_vlm()
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return None
    backend_for(spec)
    return spec


def make_vlm(vlm: Any, api_key: str | None = None, options: dict | None = None) -> Any:
    """The VLM, loaded; ``None`` when the spec names none.

    ``options`` go to the backend's constructor (a server's ``timeout=``, ``max_retries=``);
    the registry (:mod:`cropper.vlm`) refuses those it does not take. ``api_key`` goes to a
    backend that takes one.
    """
    from cropper.vlm import entry_for, load_vlm

    spec = vlm_spec(vlm)
    if spec is None:
        return None
    kwargs = dict(options or {})
    if api_key and isinstance(spec, str) and "api_key" in entry_for(spec).options:
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


def clip_spec(clip: Any, index: Any = None) -> Any:
    """The embedder a ``clip=`` argument names.

    For DEFAULT: the bank's, else ``$CROPPER_CLIP``, else the one for this machine
    (:func:`cropper.core.defaults.default_clip`).
    """
    if clip is not DEFAULT:
        return clip
    return (
        index_embedder_name(index)
        or defaults.from_env(defaults.ENV_CLIP, None)
        or defaults.default_clip()
    )


def make_embedder(clip: Any, index: Any = None) -> Any:
    """The embedder (open_clip, or transformers by ``hf:``); by default the bank's, for both."""
    if clip is None or (isinstance(clip, str) and not clip.strip()):
        return None
    if clip is DEFAULT:
        clip = clip_spec(clip, index)
    if not isinstance(clip, str):
        return clip  # a ready embedder: anything with name, dim and embed()
    from retrieval.embedder import load_embedder

    return load_embedder(clip)


def make_head(
    head: Any, embedder: Any, *, clip: Any = None, missing: list[MissingModel] | None = None
) -> Any:
    """The aesthetic head, or ``None``; a default that cannot be had is left out, with a note.

    ``clip`` names the embedder when it could not be loaded, so that the default head is
    still known; a default head not on this machine is added to ``missing`` when given.
    """
    from cropper.scoring.head import AestheticHead, canonical_embedder, load_head

    if head is None or isinstance(head, AestheticHead):
        return head
    if head is not DEFAULT:
        return load_head(head)
    spec = defaults.from_env(defaults.ENV_HEAD, None)
    if spec is not None:
        return load_head(spec)
    name = getattr(embedder, "name", None) if embedder is not None else clip
    spec = defaults.DEFAULT_HEADS.get(canonical_embedder(name) or "") if name else None
    if spec is None:
        log.info("no aesthetic head for embedder %s; pass head= to use one", name)
        return None
    try:
        return load_head(spec)
    except WeightsNotFoundError:
        if missing is not None:
            missing.append(missing_head(spec))  # the caller says so, once
        else:
            log.warning("default aesthetic head %s is not on this machine; scoring without", spec)
        return None
    except CropperError as exc:
        log.warning("default aesthetic head unavailable (%s); scoring without it", exc)
        return None


# -- models that are not on this machine --------------------------------------------------


@dataclass(frozen=True)
class MissingModel:
    """A model that is neither here nor downloadable now, and how to get it."""

    flag: str  # the command-line flag that names it: --vlm, --clip or --head
    spec: str  # what was asked for
    get: str  # how to download it where there is internet
    use: str  # how to point cropper at the downloaded copy


def missing_vlm(spec: Any) -> MissingModel | None:
    """The VLM as a missing model when it is a hub id not in the cache and the hub is off."""
    if not isinstance(spec, str) or "://" in spec or spec.startswith(("vllm:", "hf:")):
        return None
    if Path(spec).expanduser().exists() or not _hub_off():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return None
    except (ImportError, ValueError):
        pass  # not a hub id it can look up: it is missing all the same
    return MissingModel(
        "--vlm", spec, f"`hf download {spec} --local-dir DIR`", "--vlm DIR (Python: vlm=DIR)"
    )


def missing_clip(spec: str) -> MissingModel:
    """A CLIP (open_clip ``NAME:TAG`` or ``hf:ORG/MODEL``) as a missing model."""
    if spec.startswith("hf:"):
        repo = spec.removeprefix("hf:")
        return MissingModel(
            "--clip", spec, f"`hf download {repo} --local-dir DIR`", "--clip hf:DIR (clip=)"
        )
    repo = _open_clip_repo(spec)
    get = f"`hf download {repo} --local-dir DIR`" if repo else "download its open_clip weights"
    return MissingModel("--clip", spec, get, "--clip local-dir:DIR (clip=)")


def missing_head(spec: str) -> MissingModel:
    """An aesthetic head (``hf-hub:ORG/REPO/FILE`` or a pinned URL) as a missing model."""
    if spec.startswith("hf-hub:"):
        org, repo, *file = spec.removeprefix("hf-hub:").split("/")
        name = "/".join(file)
        get = f"`hf download {org}/{repo} {name} --local-dir DIR`"
        return MissingModel("--head", spec, get, f"--head DIR/{name} (head=)")
    url = spec.split("#", 1)[0]
    return MissingModel("--head", url, "download it", "--head FILE (head=)")


def missing_models_error(missing: list[MissingModel]) -> WeightsNotFoundError:
    """One error listing every model this machine lacks, as command-line flags."""
    order = {"--vlm": 0, "--clip": 1, "--head": 2}
    lines = [
        f"{len(missing)} model{'s' * (len(missing) > 1)} not on this machine, and the Hugging "
        "Face hub cannot be reached (or HF_HUB_OFFLINE is set); where there is internet:"
    ]
    for m in sorted(missing, key=lambda m: order.get(m.flag, 9)):
        lines.append(f"  {m.flag} {m.spec}: {m.get}, then {m.use}")
    lines.append(
        "With nothing downloaded: --vlm none --clip none crops by saliency, and --demo runs "
        "the whole pipeline on tiny random models (their boxes are arbitrary)."
    )
    return WeightsNotFoundError("\n".join(lines))


def _hub_off() -> bool:
    """Whether the hub is off: by the environment, or by huggingface_hub's own setting."""
    import sys

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(hub, "HF_HUB_OFFLINE", False))


def _open_clip_repo(spec: str) -> str | None:
    """The hub repo open_clip fetches ``NAME:TAG`` from, if it says."""
    name, _, tag = spec.partition(":")
    try:
        import open_clip

        config = open_clip.get_pretrained_cfg(name, tag) or {}
    except Exception:  # any: the message is still useful without the repo
        return None
    repo = config.get("hf_hub")
    return repo.rstrip("/") if isinstance(repo, str) and repo else None


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
    from cropper.scoring.knowledge import KnowledgeTerm
    from cropper.scoring.scorer import TASK_WEIGHTS

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
