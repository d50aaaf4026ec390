"""Every rated crop of a dataset as a unit CLIP embedding, computed once and cached.

:func:`embed_crops` embeds each photo's crops (a row each) through the shared pipeline of
:mod:`retrieval.embedding_cache`, the one that builds the exemplar bank: each photo is
decoded once (in DataLoader workers when the embedder offers ``transform`` and
``embed_pixels``) and its crops go to the embedder in batches that span photos. The result
is cached, so a second run with the same inputs embeds nothing::

    CACHE/<dataset>-<split>-<fingerprint>.npy    (crops, dim) float32; NaN rows: skipped photos
    CACHE/<dataset>-<split>-<fingerprint>.json   what it holds; written last, so it marks done
    CACHE/<dataset>-<split>-<fingerprint>.part/  chunks while embedding, so a stop resumes

The fingerprint (:func:`retrieval.embedding_cache.fingerprint`) covers the embedder (name,
dim, preprocessing), each photo (path, size, modification time) and its crop boxes; not
the scores, which the embeddings do not depend on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropper.core.errors import ConfigError
from cropper.core.fileio import atomic_path, write_text
from retrieval.embedding_cache import (
    DEFAULT_CHUNK_SIZE,
    ChunkStore,
    Item,
    check_settings,
    embed_items,
    fingerprint,
)
from retrieval.exemplars import first_few

if TYPE_CHECKING:
    from retrieval.exemplars import Exemplar

log = logging.getLogger(__name__)

CACHE_FORMAT = "cropper-crop-embeddings"
CACHE_VERSION = 1


# -- rated crops ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatedCrops:
    """Embedded crops of several photos with their MOS; rows grouped by photo, in order."""

    vectors: np.ndarray  # (N, dim) float32 unit rows
    mos: np.ndarray  # (N,) float64, one per row
    counts: np.ndarray  # (P,) int, crops of each photo; they sum to N
    names: tuple[str, ...]  # (P,) the photos, for reports

    def __post_init__(self) -> None:
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        mos = np.asarray(self.mos, dtype=np.float64).reshape(-1)
        counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        names = tuple(str(n) for n in self.names)
        if vectors.ndim != 2 or len(vectors) != len(mos) or int(counts.sum()) != len(mos):
            raise ConfigError(
                f"RatedCrops: vectors {vectors.shape}, {len(mos)} MOS and counts summing to "
                f"{int(counts.sum())} must agree (one row, one MOS a crop)"
            )
        if len(names) != len(counts) or (counts < 1).any():
            raise ConfigError(
                f"RatedCrops: {len(names)} names for {len(counts)} photos, each needs 1+ crops"
            )
        if not (np.isfinite(vectors).all() and np.isfinite(mos).all()):
            raise ConfigError("RatedCrops: vectors and MOS must be finite numbers")
        for key, value in (("vectors", vectors), ("mos", mos), ("counts", counts)):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "names", names)

    @classmethod
    def from_groups(
        cls, vectors: Sequence[np.ndarray], mos: Sequence[Sequence[float]], names: Sequence[str]
    ) -> RatedCrops:
        """From one ``(n_i, dim)`` array and ``n_i`` MOS per photo."""
        if not vectors:
            raise ConfigError("RatedCrops needs at least one photo")
        return cls(
            np.concatenate([np.asarray(v, dtype=np.float32) for v in vectors]),
            np.concatenate([np.asarray(m, dtype=np.float64) for m in mos]),
            np.array([len(m) for m in mos]),
            tuple(names),
        )

    @property
    def photos(self) -> int:
        return len(self.counts)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self) -> list[np.ndarray]:
        """Each photo's row indices."""
        ends = np.cumsum(self.counts)
        return [np.arange(end - n, end) for n, end in zip(self.counts, ends, strict=True)]

    def subset(self, photos: Sequence[int]) -> RatedCrops:
        """The given photos (by position), in that order."""
        rows = self.rows()
        index = np.concatenate([rows[int(p)] for p in photos]) if len(photos) else np.array([])
        return RatedCrops(
            self.vectors[index.astype(np.int64)],
            self.mos[index.astype(np.int64)],
            self.counts[np.asarray(photos, dtype=np.int64)],
            tuple(self.names[int(p)] for p in photos),
        )


def rated_only(exemplars: Sequence[Exemplar], label: str) -> list[Exemplar]:
    """The exemplars whose crops have scores (MOS); the rest are dropped with one warning."""
    rated = [ex for ex in exemplars if ex.scores is not None]
    if not rated:
        raise ConfigError(
            f"{label}: no crop has a score, and training the head needs each crop's MOS: use a "
            'rated dataset (GAICD) or a JSONL whose lines have "scores"'
        )
    if len(rated) < len(exemplars):
        log.warning(
            "%s: skipped %d of %d photos whose crops have no scores (MOS)",
            label,
            len(exemplars) - len(rated),
            len(exemplars),
        )
    return rated


# -- embedding crops, cached ------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedCrops:
    """The outcome of :func:`embed_crops`."""

    crops: RatedCrops  # the photos that loaded, in input order
    failures: list[str]  # one line per skipped photo
    embedded: int  # crops embedded by this call (0: all from the cache)
    cache: Path | None  # the cache's .npy, if cached


def embed_crops(
    exemplars: Sequence[Exemplar],
    embedder: Any,
    cache: str | os.PathLike | None = None,
    *,
    dataset: str = "dataset",
    root: str | os.PathLike | None = None,
    split: str | None = None,
    num_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
) -> EmbeddedCrops:
    """Embed every rated crop of ``exemplars``, reading and writing the cache in ``cache``.

    ``dataset``, ``root`` and ``split`` name the cache files and are recorded in their
    manifest. Photos that cannot be decoded are skipped and named in one warning; if none
    can, :class:`ConfigError`. ``embedder.embed`` (or ``embed_pixels``) is called with
    batches that span photos; its own ``batch_size`` sets the model's batches. While
    embedding, a chunk is saved every ``chunk_size`` photos (or few seconds), so a stopped
    run resumes.
    """
    exemplars = rated_only(exemplars, dataset)
    workers = check_settings(num_workers=num_workers, chunk_size=chunk_size)
    items = [Item(os.path.abspath(ex.image), tuple(ex.crops)) for ex in exemplars]
    counts = np.array([item.rows for item in items], dtype=np.int64)
    dim = int(embedder.dim)
    key = fingerprint(embedder, items)
    store = _Cache(Path(cache), dataset, split, key) if cache is not None else None
    rows, failed = store.read(counts, dim) if store is not None else (None, None)
    embedded = 0
    if rows is None or failed is None:
        chunks = ChunkStore.open(store.part, key, len(items)) if store is not None else None
        result = embed_items(
            items,
            embedder,
            chunks,
            batch_rows=int(getattr(embedder, "batch_size", 64) or 64),
            num_workers=workers,
            chunk_size=chunk_size,
            label="embedding crops",
            progress=progress,
        )
        rows, failed, embedded = result.rows, result.failed, result.embedded
        if store is not None and len(failed) < len(exemplars):
            about = {
                "embedder": str(embedder.name),
                "dim": dim,
                "dataset": dataset,
                "root": None if root is None else os.path.abspath(os.fspath(root)),
                "split": split,
            }
            store.write(rows, counts, failed, about)
        elif chunks is not None:
            chunks.discard()  # nothing could be read: no work worth resuming
    else:
        log.info("crop embeddings of %s read from %s", dataset, store.npy if store else None)
    kept = [p for p in range(len(exemplars)) if p not in failed]
    failures = [_named(exemplars[p].image, why) for p, why in sorted(failed.items())]
    if not kept:
        raise ConfigError(
            f"{dataset}: none of the {len(exemplars)} photos could be read, so no crop was "
            f"embedded: {first_few(failures)}"
        )
    if failures:
        log.warning(
            "%s: skipped %d of %d photos that could not be read: %s",
            dataset,
            len(failures),
            len(exemplars),
            first_few(failures),
        )
    ends = np.cumsum(counts)
    crops = RatedCrops.from_groups(
        [rows[ends[p] - counts[p] : ends[p]] for p in kept],
        [exemplars[p].scores or () for p in kept],
        [exemplars[p].image for p in kept],
    )
    return EmbeddedCrops(crops, failures, embedded, store.npy if store is not None else None)


def _named(image: str, why: str) -> str:
    return why if image in why else f"{image}: {why}"


class _Cache:
    """One cache entry: the rows and their manifest, and chunks while they are being made."""

    def __init__(self, folder: Path, dataset: str, split: str | None, fingerprint: str):
        stem = f"{_slug(dataset)}-{_slug(split or 'all')}-{fingerprint[:16]}"
        self.fingerprint = fingerprint
        self.npy = folder / f"{stem}.npy"
        self.manifest = folder / f"{stem}.json"
        self.part = folder / f"{stem}.part"

    def read(self, counts: np.ndarray, dim: int) -> tuple[Any, Any]:
        """``(rows, failed)`` if a whole entry for these inputs is there, else ``(None, None)``."""
        try:
            manifest = json.loads(self.manifest.read_text(encoding="utf-8"))
            failed = {int(p): str(why) for p, why in manifest["failed"].items()}
            rows = np.load(self.npy, allow_pickle=False)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("crop embedding cache %s is damaged (%s); embedding again", self.npy, exc)
            return None, None
        if (
            manifest.get("fingerprint") != self.fingerprint
            or rows.shape != (int(counts.sum()), dim)
            or rows.dtype != np.float32
        ):
            log.warning(
                "crop embedding cache %s does not fit its inputs; embedding again", self.npy
            )
            return None, None
        return rows, failed

    def write(
        self, rows: np.ndarray, counts: np.ndarray, failed: dict[int, str], about: dict[str, Any]
    ) -> None:
        """The rows, then the manifest that marks them done; then the chunks go."""
        with atomic_path(self.npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            **about,
            "photos": len(counts),
            "crops": len(rows),
            "failed": {str(p): why for p, why in sorted(failed.items())},
        }
        write_text(self.manifest, json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(self.part, ignore_errors=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"
