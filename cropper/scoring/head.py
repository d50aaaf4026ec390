"""The aesthetic head: a small MLP that scores a crop from its L2-normalized CLIP embedding.

Two formats load:

- our own: ``x.safetensors`` with a JSON card ``x.json`` beside it (the card is also kept
  in the safetensors header), holding the :class:`HeadConfig` and free-form metadata;
- the LAION improved-aesthetic-predictor ``.pth`` state dict (CLIP ViT-L/14, raw scores
  roughly 1-10), read with ``torch.load(..., weights_only=True)``;
- the LAION-Aesthetics predictor v1 ``.pth`` (``weight`` and ``bias`` of one
  ``Linear(dim, 1)`` over OpenAI CLIP ViT-B/32, B/16 or L/14 embeddings, the same 1-10
  rating scale), read the same way. Which CLIP it reads comes from the file's SHA-256
  (:data:`LAION_V1_HEADS`), else from its name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropper.core.defaults import DEFAULT_HEAD  # noqa: F401 (re-exported here)
from cropper.core.errors import ConfigError
from cropper.core.fileio import atomic_path
from cropper.core.weights import (
    HF_HUB_PREFIX,
    PICKLED_OBJECTS_ERRORS,
    pickled_weights_error,
    resolve_weights,
)
from retrieval.embedder import split_spec

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


CARD_FORMAT = "cropper-aesthetic-head"
CARD_VERSION = 1
_HEADER_KEY = "cropper_head_card"  # the card, as JSON, in the safetensors header

# The LAION predictor: Linear layers at these indices of its nn.Sequential (dropouts between,
# no activations) and their output widths; the input width is the CLIP embedding's.
_LAION_INDICES = (0, 2, 4, 6, 7)
_LAION_WIDTHS = (1024, 128, 64, 16, 1)
_LAION_EMBEDDER = "ViT-L-14:openai"
_LAION_RANGE = (1.0, 10.0)  # LAION's 1-10 rating scale, for the v1 heads too
_ACTIVATIONS = ("none", "relu")

#: The published LAION-Aesthetics predictor v1 heads (github.com/LAION-AI/aesthetic-predictor,
#: MIT) by SHA-256: file name and the CLIP whose embeddings each reads. B/32 and B/16 are both
#: 512-d, so the file, not the width, tells which CLIP a head was made for.
LAION_V1_HEADS: dict[str, tuple[str, str]] = {
    "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f": (
        "sa_0_4_vit_b_32_linear.pth",
        "ViT-B-32:openai",
    ),
    "8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0": (
        "sa_0_4_vit_b_16_linear.pth",
        "ViT-B-16:openai",
    ),
    "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba": (
        "sa_0_4_vit_l_14_linear.pth",
        "ViT-L-14:openai",
    ),
}
# A v1 head whose hash is unknown (re-saved, retrained): its file name may still say.
_V1_NAME_HINTS = {
    "vit_b_32": "ViT-B-32:openai",
    "vit_b_16": "ViT-B-16:openai",
    "vit_l_14": "ViT-L-14:openai",
}
_CLIP_WIDTHS = {"ViT-B-32:openai": 512, "ViT-B-16:openai": 512, "ViT-L-14:openai": 768}

#: Other names of the same embedder. transformers' OpenAI CLIPs embed images by
#: ``get_image_features``: the projected embedding of the very weights open_clip loads as
#: ``:openai``, with the same preprocessing, so a head made for one fits the other.
EMBEDDER_ALIASES: dict[str, str] = {
    "hf:openai/clip-vit-base-patch32": "ViT-B-32:openai",
    "hf:openai/clip-vit-base-patch16": "ViT-B-16:openai",
    "hf:openai/clip-vit-large-patch14": "ViT-L-14:openai",
}


def canonical_embedder(name: str | None) -> str | None:
    """One spelling per embedder: ``hf:openai/clip-vit-base-patch32`` -> ``ViT-B-32:openai``.

    open_clip specs are written ``MODEL:TAG`` with the model's ``/`` as ``-`` (``ViT-B/32``).
    """
    if not isinstance(name, str):
        return None
    name = EMBEDDER_ALIASES.get(name.strip(), name.strip())
    if name.startswith("hf:"):
        return name
    model, tag = split_spec(name)
    return f"{model}:{tag}" if tag else model


def same_embedder(a: str | None, b: str | None) -> bool:
    """Whether two embedder names give the same embeddings (see :data:`EMBEDDER_ALIASES`)."""
    return a is not None and canonical_embedder(a) == canonical_embedder(b)


@dataclass(frozen=True)
class HeadConfig:
    """The shape of a head and how to read its output."""

    dims: tuple[int, ...]  # layer widths, the embedding dim first and 1 last
    activation: str = "none"  # between linear layers: "none" (the LAION head) or "relu"
    output_range: tuple[float, float] = (0.0, 1.0)  # raw scores here map linearly onto [0, 1]
    embedder: str | None = None  # the embedder spec it was trained on, e.g. "ViT-L-14:openai"

    def __post_init__(self) -> None:
        try:
            dims = tuple(int(d) for d in self.dims)
            low, high = (float(v) for v in self.output_range)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"bad HeadConfig {self}: {exc}") from None
        if len(dims) < 2 or min(dims) < 1 or dims[-1] != 1:
            raise ConfigError(f"HeadConfig dims must be 2+ positive widths ending in 1, got {dims}")
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(
                f"HeadConfig activation must be one of {_ACTIVATIONS}, got {self.activation!r}"
            )
        if not high > low:
            raise ConfigError(f"HeadConfig output_range needs low < high, got {(low, high)}")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "output_range", (low, high))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "head card") -> HeadConfig:
        """Build from a card's ``config`` mapping; unknown or missing keys are errors."""
        known = {"dims", "activation", "output_range", "embedder"}
        if not isinstance(data, Mapping) or "dims" not in data or set(data) - known:
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(
                f"{source}: config must hold dims and optionally {sorted(known - {'dims'})}, "
                f"found {found}"
            )
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dims"], out["output_range"] = list(self.dims), list(self.output_range)
        return out


def _build_module(config: HeadConfig) -> torch.nn.Module:
    """The MLP, its linear layers named ``linear0``, ``linear1``, ... whatever the activation."""
    from torch import nn

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    pairs = list(zip(config.dims[:-1], config.dims[1:], strict=True))
    for i, (width_in, width_out) in enumerate(pairs):
        layers[f"linear{i}"] = nn.Linear(width_in, width_out)
        if config.activation == "relu" and i < len(pairs) - 1:
            layers[f"relu{i}"] = nn.ReLU()
    return nn.Sequential(layers)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(state: Mapping[str, Any], limit: int = 8) -> str:
    """``key(shape)`` for the first few entries, for error messages."""
    items = [f"{k}{tuple(getattr(v, 'shape', ()))}" for k, v in list(state.items())[:limit]]
    more = f" and {len(state) - limit} more" if len(state) > limit else ""
    return ", ".join(items) + more if items else "nothing"


def _shape_diff(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> str:
    """Expected vs found, entry by entry: what is missing, unexpected or misshapen."""
    parts = [f"missing {k}{v}" for k, v in expected.items() if k not in found]
    parts += [f"unexpected {k}{v}" for k, v in found.items() if k not in expected]
    parts += [
        f"{k} is {found[k]}, expected {v}"
        for k, v in expected.items()
        if k in found and found[k] != v
    ]
    return "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more" if len(parts) > 6 else "")


class AestheticHead:
    """An MLP over L2-normalized embeddings; :meth:`score` maps its output to [0, 1]."""

    def __init__(
        self,
        config: HeadConfig,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ):
        import torch

        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.source = source
        self.module = _build_module(config)
        if state_dict is not None:
            self._load_state(state_dict)
        self.module.to(torch.float32).eval()

    def _load_state(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        expected = {k: tuple(v.shape) for k, v in self.module.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state_dict.items()}
        if expected != found:
            raise ConfigError(
                f"{self.source or 'head weights'}: weights do not fit dims {self.config.dims}: "
                f"{_shape_diff(expected, found)}"
            )
        bad = [k for k, v in state_dict.items() if not bool(v.float().isfinite().all())]
        if bad:
            # NaN weights score every crop NaN, and the best crop would be chosen at random.
            raise ConfigError(
                f"{self.source or 'head weights'}: {', '.join(bad[:4])} hold NaN or infinite "
                "values; the file is damaged or the training diverged: use another head"
            )
        self.module.load_state_dict({k: v.float() for k, v in state_dict.items()})

    @property
    def dim(self) -> int:
        """The embedding dimension the head reads."""
        return self.config.dims[0]

    @property
    def embedder(self) -> str | None:
        return self.config.embedder

    def raw(self, embeddings: np.ndarray) -> np.ndarray:
        """The MLP's raw outputs, shape ``(N,)``, for ``(N, dim)`` embeddings (re-normalized)."""
        import torch

        x = np.asarray(embeddings, dtype=np.float32)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(
                f"aesthetic head expects embeddings of shape (N, {self.dim}), got {x.shape}"
            )
        # The head was trained on unit vectors; normalizing again is a no-op for those.
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)))
        return out[:, 0].numpy().astype(np.float64)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Scores in [0, 1], shape ``(N,)``: raw outputs mapped by ``output_range`` and clipped."""
        low, high = self.config.output_range
        return np.clip((self.raw(embeddings) - low) / (high - low), 0.0, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def __repr__(self) -> str:
        return (
            f"AestheticHead(dims={self.config.dims}, activation={self.config.activation!r}, "
            f"embedder={self.embedder!r}, source={self.source!r})"
        )


# -- loading --------------------------------------------------------------------------------


def load_head(spec: str | os.PathLike[str]) -> AestheticHead:
    """Load a head from a path or weights spec (:func:`cropper.core.weights.resolve_weights`)."""
    text = os.fspath(spec)
    path = resolve_weights(text)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, text)
    if suffix in (".pth", ".pt", ".bin"):
        return _load_laion(path)
    raise ConfigError(
        f"head {text!r}: unknown format {suffix or '(no suffix)'}: expected .safetensors "
        "(with its .json card) or a LAION aesthetic-predictor .pth (v1 or improved)"
    )


def _load_safetensors(path: Path, spec: str) -> AestheticHead:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise ConfigError(
            f"cannot read head {path} as safetensors ({_one_line(exc)}): the file is damaged or "
            "not safetensors; save heads with cropper.scoring.head.save_head"
        ) from None
    card = _read_card(path, spec, header)
    if not isinstance(card, Mapping) or "config" not in card:
        raise ConfigError(
            f"head card for {path}: expected a JSON object with 'config', found {card!r:.80}"
        )
    version = card.get("version", 1)
    if card.get("format", CARD_FORMAT) != CARD_FORMAT or not (
        isinstance(version, int) and version <= CARD_VERSION
    ):
        raise ConfigError(
            f"head card for {path}: format {card.get('format')!r} version {card.get('version')!r} "
            f"is not {CARD_FORMAT!r} <= {CARD_VERSION}: upgrade cropper"
        )
    config = HeadConfig.from_dict(card["config"], source=f"head card for {path}")
    metadata = card.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ConfigError(
            f"head card for {path}: metadata must be a JSON object, found {metadata!r:.80}"
        )
    return AestheticHead(config, state, metadata=metadata, source=str(path))


def _read_card(path: Path, spec: str, header: Mapping[str, str]) -> Any:
    """The card beside the weights (on the Hub too for a Hub spec), else the header's."""
    beside = path.with_suffix(".json")
    if not beside.is_file() and spec.startswith(HF_HUB_PREFIX):
        try:
            beside = resolve_weights(spec.removesuffix(path.suffix) + ".json")
        except ConfigError:
            logger.debug("no card beside %s on the Hub; using the safetensors header", spec)
    try:
        if beside.is_file():
            return json.loads(beside.read_text(encoding="utf-8"))
        if _HEADER_KEY in header:
            return json.loads(header[_HEADER_KEY])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"head card for {path} is not valid JSON: {_one_line(exc)}") from None
    raise ConfigError(
        f"head {path} has no card: expected {beside.name} beside it holding its HeadConfig "
        "(save heads with cropper.scoring.head.save_head)"
    )


def _laion_shapes(in_dim: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the LAION predictor reading ``in_dim``-d embeddings."""
    widths = (in_dim, *_LAION_WIDTHS)
    shapes: dict[str, tuple[int, ...]] = {}
    for n, i in enumerate(_LAION_INDICES):
        shapes[f"layers.{i}.weight"] = (widths[n + 1], widths[n])
        shapes[f"layers.{i}.bias"] = (widths[n + 1],)
    return shapes


def _load_laion(path: Path) -> AestheticHead:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PICKLED_OBJECTS_ERRORS as exc:
        raise pickled_weights_error(path, exc) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ConfigError(
            f"cannot read {path} as a torch state dict ({_one_line(exc)}): the file is damaged "
            "or not a .pth state dict"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        found = _describe(state) if isinstance(state, Mapping) else type(state).__name__
        raise ConfigError(f"{path}: expected a dict of tensors (a state dict), found {found}")
    if set(state) == {"weight", "bias"}:
        return _load_laion_v1(path, state)
    first = state.get("layers.0.weight")
    in_dim = int(first.shape[1]) if first is not None and first.ndim == 2 else 768
    expected = _laion_shapes(in_dim)
    found_shapes = {k: tuple(v.shape) for k, v in state.items()}
    if found_shapes != expected:
        chain = "->".join(map(str, (in_dim, *_LAION_WIDTHS)))
        raise ConfigError(
            f"{path} is not a LAION aesthetic-predictor state dict (Linear {chain} at "
            f"layers.0/2/4/6/7): {_shape_diff(expected, found_shapes)}"
        )
    config = HeadConfig(
        dims=(in_dim, *_LAION_WIDTHS),
        activation="none",
        output_range=_LAION_RANGE,
        # The published weights read CLIP ViT-L/14 (768-d) embeddings; another width is
        # a retrained head whose embedder we cannot know.
        embedder=_LAION_EMBEDDER if in_dim == 768 else None,
    )
    renamed = {
        f"linear{n}.{p}": state[f"layers.{i}.{p}"]
        for n, i in enumerate(_LAION_INDICES)
        for p in ("weight", "bias")
    }
    metadata = {"format": "laion-improved-aesthetic-predictor", "raw_scale": "about 1-10"}
    return AestheticHead(config, renamed, metadata=metadata, source=str(path))


def _load_laion_v1(path: Path, state: Mapping[str, torch.Tensor]) -> AestheticHead:
    """LAION-Aesthetics predictor v1: ``Linear(dim, 1)`` as ``weight`` (1, dim), ``bias`` (1,)."""
    weight, bias = state["weight"], state["bias"]
    if weight.ndim != 2 or weight.shape[0] != 1 or tuple(bias.shape) != (1,):
        raise ConfigError(
            f"{path} is not a LAION aesthetic-predictor v1 state dict (one Linear(dim, 1): "
            f"weight (1, dim), bias (1,)): found weight {tuple(weight.shape)}, "
            f"bias {tuple(bias.shape)}"
        )
    dim = int(weight.shape[1])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # a few kB
    known, embedder = LAION_V1_HEADS.get(digest, (None, None))
    if embedder is None:
        name = path.name.lower().replace("-", "_")
        embedder = next((e for hint, e in _V1_NAME_HINTS.items() if hint in name), None)
        if embedder is not None and _CLIP_WIDTHS[embedder] != dim:
            logger.info("%s: named for %s but reads %d-d embeddings", path, embedder, dim)
            embedder = None
        if embedder is None and dim == _CLIP_WIDTHS[_LAION_EMBEDDER]:
            embedder = _LAION_EMBEDDER  # the only 768-d OpenAI CLIP a v1 head was made for
        if embedder is None:
            logger.warning(
                "%s: a %d-d LAION v1 head of unknown origin (not a published file, and its "
                "name says no vit_b_32/vit_b_16 of that width): which CLIP it reads cannot be "
                "checked, so it runs on any %d-d embedder",
                path,
                dim,
                dim,
            )
    config = HeadConfig(
        dims=(dim, 1), activation="none", output_range=_LAION_RANGE, embedder=embedder
    )
    metadata = {"format": "laion-aesthetic-predictor-v1", "raw_scale": "about 1-10"}
    metadata |= {"sha256": digest, **({"published_as": known} if known else {})}
    renamed = {"linear0.weight": weight, "linear0.bias": bias}
    return AestheticHead(config, renamed, metadata=metadata, source=str(path))


# -- saving and making ------------------------------------------------------------------------


def save_head(
    head: AestheticHead, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``path`` (``.safetensors``) and its card ``path.json``, each atomically.

    ``metadata`` (free-form, JSON-serializable: metrics, data, normalisation) replaces the
    head's own when given.
    """
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        raise ConfigError(f"save_head writes .safetensors files, got {str(target)!r}")
    card = {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "config": head.config.to_dict(),
        "metadata": dict(head.metadata if metadata is None else metadata),
    }
    try:
        card_text = json.dumps(card, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"head metadata for {target} must be JSON-serializable: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        target, lambda tmp: save_file(head.state_dict(), tmp, metadata={_HEADER_KEY: card_text})
    )
    _atomic_write(
        target.with_suffix(".json"),
        lambda tmp: Path(tmp).write_text(card_text + "\n", encoding="utf-8"),
    )
    return target


def _atomic_write(target: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``target``, then rename it over."""
    with atomic_path(target) as tmp:
        write(str(tmp))


def random_head(dim: int, seed: int = 0, embedder: str | None = None) -> AestheticHead:
    """A deterministic random head ``dim -> 32 -> 1`` (ReLU), for tests and notebooks."""
    import torch

    rng = np.random.default_rng(seed)
    config = HeadConfig(
        dims=(dim, 32, 1), activation="relu", output_range=(-2.0, 2.0), embedder=embedder
    )
    state = {}
    for i, (width_in, width_out) in enumerate(zip(config.dims[:-1], config.dims[1:], strict=True)):
        # Unit-norm inputs: std 1 in the first layer keeps activations of order 1.
        std = 1.0 if i == 0 else float(np.sqrt(2.0 / width_in))
        state[f"linear{i}.weight"] = torch.from_numpy(
            rng.normal(0, std, (width_out, width_in)).astype(np.float32)
        )
        state[f"linear{i}.bias"] = torch.zeros(width_out)
    return AestheticHead(
        config, state, metadata={"random_seed": seed}, source=f"random_head({dim}, seed={seed})"
    )
