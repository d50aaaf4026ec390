"""Embedding a bank's photos: batched, decoded in worker processes, resumable.

:func:`embed_exemplars` embeds each exemplar's whole photo as one row through the shared
pipeline of :mod:`retrieval.embedding_cache` (the same that embeds crops for head
training): photos decoded in ``torch.utils.data.DataLoader`` workers when the embedder
offers a picklable ``transform`` and ``embed_pixels``, an unreadable photo skipped and
named in one warning, never a crash.

Work is saved as it goes, so a build that is stopped (Ctrl-C, a crash, ``kill -9``)
continues where it left off when run again with the same inputs and folder::

    OUT/.partial/state.json                              what the work is for (a fingerprint)
    OUT/.partial/chunk-0000000000-0000000064.npy         rows for photos [0, 64)
    OUT/.partial/chunk-0000000000-0000000064.failed.json  the unreadable ones, if any

A chunk is saved every :data:`DEFAULT_CHUNK_SIZE` photos or :data:`FLUSH_SECONDS`,
whichever comes first, so a kill loses little. A changed input (embedder, dimension,
the photos, their order, or a photo's size or modification time) starts over.

One build writes a folder at a time: ``cropper index build`` holds the folder's
:class:`~cropper.core.fileio.FolderLock` (see :func:`retrieval.index.bank_lock`); two
builds sharing one ``.partial`` without it could assemble each other's rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropper.core.errors import ExemplarIndexError
from retrieval.embedding_cache import (
    DEFAULT_CHUNK_SIZE,
    FLUSH_SECONDS,
    ChunkStore,
    Item,
    check_settings,
    default_workers,
    embed_items,
    fingerprint,
)
from retrieval.exemplars import Exemplar, first_few

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FLUSH_SECONDS",
    "PARTIAL_DIR",
    "Embedded",
    "default_workers",
    "discard_partial",
    "embed_exemplars",
]

log = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"


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
    workers = check_settings(num_workers=num_workers, chunk_size=chunk_size, batch_size=batch_size)
    folder = Path(out)
    created = not folder.exists()
    items = [Item(os.path.abspath(ex.image)) for ex in exemplars]
    try:
        store = ChunkStore.open(folder / PARTIAL_DIR, fingerprint(embedder, items), len(items))
    except OSError as exc:
        raise ExemplarIndexError(f"cannot write the exemplar bank to {folder}: {exc}") from None
    result = embed_items(
        items,
        embedder,
        store,
        batch_rows=batch_size,
        num_workers=workers,
        chunk_size=chunk_size,
        label="embedding exemplars",
        progress=progress,
    )
    kept = [p for p in range(len(items)) if p not in result.failed]
    failures = [result.failed[p] for p in sorted(result.failed)]
    if failures:
        report = f"skipped {len(failures)} of {len(items)} exemplar photos: {first_few(failures)}"
        if not kept:
            discard_partial(folder)
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: nothing of the user's is removed
            raise ExemplarIndexError(f"{report}; no photo could be embedded, so no bank was built")
        log.warning("%s", report)
    # One row a photo; indexing copies into a C-ordered array, as faiss wants.
    vectors = result.rows[kept] if failures else result.rows
    return Embedded([exemplars[p] for p in kept], vectors, failures, result.resumed)


def discard_partial(out: str | os.PathLike) -> None:
    """Remove the saved work of a build in ``out`` (after the bank is written)."""
    shutil.rmtree(Path(out) / PARTIAL_DIR, ignore_errors=True)
