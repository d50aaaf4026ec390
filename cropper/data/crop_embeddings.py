"""Every rated crop of a dataset as a unit CLIP embedding, computed once and cached.

:func:`embed_crops` decodes each photo once (in DataLoader workers when the embedder offers
``transform`` and ``embed_pixels``, as :mod:`retrieval.build` does) and hands its crops to
the embedder in batches that span photos. The result is cached, so a second run with the
same inputs embeds nothing::

    CACHE/<dataset>-<split>-<fingerprint>.npy    (crops, dim) float32; NaN rows: skipped photos
    CACHE/<dataset>-<split>-<fingerprint>.json   what it holds; written last, so it marks done
    CACHE/<dataset>-<split>-<fingerprint>.part/  chunks while embedding, so a stop resumes

The fingerprint covers the embedder (name, dim, preprocessing), each photo (path, size,
modification time) and its crop boxes; not the scores, which the embeddings do not depend on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropper.core.errors import ConfigError
from cropper.core.fileio import atomic_path, write_text
from cropper.core.images import load_image
from retrieval.exemplars import first_few

if TYPE_CHECKING:
    from retrieval.exemplars import Exemplar

log = logging.getLogger(__name__)

CACHE_FORMAT = "cropper-crop-embeddings"
CACHE_VERSION = 1
#: Photos a cache chunk holds at most (a stop loses at most one chunk's work) ...
CHUNK_PHOTOS = 128
#: ... and a chunk is also saved after this long, so slow models lose little on a stop.
FLUSH_SECONDS = 60.0
_CHUNK = re.compile(r"chunk-(\d{8})-(\d{8})\.npy")


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
    progress: bool = True,
) -> EmbeddedCrops:
    """Embed every rated crop of ``exemplars``, reading and writing the cache in ``cache``.

    ``dataset``, ``root`` and ``split`` name the cache files and are recorded in their
    manifest. Photos that cannot be decoded are skipped and named in one warning; if none
    can, :class:`ConfigError`. ``embedder.embed`` (or ``embed_pixels``) is called with
    batches that span photos; its own ``batch_size`` sets the model's batches.
    """
    from retrieval.build import default_workers

    exemplars = rated_only(exemplars, dataset)
    counts = np.array([len(ex.crops) for ex in exemplars], dtype=np.int64)
    dim = int(embedder.dim)
    fingerprint = _fingerprint(embedder, exemplars)
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ConfigError(f"num_workers must be 0 or more, got {num_workers}")
    store = _Cache(Path(cache), dataset, split, fingerprint) if cache is not None else None
    rows, failed = store.read(counts, dim) if store is not None else (None, None)
    embedded = 0
    if rows is None or failed is None:
        rows, failed, embedded = _embed_all(exemplars, counts, embedder, store, workers, progress)
        if store is not None and len(failed) < len(exemplars):
            about = {
                "embedder": str(embedder.name),
                "dim": dim,
                "dataset": dataset,
                "root": None if root is None else os.path.abspath(os.fspath(root)),
                "split": split,
            }
            store.write(rows, counts, failed, about)
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


def _fingerprint(embedder: Any, exemplars: Sequence[Exemplar]) -> str:
    """What the embeddings depend on: the embedder, each photo's file and its crop boxes."""
    digest = hashlib.sha256()
    head = [str(embedder.name), int(embedder.dim), getattr(embedder, "preprocess_info", None)]
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for ex in exemplars:
        path = os.path.abspath(ex.image)
        try:
            stat = os.stat(path)
            mark = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            mark = None  # missing: skipped now; a photo that appears later changes the key
        boxes = [[round(v, 6) for v in (b.x0, b.y0, b.x1, b.y1)] for b in ex.crops]
        digest.update(json.dumps([path, mark, boxes]).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


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

    # -- chunks of photos [start, stop), so that a stopped run resumes --------------------------
    def _chunk(self, start: int, stop: int, suffix: str = ".npy") -> Path:
        return self.part / f"chunk-{start:08d}-{stop:08d}{suffix}"

    def load_chunks(self, rows: np.ndarray, ends: np.ndarray, failed: dict[int, str]) -> np.ndarray:
        """Fill ``rows`` and ``failed`` from the saved chunks; return which photos they cover."""
        done = np.zeros(len(ends) - 1, dtype=bool)
        for path in sorted(self.part.glob("chunk-*.npy")):
            match = _CHUNK.fullmatch(path.name)
            try:
                start, stop = (int(v) for v in match.groups()) if match else (-1, -1)
                if not (0 <= start < stop < len(ends)) or done[start:stop].any():
                    raise ValueError(f"photos {start}-{stop} do not fit")
                chunk = np.load(path, allow_pickle=False)
                if chunk.shape != (ends[stop] - ends[start], rows.shape[1]):
                    raise ValueError(f"shape {chunk.shape}")
                failures = self._chunk(start, stop, ".failed.json")
                if failures.is_file():
                    failed.update({int(p): str(w) for p, w in json.loads(failures.read_text())})
            except (OSError, ValueError, TypeError) as exc:
                log.info("%s: damaged or foreign chunk (%s); embedding its photos again", path, exc)
                path.unlink(missing_ok=True)
                continue
            rows[ends[start] : ends[stop]] = chunk
            done[start:stop] = True
        return done

    def save_chunk(
        self, start: int, stop: int, rows: np.ndarray, failed: list[tuple[int, str]]
    ) -> None:
        """The failures first, then the rows, whose file marks the chunk done."""
        self.part.mkdir(parents=True, exist_ok=True)
        if failed:
            write_text(self._chunk(start, stop, ".failed.json"), json.dumps(failed) + "\n")
        with atomic_path(self._chunk(start, stop)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


class _Pending:
    """Photos embedded since the last chunk was saved: one contiguous run ``[start, stop)``."""

    def __init__(self, cache: _Cache | None, rows: np.ndarray, ends: np.ndarray, failed: dict):
        self.cache, self.rows, self.ends, self.failed = cache, rows, ends, failed
        self.start = self.stop = 0
        self.since = time.monotonic()

    def add(self, position: int) -> None:
        if self.stop > self.start and position != self.stop:
            self.flush()  # a gap (photos a stopped run had done): chunks are contiguous
        if self.stop == self.start:
            self.start = self.stop = position
        self.stop = position + 1
        if self.stop - self.start >= CHUNK_PHOTOS or time.monotonic() - self.since > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.cache is not None and self.stop > self.start:
            start, stop = self.start, self.stop
            failed = [(p, w) for p, w in self.failed.items() if start <= p < stop]
            rows = self.rows[self.ends[start] : self.ends[stop]]
            self.cache.save_chunk(start, stop, rows, failed)
        self.start = self.stop = 0
        self.since = time.monotonic()


def _embed_all(
    exemplars: list[Exemplar],
    counts: np.ndarray,
    embedder: Any,
    cache: _Cache | None,
    workers: int,
    progress: bool,
) -> tuple[np.ndarray, dict[int, str], int]:
    """Rows for every crop (NaN: the photo did not load), why those did not, crops embedded now."""
    from tqdm.auto import tqdm

    ends = np.concatenate([[0], np.cumsum(counts)])
    rows = np.full((int(ends[-1]), int(embedder.dim)), np.nan, dtype=np.float32)
    failed: dict[int, str] = {}
    done = cache.load_chunks(rows, ends, failed) if cache is not None else np.zeros(0, bool)
    todo = [p for p in range(len(exemplars)) if not (cache is not None and done[p])]
    if len(todo) < len(exemplars):
        log.info(
            "resuming: %d of %d photos' crops were embedded before",
            len(exemplars) - len(todo),
            len(exemplars),
        )
    pending = _Pending(cache, rows, ends, failed)
    # disable=None turns the bar off when not writing to a terminal.
    bar = tqdm(
        total=len(exemplars),
        initial=len(exemplars) - len(todo),
        desc="embedding crops",
        unit="photo",
        disable=None if progress else True,
    )
    photos = _embedded_photos(exemplars, embedder, todo, workers)
    try:
        with contextlib.closing(photos), bar:
            for position, vectors, why in photos:
                if why is None:
                    rows[ends[position] : ends[position + 1]] = vectors
                else:
                    failed[position] = why
                pending.add(position)
                bar.update(1)
            pending.flush()
    except BaseException:
        # Stopped or failed: keep what was embedded, so that the next run resumes after it.
        with contextlib.suppress(Exception):
            pending.flush()
        if cache is not None:
            log.warning("embedding crops stopped; run again with the same inputs to resume")
        raise
    embedded = sum(int(counts[p]) for p in todo if p not in failed)
    return rows, failed, embedded


# -- decoding and embedding photos' crops ------------------------------------------------------


class _PhotoCrops:
    """Position -> ``(position, crops or None, why or None)``; runs in DataLoader workers.

    With a ``transform`` the crops are one ``(n, 3, H, W)`` tensor, else PIL images.
    """

    def __init__(self, exemplars: list[Exemplar], transform: Callable[[Any], Any] | None):
        self.exemplars, self.transform = exemplars, transform

    def __len__(self) -> int:
        return len(self.exemplars)

    def __getitem__(self, position: int) -> tuple[int, Any, str | None]:
        exemplar = self.exemplars[position]
        try:
            image = load_image(exemplar.image)
            crops = [image.crop(box.to_pixels(image.size)) for box in exemplar.crops]
            if self.transform is None:
                return position, crops, None
            import torch

            return position, torch.stack([self.transform(crop) for crop in crops]), None
        except Exception as exc:  # one bad photo must not stop the run: skip it, report it
            return position, None, " ".join(str(exc).split()) or type(exc).__name__


def _as_is(item: Any) -> Any:
    return item


def _decoded(
    exemplars: list[Exemplar], embedder: Any, todo: list[int], workers: int
) -> Iterator[tuple[int, Any, str | None]]:
    """Each photo of ``todo`` decoded and cropped, in order: in workers when the embedder can."""
    if not (hasattr(embedder, "transform") and hasattr(embedder, "embed_pixels")):
        source = _PhotoCrops(exemplars, None)
        yield from (source[p] for p in todo)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _PhotoCrops(exemplars, embedder.transform),
        batch_size=None,  # one photo an item: its crops are the batch's unit
        sampler=todo,
        num_workers=workers if len(todo) > 1 else 0,
        collate_fn=_as_is,
        pin_memory=str(getattr(embedder, "device", "cpu")).startswith("cuda"),
    )
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        # Stop the workers now: a traceback kept by a notebook would keep them alive.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _embedded_photos(
    exemplars: list[Exemplar], embedder: Any, todo: list[int], workers: int
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """``(position, unit rows or None, why or None)`` a photo, embedded in batches across photos."""
    batch = int(getattr(embedder, "batch_size", 64) or 64)
    waiting: list[tuple[int, Any, str | None]] = []
    decoded = _decoded(exemplars, embedder, todo, workers)
    with contextlib.closing(decoded):
        for item in decoded:
            waiting.append(item)
            if sum(len(crops) for _, crops, _ in waiting if crops is not None) >= batch:
                yield from _embed_waiting(embedder, waiting)
                waiting = []
        yield from _embed_waiting(embedder, waiting)


def _embed_waiting(
    embedder: Any, waiting: list[tuple[int, Any, str | None]]
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """One embedder call for the crops of the waiting photos; then each photo's rows."""
    loaded = [crops for _, crops, why in waiting if why is None]
    if loaded:
        if hasattr(loaded[0], "shape"):  # tensors from the embedder's own transform
            import torch

            out = embedder.embed_pixels(torch.cat(loaded))
        else:
            out = embedder.embed([crop for crops in loaded for crop in crops])
        out = np.asarray(out, dtype=np.float32)
        total = sum(len(crops) for crops in loaded)
        if out.shape != (total, int(embedder.dim)) or not np.isfinite(out).all():
            raise ConfigError(
                f"embedder {embedder.name!r} returned shape {out.shape} (or non-finite values) "
                f"for {total} crops, expected ({total}, {embedder.dim}) finite values"
            )
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    cursor = 0
    for position, crops, why in waiting:
        if why is not None:
            yield position, None, why
            continue
        yield position, out[cursor : cursor + len(crops)], None
        cursor += len(crops)
