"""The exemplar bank: photos with good crops, searched by image-embedding similarity.

Names load on first use, so ``import retrieval`` stays light (no torch, faiss or open_clip).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClipEmbedder": "retrieval.embedder",
    "Embedder": "retrieval.embedder",
    "load_embedder": "retrieval.embedder",
    "HFVisionEmbedder": "retrieval.hf_embedder",
    "Exemplar": "retrieval.exemplars",
    "read_jsonl": "retrieval.exemplars",
    "merge_banks": "retrieval.merge",
    "ExemplarIndex": "retrieval.index",
    "Hit": "retrieval.index",
    "ExemplarCrop": "retrieval.selection",
    "select_crops": "retrieval.selection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
