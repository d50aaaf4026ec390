"""The CLIP image (and text) embedder behind retrieval and scoring, through open_clip.

A model is named by one spec string, which is also its name in bank manifests:

- ``"MODEL:PRETRAINED"``: an open_clip model name and pretrained tag
  (``"ViT-L-14:openai"``, ``"ViT-B-32:laion2b_s34b_b79k"``), or a weights file for
  ``PRETRAINED``;
- ``"hf-hub:org/repo"``: a hub repo holding ``open_clip_config.json`` and weights;
- ``"local-dir:/path"``: a folder holding the same, e.g. a downloaded copy.

Any transformers vision model serves too, as ``"hf:ORG/NAME"`` or ``"hf:/path/to/folder"``
(:mod:`retrieval.hf_embedder`). :func:`load_embedder` makes either from its spec; every
caller that takes a spec goes through it.

torch and open_clip are imported when an embedder is made, never at import time.

Bank builds decode photos in worker processes: :attr:`ClipEmbedder.transform`
(picklable, PIL image to tensor) runs there, :meth:`ClipEmbedder.embed_pixels`
on the stacked batch here.

On a CUDA GPU the forward passes run in half precision (:func:`compute_dtype`); on a CPU
in float32. Every embedder's forward passes take :data:`FORWARD_LOCK`, one at a time in
the process (see there why).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cropper.core.errors import ConfigError, MissingDependencyError, WeightsNotFoundError
from cropper.core.weights import PICKLED_OBJECTS_ERRORS, pickled_weights_error

log = logging.getLogger(__name__)

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"

#: Held by every embedder's forward pass, so the process runs one at a time.
#:
#: torch splits each op over all the CPU cores (its intra-op pool). Two threads that embed
#: at once (the batch lanes of :func:`cropper.agent.batching.pipelined`) would each ask for
#: every core, twice the threads the machine has. ``torch.set_num_threads`` cannot cap one
#: lane: it sets the whole process's pool. Taking turns gives each pass every core, which
#: is what a per-lane cap aims at without halving a lone pass; a lane that waits here still
#: parses, renders prompts and talks to its server meanwhile. A GPU runs one pass at a
#: time anyway.
FORWARD_LOCK = threading.Lock()


def compute_dtype(device: Any) -> str:
    """The precision an embedder on ``device`` computes in: ``"float16"`` on CUDA, else float32.

    Half precision halves a GPU's time and memory for a CLIP with no change to the ranking
    that matters here; CPUs have no fast float16 (and bfloat16 autocast ran 6x slower than
    float32 on the development machine's CPU), so they keep float32.
    """
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    return "float16" if kind == "cuda" else "float32"


def forward_context(embedder: Any) -> Any:
    """What a forward pass runs inside: no gradients and, on CUDA, float16 autocast."""
    torch = embedder._torch
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    if compute_dtype(embedder.device) == "float16":
        stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.float16))
    return stack


@runtime_checkable
class Embedder(Protocol):
    """What retrieval needs of an image embedder; a toy one in a test will do."""

    name: str  # stable, recorded in bank manifests
    dim: int

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, dim)`` L2-normalized float32 embeddings."""
        ...


#: Spec prefix -> ``"module:Class"`` of the embedder that reads it; any other spec is open_clip.
EMBEDDERS: dict[str, str] = {"hf:": "retrieval.hf_embedder:HFVisionEmbedder"}
SPEC_HELP = (
    "an open_clip model ('ViT-L-14:openai', 'hf-hub:org/repo', 'local-dir:/path') or a "
    "transformers vision model ('hf:facebook/dinov2-small', 'hf:/path/to/folder')"
)


def load_embedder(spec: str, *, device: Any = None, batch_size: int = 32) -> Embedder:
    """The embedder a spec names: ``hf:`` a transformers model, anything else open_clip.

    The spec becomes the embedder's ``name``, recorded in bank manifests and head cards.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"embedder spec {spec!r} is empty: use {SPEC_HELP}")
    spec = spec.strip()
    target = next((t for prefix, t in EMBEDDERS.items() if spec.startswith(prefix)), None)
    if target is None:
        return ClipEmbedder(spec, device=device, batch_size=batch_size)
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(spec, device=device, batch_size=batch_size)


def split_spec(spec: str) -> tuple[str, str | None]:
    """The model and pretrained tag of a spec: ``"ViT-L-14:openai"`` -> ``("ViT-L-14", "openai")``.

    ``hf-hub:`` and ``local-dir:`` specs (and names without a tag) are their own model, no tag.
    """
    spec = spec.strip()
    if spec.startswith((HF_HUB, LOCAL_DIR)):
        return spec, None
    model, sep, tag = spec.partition(":")
    return (model.replace("/", "-"), tag) if sep and tag else (spec, None)


def _imports() -> tuple[Any, Any]:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", purpose="CLIP embeddings") from None
    try:
        import open_clip
    except ImportError:
        raise MissingDependencyError("open_clip_torch", purpose="CLIP embeddings") from None
    return torch, open_clip


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ClipEmbedder:
    """An open_clip model that maps photos (and texts) to unit vectors.

    ``device`` defaults to CUDA when available, else the CPU; ``batch_size`` is
    how many images (or texts) go through the model at once.
    """

    def __init__(self, spec: str = "ViT-L-14:openai", *, device: Any = None, batch_size: int = 32):
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"CLIP spec {spec!r} is empty: use e.g. 'ViT-L-14:openai'")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        torch, open_clip = _imports()
        self._torch, self._open_clip = torch, open_clip
        self.name = spec.strip()
        self.model_name, self.pretrained = split_spec(self.name)
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = compute_dtype(self.device)  # float16 on CUDA (autocast), else float32
        self._model_name, kwargs = self._resolve(self.name)
        self._model, self._preprocess = self._create(kwargs)
        self._tokenizer: Any = None
        self.dim = self._output_dim()

    # -- loading -------------------------------------------------------------
    def _resolve(self, spec: str) -> tuple[str, dict[str, Any]]:
        """The open_clip model name and keyword arguments for a spec; checks what it can first."""
        if spec.startswith(HF_HUB):
            return spec, {}
        if spec.startswith(LOCAL_DIR):
            folder = Path(spec[len(LOCAL_DIR) :]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise WeightsNotFoundError(
                    f"CLIP model {spec!r}: no open_clip_config.json in {folder}; point "
                    "'local-dir:/path' at a folder holding open_clip_config.json and its weights"
                )
            return f"{LOCAL_DIR}{folder}", {}
        model, sep, tag = spec.partition(":")
        model = model.replace("/", "-")
        known = self._open_clip.list_models()
        if model not in known:
            close = difflib.get_close_matches(model, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"CLIP model {model!r} is not an open_clip model name{hint}: use "
                "'MODEL:PRETRAINED' (e.g. 'ViT-L-14:openai'), 'hf-hub:org/repo' "
                "or 'local-dir:/path'; for a transformers model, 'hf:ORG/NAME'"
            )
        tags = self._open_clip.list_pretrained_tags_by_model(model)
        if not sep or not tag:
            raise ConfigError(
                f"CLIP spec {spec!r} names no pretrained weights: write '{model}:TAG' with a "
                f"TAG of {', '.join(tags) or '(none known; use local-dir:/path)'}"
            )
        pcfg = self._open_clip.get_pretrained_cfg(model, tag)
        if not pcfg and not Path(tag).is_file():
            raise ConfigError(
                f"CLIP spec {spec!r}: {tag!r} is neither a pretrained tag of {model} nor a file; "
                f"tags: {', '.join(tags) or '(none)'}"
            )
        # Weights trained with QuickGELU (OpenAI's) give wrong embeddings without it, and
        # open_clip only warns about the mismatch.
        return model, {"pretrained": tag, "force_quick_gelu": bool(pcfg.get("quick_gelu"))}

    def _create(self, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        try:
            model, _, preprocess = self._open_clip.create_model_and_transforms(
                self._model_name, device=self.device, require_pretrained=True, **kwargs
            )
        except PICKLED_OBJECTS_ERRORS as exc:  # weights_only=True refused the file
            raise pickled_weights_error(f"CLIP weights of {self.name!r}", exc) from None
        except (RuntimeError, OSError, ValueError) as exc:
            raise WeightsNotFoundError(self._not_found_message(exc)) from None
        model.eval()
        return model, preprocess

    def _not_found_message(self, exc: BaseException) -> str:
        spec, reason = self.name, _one_line(exc)
        if spec.startswith(LOCAL_DIR):
            return (
                f"CLIP model {spec!r} could not be loaded ({reason}): the folder needs "
                "open_clip_config.json and weights (open_clip_model.safetensors)"
            )
        if spec.startswith(HF_HUB):
            fetch = spec[len(HF_HUB) :]
        else:
            model, _, tag = spec.partition(":")
            pcfg = self._open_clip.get_pretrained_cfg(model.replace("/", "-"), tag) or {}
            fetch = (pcfg.get("hf_hub") or pcfg.get("url") or spec).rstrip("/")
        return (
            f"CLIP model {spec!r} is not cached and could not be fetched ({reason}): "
            f"fetch {fetch} once with internet (HF_HUB_OFFLINE unset), or download it and "
            "pass 'local-dir:/path' to a folder with open_clip_config.json and the weights"
        )

    def _output_dim(self) -> int:
        dim = getattr(getattr(self._model, "visual", None), "output_dim", None)
        if isinstance(dim, int) and dim > 0:
            return dim
        # Towers that do not record it (timm, ResNet): embed one blank image.
        return int(self._embed_batch([Image.new("RGB", (8, 8))]).shape[1])

    # -- properties ----------------------------------------------------------
    @property
    def preprocess_info(self) -> dict[str, Any]:
        """Image size, mean, std, interpolation and resize mode, for bank manifests."""
        cfg = dict(getattr(self._model.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size")
        return {
            "image_size": list(size) if isinstance(size, (tuple, list)) else size,
            "mean": [float(v) for v in cfg.get("mean", ())],
            "std": [float(v) for v in cfg.get("std", ())],
            "interpolation": cfg.get("interpolation"),
            "resize_mode": cfg.get("resize_mode"),
        }

    @property
    def transform(self) -> Any:
        """PIL image -> ``(3, H, W)`` float tensor, the model's preprocessing; picklable.

        Bank builds run it in worker processes, then hand the batch to :meth:`embed_pixels`.
        """
        return self._preprocess

    def __repr__(self) -> str:
        return (
            f"ClipEmbedder({self.name!r}, dim={self.dim}, device={str(self.device)!r}, "
            f"dtype={self.dtype!r})"
        )

    # -- embedding -----------------------------------------------------------
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, dim)`` L2-normalized float32 image embeddings, in batches of ``batch_size``."""
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._embed_batch(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` L2-normalized float32 text embeddings, in batches of ``batch_size``."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._tokenizer is None:
            self._tokenizer = self._open_clip.get_tokenizer(self._model_name)
        parts = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(texts[i : i + self.batch_size]).to(self.device)
            with FORWARD_LOCK, forward_context(self):
                parts.append(_unit(self._model.encode_text(tokens)))
        return np.concatenate(parts, axis=0)

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        """``(N, dim)`` unit float32 embeddings of a ``(N, 3, H, W)`` :attr:`transform` batch."""
        return embed_pixel_batches(self, pixels, self._model.encode_image)

    def _embed_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = self._torch.stack([self._preprocess(_rgb(im)) for im in images])
        return self.embed_pixels(pixels)


def embed_pixel_batches(embedder: Any, pixels: Any, encode: Any) -> np.ndarray:
    """Unit float32 rows of ``encode`` over a ``(N, 3, H, W)`` ``embedder.transform`` batch.

    Runs in batches of ``embedder.batch_size`` on ``embedder.device``, each inside
    :data:`FORWARD_LOCK` and :func:`forward_context`; both embedder kinds share it and differ
    only in ``encode``.
    """
    torch = embedder._torch
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise ConfigError(
            f"embed_pixels() takes an (N, 3, H, W) tensor made by .transform, got "
            f"{getattr(pixels, 'shape', type(pixels).__name__)}"
        )
    if len(pixels) == 0:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    parts = []
    size = embedder.batch_size
    for i in range(0, len(pixels), size):
        # non_blocking pays off when a DataLoader hands over pinned memory.
        batch = pixels[i : i + size].to(embedder.device, non_blocking=True)
        with FORWARD_LOCK, forward_context(embedder):
            parts.append(_unit(encode(batch)))
    return np.concatenate(parts, axis=0)


def _rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ConfigError(
            f"embed() takes PIL images, got {type(image).__name__}; "
            "load photos with cropper.core.images.load_image"
        )
    return image if image.mode == "RGB" else image.convert("RGB")


def _unit(features: Any) -> np.ndarray:
    """float32 rows of unit length (normalized here, after any half-precision cast)."""
    arr = features.float().cpu().numpy().astype(np.float32, copy=False)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
