"""Embedding photos, or their crops, in batches: decoded in worker processes, resumable.

One pipeline serves the exemplar bank (:mod:`retrieval.build`: a photo is one row) and
head training (:mod:`cropper.data.crop_embeddings`: a photo's crops are a row each). An
:class:`Item` is a photo, whole or as crops; :func:`embed_items` gives every item's rows::

    items = [Item("/photos/a.jpg"), Item("/photos/b.jpg", crops=(box1, box2))]
    store = ChunkStore.open(folder, fingerprint(embedder, items), len(items))
    result = embed_items(items, embedder, store, batch_rows=32, num_workers=4)
    result.of(1)  # (2, dim): b.jpg's crops

Photos are decoded (and cropped) in ``torch.utils.data.DataLoader`` workers when the
embedder offers a picklable ``transform`` (PIL image to tensor) and ``embed_pixels``;
embedders without them (toy ones in tests) get PIL images decoded here, as does any
embedder when ``num_workers`` is 0. A photo that cannot be read is named, never a crash:
its rows are NaN and :attr:`Embedding.failed` says why.

With a :class:`ChunkStore` the work is saved as it goes, so a run that is stopped
(Ctrl-C, a crash, ``kill -9``) continues where it left off when run again::

    FOLDER/state.json                                     what the work is for (a fingerprint)
    FOLDER/chunk-0000000000-0000000064.npy                rows of items [0, 64)
    FOLDER/chunk-0000000000-0000000064.failed.json        the unreadable ones, if any

A chunk is saved every :data:`DEFAULT_CHUNK_SIZE` items or :data:`FLUSH_SECONDS`,
whichever comes first, so a kill loses little. Each file is written atomically, the
failures before their rows, so a chunk counts as done once its ``.npy`` exists. The
fingerprint covers the embedder (name, dimension, preprocessing) and each item in order
(the photo's path, size and modification time, and its crop boxes): a changed input,
a photo replaced in place included, starts over.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cropper.core.errors import ConfigError
from cropper.core.fileio import atomic_path, write_text
from cropper.core.images import load_image

if TYPE_CHECKING:
    from cropper.core.boxes import Box

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
#: Items a chunk file holds at most (a kill loses at most one chunk's work). Saving one
#: takes about a millisecond, some 20 us a photo: lost in the noise of a real run.
DEFAULT_CHUNK_SIZE = 64
#: A chunk is also saved after this long, so slow models lose little on a kill.
FLUSH_SECONDS = 5.0
_STATE_VERSION = 1
_CHUNK = re.compile(r"chunk-(\d{10})-(\d{10})\.npy")


def default_workers() -> int:
    """Decoding processes when none are asked for: up to 4, no more than the CPUs."""
    return min(4, os.cpu_count() or 1)


def check_settings(
    *, num_workers: int | None, chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 1
) -> int:
    """Fail on a bad setting before any work; return the decoding processes to use."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ConfigError(f"num_workers must be 0 or more, got {num_workers}")
    return workers


@dataclass(frozen=True)
class Item:
    """One photo to embed: whole (one row), or as its crops (a row each, in order)."""

    path: str  # the photo's file; give it absolute, as the fingerprint records it
    crops: tuple[Box, ...] | None = None  # normalized boxes; None: the whole photo

    @property
    def rows(self) -> int:
        return 1 if self.crops is None else len(self.crops)


@dataclass(frozen=True)
class Embedding:
    """The outcome of :func:`embed_items`: every item's rows, in input order."""

    rows: np.ndarray  # (total rows, dim) float32 unit rows; NaN rows for failed items
    offsets: np.ndarray  # (items + 1,) item i's rows are rows[offsets[i]:offsets[i + 1]]
    failed: dict[int, str]  # item position -> why it could not be read (names the photo)
    resumed: int  # items whose rows an earlier, stopped run had saved
    embedded: int  # rows this call embedded

    def of(self, position: int) -> np.ndarray:
        """The rows of the item at ``position``."""
        return self.rows[self.offsets[position] : self.offsets[position + 1]]


def fingerprint(embedder: Any, items: Sequence[Item]) -> str:
    """What the rows depend on: the embedder, its preprocessing, the items in order.

    A photo counts by its path, size and modification time, so one replaced in place
    is embedded again rather than resumed with the old photo's rows; a crop by its box.
    """
    digest = hashlib.sha256()
    head = [str(embedder.name), int(embedder.dim), getattr(embedder, "preprocess_info", None)]
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for item in items:
        try:
            stat = os.stat(item.path)
            mark = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            mark = None  # missing: skipped now; a photo that appears later changes the key
        boxes = None
        if item.crops is not None:
            boxes = [[round(v, 6) for v in (b.x0, b.y0, b.x1, b.y1)] for b in item.crops]
        # The crop caches' key from the start: the finished ones made before still fit.
        digest.update(json.dumps([item.path, mark, boxes]).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


# -- the saved work ------------------------------------------------------------------


class ChunkStore:
    """A folder of saved work: its state file and the chunks of rows, items [start, stop)."""

    def __init__(self, folder: Path, count: int):
        self.folder, self.count = folder, count

    @classmethod
    def open(cls, folder: str | os.PathLike, key: str, count: int) -> ChunkStore:
        """Reuse the saved work if it is for the same inputs (``key``), else start afresh."""
        folder = Path(folder)
        state = {"version": _STATE_VERSION, "fingerprint": key, "count": count}
        try:
            old = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != state:
            if old is not None:
                log.info("the inputs differ from the stopped run's in %s: starting over", folder)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_text(folder / STATE_FILE, json.dumps(state) + "\n")
        for leftover in folder.glob(".*.tmp"):  # from a write that kill -9 cut short
            leftover.unlink(missing_ok=True)
        return cls(folder, count)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _chunk(self, start: int, stop: int, suffix: str = ".npy") -> Path:
        return self.folder / f"chunk-{start:010d}-{stop:010d}{suffix}"

    def load(
        self, rows: np.ndarray, offsets: np.ndarray, paths: Sequence[str]
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Fill ``rows`` from the chunks saved whole: ``(items covered, why failed ones did)``.

        Damaged, foreign and overlapping chunks are removed, their items embedded again.
        """
        done = np.zeros(self.count, dtype=bool)
        failed: dict[int, str] = {}
        for path in sorted(self.folder.glob("chunk-*.npy")):
            match = _CHUNK.fullmatch(path.name)
            start, stop = (int(v) for v in match.groups()) if match else (0, 0)
            try:
                if not (match and 0 <= start < stop <= self.count) or done[start:stop].any():
                    raise ValueError("not a chunk of these items, or one overlapping another")
                chunk = np.load(path, allow_pickle=False)
                span = slice(offsets[start], offsets[stop])
                if chunk.shape != rows[span].shape or chunk.dtype != np.float32:
                    raise ValueError(f"{chunk.dtype} rows of shape {chunk.shape}")
            except (OSError, ValueError, EOFError) as exc:
                log.info("%s: damaged or foreign chunk (%s), embedding its items again", path, exc)
                path.unlink(missing_ok=True)
                continue
            rows[span] = chunk
            done[start:stop] = True
            # An item failed when any of its rows is not finite (NaN: it could not be read).
            bad = np.concatenate([[0], np.cumsum(~np.isfinite(chunk).all(axis=1))])
            local = offsets[start : stop + 1] - offsets[start]
            reasons = self._reasons(start, stop)
            for position in np.flatnonzero(np.diff(bad[local]) > 0) + start:
                p = int(position)
                failed[p] = reasons.get(p, f"{paths[p]}: could not be read")
        return done, failed

    def _reasons(self, start: int, stop: int) -> dict[int, str]:
        path = self._chunk(start, stop, ".failed.json")
        if not path.is_file():
            return {}
        with contextlib.suppress(OSError, ValueError, TypeError):
            return {int(p): str(m) for p, m in json.loads(path.read_text(encoding="utf-8"))}
        return {}

    def save(self, start: int, stop: int, rows: np.ndarray, failed: dict[int, str]) -> None:
        """One chunk: the failures first, then the rows, whose file marks it done."""
        failures = self._chunk(start, stop, ".failed.json")
        if failed:
            write_text(failures, json.dumps(sorted(failed.items())) + "\n")
        else:
            failures.unlink(missing_ok=True)  # from a run stopped before its rows were saved
        with atomic_path(self._chunk(start, stop)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)


# -- the loop ------------------------------------------------------------------------


def embed_items(
    items: Sequence[Item],
    embedder: Any,
    store: ChunkStore | None = None,
    *,
    batch_rows: int = 32,
    num_workers: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    label: str = "embedding",
    progress: bool = True,
) -> Embedding:
    """Embed every item's rows, resuming from and saving to ``store`` (if any) as it goes.

    The embedder is called with batches of whole items, each of at least ``batch_rows``
    rows (the last may be smaller); ``label`` names the work in the progress bar and logs.
    Run again after a stop, it embeds only the items no saved chunk covers.
    """
    count = len(items)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum([item.rows for item in items], out=offsets[1:])
    dim = int(embedder.dim)
    rows = np.full((int(offsets[-1]), dim), np.nan, dtype=np.float32)
    paths = [item.path for item in items]
    done, failed = (
        store.load(rows, offsets, paths) if store is not None else (np.zeros(count, bool), {})
    )
    todo = [int(p) for p in np.flatnonzero(~done)]
    resumed = count - len(todo)
    if resumed:
        log.info("%s: resuming, %d of %d photos were embedded before", label, resumed, count)
    batches = _plan(todo, offsets, batch_rows)
    if batches:
        pending = _Pending(store, rows, offsets, chunk_size)
        source = _decoded(items, embedder, batches, num_workers)
        _embed_batches(embedder, source, pending, failed, label, progress, (resumed, count))
    embedded = sum(items[p].rows for p in todo if p not in failed)
    return Embedding(rows, offsets, failed, resumed, embedded)


def _plan(todo: list[int], offsets: np.ndarray, batch_rows: int) -> list[list[int]]:
    """Batches of item positions, each closed once it holds ``batch_rows`` rows or more."""
    batches: list[list[int]] = []
    batch: list[int] = []
    size = 0
    for position in todo:
        batch.append(position)
        size += int(offsets[position + 1] - offsets[position])
        if size >= batch_rows:
            batches.append(batch)
            batch, size = [], 0
    return [*batches, batch] if batch else batches


class _Pending:
    """Items embedded since the last chunk was saved: one contiguous run ``[start, stop)``."""

    def __init__(
        self, store: ChunkStore | None, rows: np.ndarray, offsets: np.ndarray, chunk_size: int
    ):
        self.store, self.rows, self.offsets = store, rows, offsets
        self.chunk_size = chunk_size
        self.start = self.stop = 0
        self.failures: dict[int, str] = {}
        self.since = time.monotonic()

    def add(self, position: int, why: str | None) -> None:
        """Note the item at ``position`` as embedded (its rows are in place) or failed."""
        if self.stop > self.start and position != self.stop:
            self.flush()  # a gap (items a stopped run had done): chunks are contiguous
        if self.stop == self.start:
            self.start = position
        self.stop = position + 1
        if why is not None:
            self.failures[position] = why
        if (
            self.stop - self.start >= self.chunk_size
            or time.monotonic() - self.since >= FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        if self.store is not None and self.stop > self.start:
            start, stop = self.start, self.stop
            rows = self.rows[self.offsets[start] : self.offsets[stop]]
            self.store.save(start, stop, rows, self.failures)
        self.start = self.stop = 0
        self.failures = {}
        self.since = time.monotonic()


def _embed_batches(
    embedder: Any,
    source: Iterator[_Batch],
    pending: _Pending,
    failed: dict[int, str],
    label: str,
    progress: bool,
    done_of: tuple[int, int],
) -> None:
    """Embed the decoded batches into ``pending.rows``, saving chunks on the way and on a stop."""
    from tqdm.auto import tqdm

    rows, offsets = pending.rows, pending.offsets
    # disable=None turns the bar off when not writing to a terminal.
    bar = tqdm(
        total=done_of[1],
        initial=done_of[0],
        desc=label,
        unit="photo",
        disable=None if progress else True,
    )
    try:
        with contextlib.closing(source), bar:  # closing stops the workers, even on a stop
            for batch in source:
                out = _embed(embedder, batch)
                cursor = 0
                for position in batch.positions:
                    why = batch.failures.get(position)
                    if why is None:
                        start, stop = offsets[position], offsets[position + 1]
                        rows[start:stop] = out[cursor : cursor + stop - start]
                        cursor += stop - start
                    else:
                        failed[position] = why
                    pending.add(position, why)
                bar.update(len(batch.positions))
                if failed:
                    bar.set_postfix(skipped=len(failed), refresh=False)
            pending.flush()
    except BaseException:
        # Stopped or failed: keep what was embedded, so the next run resumes after it.
        with contextlib.suppress(Exception):
            pending.flush()
        if pending.store is not None:
            log.warning(
                "%s stopped (the work so far is in %s); run it again with the same inputs "
                "to resume",
                label,
                pending.store.folder,
            )
        raise


# -- decoding ------------------------------------------------------------------------


class _Batch(NamedTuple):
    """A batch as decoded: the loaded items' images, as one tensor or as PIL images."""

    positions: list[int]  # every item of the batch
    pixels: Any  # (rows, 3, H, W) tensor of the loaded items' images, or a list of PIL images
    failures: dict[int, str]  # position -> why, of the items that did not load


def _why(path: str, exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if path in text else f"{path}: {text}"


class _Photos:
    """Position -> ``(position, images or None, why or None)``; runs in DataLoader workers.

    The images are the item's rows: the photo, or its crops; with a ``transform`` one
    ``(rows, 3, H, W)`` tensor, else a list of PIL images.
    """

    def __init__(self, items: Sequence[Item], transform: Any = None):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, Any, str | None]:
        item = self.items[position]
        try:
            image = load_image(item.path)
            images = (
                [image]
                if item.crops is None
                else [image.crop(box.to_pixels(image.size)) for box in item.crops]
            )
            if self.transform is None:
                return position, images, None
            import torch

            return position, torch.stack([self.transform(im) for im in images]), None
        except Exception as exc:  # one bad photo must not kill the worker, nor the run
            return position, None, _why(item.path, exc)


def _collate(decoded: list[tuple[int, Any, str | None]]) -> _Batch:
    loaded = [images for _, images, why in decoded if why is None]
    if loaded and not isinstance(loaded[0], list):
        import torch

        pixels: Any = torch.cat(loaded)
    else:
        pixels = [image for images in loaded for image in images]
    failures = {position: why for position, _, why in decoded if why is not None}
    return _Batch([position for position, _, _ in decoded], pixels, failures)


def _decoded(
    items: Sequence[Item], embedder: Any, batches: list[list[int]], workers: int
) -> Iterator[_Batch]:
    """The planned batches decoded: in DataLoader workers when the embedder can take tensors."""
    if hasattr(embedder, "transform") and hasattr(embedder, "embed_pixels"):
        # One batch gains nothing from a worker; forking one would cost more.
        workers = 0 if len(batches) == 1 else min(workers, len(batches))
        return _loader_batches(embedder, items, batches, workers)
    return _main_batches(items, batches)


def _loader_batches(
    embedder: Any, items: Sequence[Item], batches: list[list[int]], workers: int
) -> Iterator[_Batch]:
    from torch.utils.data import DataLoader

    device = str(getattr(embedder, "device", "cpu"))
    loader = DataLoader(
        _Photos(items, embedder.transform),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),  # faster host-to-GPU copies
    )
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        # Stop the workers now: a traceback kept by a notebook would keep them alive.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _main_batches(items: Sequence[Item], batches: list[list[int]]) -> Iterator[_Batch]:
    photos = _Photos(items)
    for batch in batches:
        yield _collate([photos[position] for position in batch])


def _embed(embedder: Any, batch: _Batch) -> np.ndarray:
    """Unit rows for the loaded items' images, in order."""
    name, dim = str(embedder.name), int(embedder.dim)
    n = len(batch.pixels)
    if not n:
        return np.empty((0, dim), dtype=np.float32)
    if isinstance(batch.pixels, list):
        out = embedder.embed(batch.pixels)
    else:
        out = embedder.embed_pixels(batch.pixels)
    out = np.asarray(out, dtype=np.float32)
    if out.shape != (n, dim):
        raise ConfigError(
            f"embedder {name!r} returned shape {out.shape} for {n} images, expected ({n}, {dim})"
        )
    if not np.isfinite(out).all():
        raise ConfigError(f"embedder {name!r} returned NaN or infinite values")
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
