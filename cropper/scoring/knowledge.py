"""The knowledge score term (after CLIPCropping, JVCIR 2024): CLIP's sense of good and bad.

A crop scores high when its CLIP embedding is nearer descriptions of good composition
than descriptions of the flaws to avoid. The descriptions are data, one a line, in the
prompt folder's ``knowledge/good.txt`` and ``knowledge/bad.txt``, for a prompt engineer
to edit. The term is ``sigmoid(scale * (mean cos(crop, good) - mean cos(crop, bad)))``:
the two-class softmax of CLIP's logits (``scale`` 100 is CLIP's logit scale), in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropper.core.errors import ConfigError
from retrieval.embedder import unit_rows

#: The folder of a prompt folder holding ``good.txt`` and ``bad.txt``.
KNOWLEDGE_DIR = "knowledge"
#: CLIP's logit scale: the softmax of CLIP's logits over good and bad is this sigmoid.
CLIP_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class KnowledgePrompts:
    good: tuple[str, ...]
    bad: tuple[str, ...]


def load_knowledge_prompts(folder: str | Path) -> KnowledgePrompts:
    """``good.txt`` and ``bad.txt`` of ``folder``: one prompt a line, ``#`` comments."""
    sets = []
    for name in ("good.txt", "bad.txt"):
        path = Path(folder) / name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{path}: cannot read the knowledge prompts ({exc.__class__.__name__}); "
                "copy the shipped prompts/knowledge folder"
            ) from None
        prompts = tuple(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
        if not prompts:
            raise ConfigError(f"{path}: no prompts in it; write one description a line")
        sets.append(prompts)
    return KnowledgePrompts(*sets)


class KnowledgeTerm:
    """Scores crop embeddings against the good and bad prompts, in the embedder's space."""

    def __init__(self, embedder: Any, prompts: KnowledgePrompts, scale: float = CLIP_LOGIT_SCALE):
        if not callable(getattr(embedder, "embed_text", None)):
            name = getattr(embedder, "name", type(embedder).__name__)
            raise ConfigError(
                f"the knowledge term needs a text encoder, and embedder {name!r} has none: "
                "use an embedder with a text tower (an open_clip CLIP, or an hf: CLIP or SigLIP) "
                "or drop the knowledge weight"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"knowledge scale must be a positive number, got {scale!r}")
        self.prompts = prompts
        self.scale = float(scale)
        # Mean of unit text vectors: a crop's dot with it is its mean cosine with the set.
        self.good = _mean_direction(embedder, prompts.good)
        self.bad = _mean_direction(embedder, prompts.bad)

    @classmethod
    def from_folder(cls, embedder: Any, folder: str | Path) -> KnowledgeTerm:
        return cls(embedder, load_knowledge_prompts(folder))

    def score(self, crop_embeddings: np.ndarray) -> np.ndarray:
        """The term for each row of unit ``(N, dim)`` crop embeddings, in [0, 1]."""
        margin = crop_embeddings @ self.good - crop_embeddings @ self.bad
        return 1.0 / (1.0 + np.exp(-self.scale * margin))


def _mean_direction(embedder: Any, texts: tuple[str, ...]) -> np.ndarray:
    return unit_rows(np.asarray(embedder.embed_text(list(texts)), dtype=np.float64)).mean(axis=0)
