"""Embedding a bank's photos: batched, decoded in worker processes, resumable.

Photos are decoded and preprocessed in ``torch.utils.data.DataLoader`` workers when
the embedder offers a picklable ``transform`` (PIL image to tensor) and
``embed_pixels``; embedders without them (toy ones in tests) get PIL images decoded
here. A photo that cannot be read becomes a marker, never a crash: the build skips
it and names every such photo in one warning.

Work is saved as it goes, so a build that is stopped (Ctrl-C, a crash, ``kill -9``)
continues where it left off when run again with the same inputs and folder::

    OUT/.partial/state.json                              what the work is for (a fingerprint)
    OUT/.partial/chunk-0000000000-0000000064.npy         rows for photos [0, 64)
    OUT/.partial/chunk-0000000000-0000000064.failed.json  the unreadable ones, if any

A chunk is saved every :data:`DEFAULT_CHUNK_SIZE` photos or :data:`FLUSH_SECONDS`,
whichever comes first, so a kill loses little. Rows of unreadable photos are NaN.
Each file is written atomically, the failures before their rows, so a chunk counts
as done once its ``.npy`` exists. A changed input (embedder, dimension, the photos,
their order, or a photo's size or modification time) starts over.

One build writes a folder at a time: ``cropper index build`` holds the folder's
:class:`~cropper.core.fileio.FolderLock` (see :func:`retrieval.index.bank_lock`); two
builds sharing one ``.partial`` without it could assemble each other's rows.
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
from typing import Any, NamedTuple

import numpy as np

from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.core.fileio import atomic_path, write_text
from cropper.core.images import load_image
from retrieval.exemplars import Exemplar, first_few

log = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
STATE_FILE = "state.json"
#: Photos a chunk file holds at most (a kill loses at most one chunk's work). Saving one
#: takes about a millisecond, some 20 us a photo: lost in the noise of a real build.
DEFAULT_CHUNK_SIZE = 64
#: A chunk is also saved after this long, so slow models lose little on a kill.
FLUSH_SECONDS = 5.0
_STATE_VERSION = 1
_CHUNK = re.compile(r"chunk-(\d{10})-(\d{10})\.npy")


def default_workers() -> int:
    """Decoding processes when none are asked for: up to 4, no more than the CPUs."""
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Embedded:
    """The outcome of :func:`embed_exemplars`."""

    exemplars: list[Exemplar]  # those whose photo was embedded, in input order
    vectors: np.ndarray  # (len(exemplars), dim) float32 unit rows, the same order
    failures: list[str]  # one line per skipped photo
    resumed: int  # photos whose embeddings an earlier, stopped run had saved


def embed_exemplars(
    exemplars: Sequence[Exemplar],
    embedder: Any,
    out: str | os.PathLike,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
) -> Embedded:
    """Embed every exemplar's photo, saving the work under ``out/.partial`` as it goes.

    Run again after a stop, it embeds only what is missing. Unreadable photos are
    skipped and reported in one warning; if none can be read, the partial work is
    removed and :class:`ExemplarIndexError` raised. Call :func:`discard_partial`
    once the bank is written.
    """
    exemplars = list(exemplars)
    if not exemplars:
        raise ExemplarIndexError(f"no exemplars to embed into {out}; give at least one")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ConfigError(f"num_workers must be 0 or more, got {num_workers}")
    folder = Path(out)
    created = not folder.exists()
    dim = int(embedder.dim)
    paths = [os.path.abspath(ex.image) for ex in exemplars]
    try:
        partial = _Partial.open(folder / PARTIAL_DIR, _fingerprint(embedder, paths), len(paths))
    except OSError as exc:
        raise ExemplarIndexError(f"cannot write the exemplar bank to {folder}: {exc}") from None
    done = partial.done_ranges(dim)
    resumed = sum(stop - start for start, stop in done)
    if resumed:
        log.info(
            "resuming the build in %s: %d of %d photos already embedded",
            folder,
            resumed,
            len(paths),
        )
    batches = _plan(_missing_runs(done, len(paths)), batch_size)
    _embed_missing(
        partial,
        embedder,
        paths,
        batches,
        workers=workers,
        chunk_size=chunk_size,
        progress=progress,
        resumed=resumed,
    )
    kept, vectors, failures = partial.assemble(exemplars, paths, dim)
    if failures:
        report = f"skipped {len(failures)} of {len(paths)} exemplar photos: {first_few(failures)}"
        if not kept:
            discard_partial(folder)
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: nothing of the user's is removed
            raise ExemplarIndexError(f"{report}; no photo could be embedded, so no bank was built")
        log.warning("%s", report)
    return Embedded(kept, vectors, failures, resumed)


def discard_partial(out: str | os.PathLike) -> None:
    """Remove the saved work of a build in ``out`` (after the bank is written)."""
    shutil.rmtree(Path(out) / PARTIAL_DIR, ignore_errors=True)


# -- the saved work ------------------------------------------------------------------


def _fingerprint(embedder: Any, paths: list[str]) -> str:
    """What the vectors depend on: the embedder, its preprocessing, the photos in order.

    A photo counts by its path, size and modification time, so one replaced in place
    is embedded again rather than resumed with the old photo's vector.
    """
    digest = hashlib.sha256()
    head = [str(embedder.name), int(embedder.dim), getattr(embedder, "preprocess_info", None)]
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for path in paths:
        try:
            stat = os.stat(path)
            mark = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            mark = "-"  # missing: skipped now; a photo that appears later changes the key
        digest.update(b"\0" + path.encode("utf-8", "surrogateescape") + b"\0" + mark.encode())
    return digest.hexdigest()


class _Partial:
    """The ``.partial`` folder of one build: its state file and chunk files."""

    def __init__(self, folder: Path, count: int):
        self.folder, self.count = folder, count

    @classmethod
    def open(cls, folder: Path, fingerprint: str, count: int) -> _Partial:
        """Reuse the saved work if it is for the same inputs, else start it afresh."""
        state = {"version": _STATE_VERSION, "fingerprint": fingerprint, "count": count}
        try:
            old = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != state:
            if old is not None:
                log.info("the inputs differ from the stopped build's in %s: starting over", folder)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_text(folder / STATE_FILE, json.dumps(state) + "\n")
        for leftover in folder.glob(".*.tmp"):  # from a write that kill -9 cut short
            leftover.unlink(missing_ok=True)
        return cls(folder, count)

    def _chunk(self, start: int, stop: int, suffix: str = ".npy") -> Path:
        return self.folder / f"chunk-{start:010d}-{stop:010d}{suffix}"

    def done_ranges(self, dim: int) -> list[tuple[int, int]]:
        """``[start, stop)`` of the chunks saved whole, in order; damaged ones are removed."""
        ranges: list[tuple[int, int]] = []
        for path in sorted(self.folder.glob("chunk-*.npy")):
            match = _CHUNK.fullmatch(path.name)
            start, stop = (int(v) for v in match.groups()) if match else (0, 0)
            if (
                not match
                or not (0 <= start < stop <= self.count)
                or not _readable(path, stop - start, dim)
            ):
                log.info("%s: damaged or foreign chunk, embedding its photos again", path)
                path.unlink(missing_ok=True)
            elif ranges and start < ranges[-1][1]:
                path.unlink(missing_ok=True)  # overlaps one kept already
            else:
                ranges.append((start, stop))
        return ranges

    def save(self, start: int, rows: np.ndarray, failures: list[tuple[int, str]]) -> None:
        """One chunk: the failures first, then the rows, whose file marks it done."""
        stop = start + len(rows)
        failed = self._chunk(start, stop, ".failed.json")
        if failures:
            write_text(failed, json.dumps(failures) + "\n")
        else:
            failed.unlink(missing_ok=True)  # from a run stopped before its rows were saved
        with atomic_path(self._chunk(start, stop)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)

    def assemble(
        self, exemplars: list[Exemplar], paths: list[str], dim: int
    ) -> tuple[list[Exemplar], np.ndarray, list[str]]:
        """All saved rows in input order, without the unreadable photos' (NaN) rows."""
        ranges = self.done_ranges(dim)
        covered = sum(stop - start for start, stop in ranges)
        if covered != self.count:
            raise ExemplarIndexError(
                f"{self.folder}: the saved work covers {covered} of {self.count} photos "
                "(was it changed while building?); run the build again"
            )
        matrix = np.empty((self.count, dim), dtype=np.float32)
        kept: list[Exemplar] = []
        failures: list[str] = []
        cursor = 0
        for start, stop in ranges:
            rows = np.load(self._chunk(start, stop), allow_pickle=False)
            ok = np.isfinite(rows).all(axis=1)
            reasons = self._failures(start, stop)
            for offset in np.flatnonzero(~ok):
                position = start + int(offset)
                failures.append(reasons.get(position, f"{paths[position]}: could not be read"))
            count = int(ok.sum())
            matrix[cursor : cursor + count] = rows[ok]
            kept.extend(exemplars[start + int(i)] for i in np.flatnonzero(ok))
            cursor += count
        # A prefix of a C-ordered array is contiguous, as faiss wants.
        return kept, matrix[:cursor], failures

    def _failures(self, start: int, stop: int) -> dict[int, str]:
        path = self._chunk(start, stop, ".failed.json")
        if not path.is_file():
            return {}
        with contextlib.suppress(OSError, ValueError, TypeError):
            return {int(p): str(m) for p, m in json.loads(path.read_text(encoding="utf-8"))}
        return {}


def _readable(path: Path, rows: int, dim: int) -> bool:
    """Whether a chunk file holds ``rows`` float32 rows of ``dim`` (reads the header only)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.shape == (rows, dim) and array.dtype == np.float32


def _missing_runs(done: list[tuple[int, int]], count: int) -> list[range]:
    """The runs of photo positions that no saved chunk covers."""
    runs, cursor = [], 0
    for start, stop in [*done, (count, count)]:
        if start > cursor:
            runs.append(range(cursor, start))
        cursor = max(cursor, stop)
    return runs


def _plan(runs: list[range], batch_size: int) -> list[list[int]]:
    """Batches of positions; none spans a gap, so each chunk stays a contiguous range."""
    return [list(run[i : i + batch_size]) for run in runs for i in range(0, len(run), batch_size)]


# -- decoding ------------------------------------------------------------------------


class _Batch(NamedTuple):
    """A batch as decoded: tensors (worker path) or PIL images (main process)."""

    positions: list[int]  # every photo of the batch
    decoded: list[int]  # indices into positions of the photos that loaded
    pixels: Any  # (len(decoded), 3, H, W) tensor, or None
    images: list[Any]  # PIL images when decoded here
    failures: list[tuple[int, str]]  # (position, why) of those that did not


def _why(path: str, exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if path in text else f"{path}: {text}"


class _Photos:
    """Position -> ``(position, tensor or None, why or None)``; runs in DataLoader workers."""

    def __init__(self, paths: list[str], transform: Any):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, Any, str | None]:
        path = self.paths[position]
        try:
            return position, self.transform(load_image(path)), None
        except Exception as exc:  # one bad photo must not kill the worker, nor the build
            return position, None, _why(path, exc)


def _collate(items: list[tuple[int, Any, str | None]]) -> _Batch:
    import torch

    decoded = [i for i, (_, tensor, _) in enumerate(items) if tensor is not None]
    pixels = torch.stack([items[i][1] for i in decoded]) if decoded else None
    failures = [(p, why) for p, _, why in items if why is not None]
    return _Batch([p for p, _, _ in items], decoded, pixels, [], failures)


def _loader_batches(
    embedder: Any, paths: list[str], batches: list[list[int]], workers: int
) -> Iterator[_Batch]:
    from torch.utils.data import DataLoader

    device = str(getattr(embedder, "device", "cpu"))
    loader = DataLoader(
        _Photos(paths, embedder.transform),
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


def _main_batches(paths: list[str], batches: list[list[int]]) -> Iterator[_Batch]:
    for batch in batches:
        decoded, images, failures = [], [], []
        for i, position in enumerate(batch):
            try:
                images.append(load_image(paths[position]))
                decoded.append(i)
            except Exception as exc:  # as in the workers: skip it, report it once
                failures.append((position, _why(paths[position], exc)))
        yield _Batch(batch, decoded, None, images, failures)


def _embed(embedder: Any, batch: _Batch, name: str, dim: int) -> np.ndarray:
    """Rows for every photo of the batch: unit vectors, NaN for those that did not load."""
    rows = np.full((len(batch.positions), dim), np.nan, dtype=np.float32)
    if not batch.decoded:
        return rows
    if batch.pixels is not None:
        out = embedder.embed_pixels(batch.pixels)
    else:
        out = embedder.embed(batch.images)
    out = np.asarray(out, dtype=np.float32)
    n = len(batch.decoded)
    if out.shape != (n, dim):
        raise ExemplarIndexError(
            f"embedder {name!r} returned shape {out.shape} for {n} photos, expected ({n}, {dim})"
        )
    if not np.isfinite(out).all():
        raise ExemplarIndexError(f"embedder {name!r} returned NaN or infinite values")
    rows[batch.decoded] = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return rows


# -- the loop ------------------------------------------------------------------------


class _Pending:
    """Embedded batches not yet saved: one contiguous run of positions."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = self.stop = 0
        self.rows: list[np.ndarray] = []
        self.failures: list[tuple[int, str]] = []
        self.since = time.monotonic()

    def add(self, batch: _Batch, rows: np.ndarray) -> None:
        if not self.rows:
            self.start = self.stop = batch.positions[0]
        self.rows.append(rows)
        self.failures.extend(batch.failures)
        self.stop = batch.positions[-1] + 1

    def flush(self, partial: _Partial) -> None:
        if self.rows:
            partial.save(self.start, np.concatenate(self.rows, axis=0), self.failures)
        self.reset()


def _embed_missing(
    partial: _Partial,
    embedder: Any,
    paths: list[str],
    batches: list[list[int]],
    *,
    workers: int,
    chunk_size: int,
    progress: bool,
    resumed: int,
) -> None:
    """Embed the planned batches, saving a chunk when it is big or old enough, and on a stop."""
    from tqdm.auto import tqdm

    name, dim = str(embedder.name), int(embedder.dim)
    if not batches:
        return
    if hasattr(embedder, "transform") and hasattr(embedder, "embed_pixels"):
        # One batch gains nothing from a worker; forking one would cost more.
        source = _loader_batches(
            embedder, paths, batches, 0 if len(batches) == 1 else min(workers, len(batches))
        )
    else:
        source = _main_batches(paths, batches)
    pending = _Pending()
    skipped = 0
    # disable=None turns the bar off when not writing to a terminal.
    bar = tqdm(
        total=len(paths),
        initial=resumed,
        desc="embedding exemplars",
        unit="photo",
        disable=None if progress else True,
    )
    try:
        with contextlib.closing(source), bar:  # closing stops the workers, even on a stop
            for batch in source:
                rows = _embed(embedder, batch, name, dim)
                if pending.rows and batch.positions[0] != pending.stop:
                    pending.flush(partial)  # a gap: chunks are contiguous
                pending.add(batch, rows)
                size = pending.stop - pending.start
                if size >= chunk_size or time.monotonic() - pending.since >= FLUSH_SECONDS:
                    pending.flush(partial)
                skipped += len(batch.failures)
                bar.update(len(batch.positions))
                if skipped:
                    bar.set_postfix(skipped=skipped, refresh=False)
            pending.flush(partial)
    except BaseException:
        # Stopped or failed: keep what was embedded, so the next run resumes after it.
        with contextlib.suppress(Exception):
            pending.flush(partial)
        log.warning(
            "the build in %s stopped; run it again with the same inputs to resume",
            partial.folder.parent,
        )
        raise
