"""Any transformers vision model as the embedder: ``hf:ORG/NAME`` or ``hf:/path/to/folder``.

``HFVisionEmbedder("hf:facebook/dinov2-small")`` loads the checkpoint with ``AutoModel`` and
its preprocessing with ``AutoImageProcessor`` (from the Hugging Face cache when offline, or
from a folder written by ``save_pretrained``). The spec is the embedder's name, recorded in
bank manifests and head cards, so a bank or head built on it refuses any other embedder.

The image vector, the first of these the model offers (:attr:`HFVisionEmbedder.pooling`):

- ``"image_features"``: ``get_image_features``, the projected embedding of image-text
  models (CLIP, SigLIP), the space their text tower shares, so ``embed_text`` works too;
- ``"pooler"``: the model's ``pooler_output`` (DINOv2's is the layer-normed CLS token,
  ViT's a dense layer over it, a conv net's the pooled feature map); a pooler the checkpoint
  lacks weights for (a ViT saved without one) would be random, so such a model falls back to
- ``"cls"``: the first token of ``last_hidden_state``.

Vectors are L2-normalized float32. torch and transformers are imported when an embedder
is made; remote code is never run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cropper.core.errors import ConfigError, MissingDependencyError, WeightsNotFoundError
from cropper.core.weights import PICKLED_OBJECTS_ERRORS, pickled_weights_error
from retrieval.embedder import (
    FORWARD_LOCK,
    _one_line,
    _rgb,
    _unit,
    compute_dtype,
    embed_pixel_batches,
    forward_context,
)

log = logging.getLogger(__name__)

PREFIX = "hf:"

#: Text padding per model type: SigLIP was trained on text padded to its full length.
_TEXT_PADDING = {"siglip": "max_length", "siglip2": "max_length"}


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or "transformers", purpose="transformers vision embeddings"
        ) from None
    return torch, transformers


def _source(spec: str) -> tuple[str, bool]:
    """The folder or hub id a spec names, and whether it is a folder."""
    rest = spec[len(PREFIX) :].strip()
    if not rest:
        raise ConfigError(
            f"embedder {spec!r} names no model: write 'hf:ORG/NAME' (a hub id, e.g. "
            "hf:facebook/dinov2-small) or 'hf:/path/to/folder'"
        )
    folder = Path(rest).expanduser()
    if folder.is_dir():
        return str(folder), True
    if rest.startswith(("/", "./", "../", "~")) or rest.count("/") > 1:
        raise WeightsNotFoundError(
            f"embedder {spec!r}: no folder {folder}; point 'hf:/path' at a folder written by "
            "the model's and its image processor's save_pretrained"
        )
    return rest, False


class HFImageTransform:
    """PIL image -> ``(3, H, W)`` float tensor through a transformers image processor.

    Picklable (it holds only the processor), so bank builds run it in worker processes.
    """

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Image.Image) -> Any:
        return self.processor(images=_rgb(image), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageTransform({type(self.processor).__name__})"


class HFVisionEmbedder:
    """A transformers vision model mapping photos (and, CLIP-like, texts) to unit vectors.

    ``device`` defaults to CUDA when available, else the CPU; ``batch_size`` is how many
    images (or texts) go through the model at once.
    """

    def __init__(self, spec: str, *, device: Any = None, batch_size: int = 32):
        if not isinstance(spec, str) or not spec.strip().startswith(PREFIX):
            raise ConfigError(
                f"embedder spec {spec!r} is not 'hf:ORG/NAME' or 'hf:/path/to/folder'"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        torch, transformers = _imports()
        self._torch = torch
        self.name = spec.strip()
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = compute_dtype(self.device)  # float16 on CUDA (autocast), else float32
        self._source, self._is_folder = _source(self.name)
        self._processor, self._model, missing = self._load(transformers)
        self._model.to(self.device).eval()
        self._tokenizer = self._load_tokenizer(transformers)
        # One blank image settles the pooling and the width (configs name it differently:
        # projection_dim, hidden_size, hidden_sizes), and checks that the model runs.
        blank = self.transform(Image.new("RGB", (32, 32)))[None]
        self.pooling = self._choose_pooling(blank, missing)
        self.dim = int(self.embed_pixels(blank).shape[1])

    # -- loading -------------------------------------------------------------
    def _load(self, transformers: Any) -> tuple[Any, Any, set[str]]:
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(self._source)
            model, info = transformers.AutoModel.from_pretrained(
                self._source, output_loading_info=True
            )
        except PICKLED_OBJECTS_ERRORS as exc:  # a .bin that weights_only=True refused
            raise pickled_weights_error(f"embedder weights of {self.name!r}", exc) from None
        except OSError as exc:
            raise WeightsNotFoundError(self._not_found_message(exc)) from None
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"embedder {self.name!r} is not a vision model transformers can load "
                f"({_one_line(exc)}): use an image model such as hf:facebook/dinov2-small "
                "or hf:openai/clip-vit-base-patch32"
            ) from None
        missing = {str(k) for k in (info or {}).get("missing_keys", ())}
        # A missing pooler is handled (the CLS token is read instead); other gaps are random.
        gaps = sorted(k for k in missing if not k.startswith("pooler."))
        if gaps:
            log.warning(
                "embedder %s: %d weights missing from the checkpoint are random (%s)",
                self.name,
                len(gaps),
                ", ".join(gaps[:3]),
            )
        return processor, model, missing

    def _not_found_message(self, exc: BaseException) -> str:
        reason = _one_line(exc)
        if self._is_folder:
            return (
                f"embedder {self.name!r} could not be loaded ({reason}): the folder needs "
                "config.json, the weights (model.safetensors) and preprocessor_config.json, "
                "as the model's and its image processor's save_pretrained write them"
            )
        return (
            f"embedder {self.name!r} is not in the Hugging Face cache and could not be fetched "
            f"({reason}): where there is internet, run `hf download {self._source} --local-dir "
            "DIR`, then use hf:DIR"
        )

    def _load_tokenizer(self, transformers: Any) -> Any:
        """The tokenizer of a model with a text tower, else ``None`` (no ``embed_text``)."""
        if not callable(getattr(self._model, "get_text_features", None)):
            return None
        try:
            return transformers.AutoTokenizer.from_pretrained(self._source)
        except (OSError, ValueError, KeyError) as exc:
            log.warning(
                "embedder %s has a text tower but no loadable tokenizer (%s); texts cannot "
                "be embedded",
                self.name,
                _one_line(exc),
            )
            return None

    def _choose_pooling(self, pixels: Any, missing: set[str]) -> str:
        """How the image vector is read; see the module docstring."""
        if callable(getattr(self._model, "get_image_features", None)):
            return "image_features"
        try:
            with FORWARD_LOCK, forward_context(self):
                output = self._model(pixel_values=pixels.to(self.device))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"embedder {self.name!r} does not run on images ({_one_line(exc)}): use an "
                "image model such as hf:facebook/dinov2-small"
            ) from None
        if getattr(output, "pooler_output", None) is not None and not any(
            k.startswith("pooler.") for k in missing
        ):
            return "pooler"
        return "cls"

    # -- properties ----------------------------------------------------------
    @property
    def transform(self) -> HFImageTransform:
        """PIL image -> ``(3, H, W)`` float tensor, the model's preprocessing; picklable.

        Bank builds run it in worker processes, then hand the batch to :meth:`embed_pixels`.
        """
        return HFImageTransform(self._processor)

    @property
    def preprocess_info(self) -> dict[str, Any]:
        """Image size, mean, std, interpolation, resize mode, processor and pooling."""
        p = self._processor
        size = dict(getattr(p, "size", None) or {})
        crop = dict(getattr(p, "crop_size", None) or {})
        if getattr(p, "do_center_crop", False) and "height" in crop:
            image_size: Any = [crop["height"], crop["width"]]
        elif "height" in size:
            image_size = [size["height"], size["width"]]
        else:
            image_size = size.get("shortest_edge")
        return {
            "image_size": image_size,
            "mean": [float(v) for v in getattr(p, "image_mean", None) or ()],
            "std": [float(v) for v in getattr(p, "image_std", None) or ()],
            "interpolation": _interpolation(getattr(p, "resample", None)),
            "resize_mode": "shortest" if "shortest_edge" in size else "squash",
            "processor": type(p).__name__,
            "pooling": self.pooling,
        }

    @property
    def embed_text(self) -> Any:
        """``texts -> (N, dim)`` unit float32 text embeddings; only models with a text tower.

        An attribute error otherwise, so ``getattr(embedder, "embed_text", None)`` tells.
        """
        if self._tokenizer is None:
            raise AttributeError(f"embedder {self.name!r} has no text tower: embed_text")
        return self._embed_text

    def __repr__(self) -> str:
        return (
            f"HFVisionEmbedder({self.name!r}, dim={self.dim}, pooling={self.pooling!r}, "
            f"device={str(self.device)!r}, dtype={self.dtype!r})"
        )

    # -- embedding -----------------------------------------------------------
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, dim)`` L2-normalized float32 image embeddings, in batches of ``batch_size``."""
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        transform, size = self.transform, self.batch_size
        parts = []
        for i in range(0, len(images), size):
            pixels = self._torch.stack([transform(im) for im in images[i : i + size]])
            parts.append(self.embed_pixels(pixels))
        return np.concatenate(parts, axis=0)

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        """``(N, dim)`` unit float32 embeddings of a ``(N, 3, H, W)`` :attr:`transform` batch."""
        return embed_pixel_batches(self, pixels, self._image_vectors)

    def _image_vectors(self, pixels: Any) -> Any:
        """``(N, D)`` features of a pixel batch, by :attr:`pooling`."""
        if self.pooling == "image_features":
            out = _pooled(self._model.get_image_features(pixel_values=pixels))
            if out.ndim != 2:  # a VLM's get_image_features gives a vector a patch
                raise ConfigError(
                    f"embedder {self.name!r} gives image features of shape {tuple(out.shape)}, "
                    "not one vector a photo: use an image encoder (CLIP, SigLIP, DINOv2, ViT)"
                )
        else:
            output = self._model(pixel_values=pixels)
            if self.pooling == "pooler":
                out = output.pooler_output
            else:
                hidden = output.last_hidden_state
                if hidden.ndim != 3:
                    raise ConfigError(
                        f"embedder {self.name!r} gives no pooled output and its hidden states "
                        f"have shape {tuple(hidden.shape)}, not (N, tokens, D): use another model"
                    )
                out = hidden[:, 0]
        return out.reshape(len(pixels), -1)  # poolers of conv nets keep (N, C, 1, 1)

    def _embed_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        config = getattr(self._model.config, "text_config", None) or self._model.config
        padding = _TEXT_PADDING.get(getattr(self._model.config, "model_type", ""), True)
        length = getattr(config, "max_position_embeddings", None)
        parts = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(
                texts[i : i + self.batch_size],
                padding=padding,
                truncation=True,
                max_length=length,
                return_tensors="pt",
            ).to(self.device)
            with FORWARD_LOCK, forward_context(self):
                parts.append(_unit(_pooled(self._model.get_text_features(**tokens))))
        return np.concatenate(parts, axis=0)


def _pooled(features: Any) -> Any:
    """The feature tensor: transformers 4 returns it, 5 a model output holding it pooled."""
    return getattr(features, "pooler_output", features)


def _interpolation(resample: Any) -> str | None:
    if resample is None:
        return None
    try:
        return Image.Resampling(int(resample)).name.lower()
    except (TypeError, ValueError):
        return str(resample)
