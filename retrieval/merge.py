"""Merging exemplar banks into one that serves them all (a professional bank with a benchmark's).

The banks must share one embedder (the same spec and dimension): vectors of two
embedders do not live in one space. The merged bank holds every source's
exemplars in the order the sources are given, their vectors re-indexed as a build
would index them (``auto``: exact search, HNSW for large banks), and a manifest,
written last, that names its sources (folder, count, dataset, split). Photo paths
are absolute, or relative to the merged bank when the photos lie inside it, so the
merged bank finds the photos wherever its sources kept them.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cropper.core.errors import ConfigError, ExemplarIndexError
from retrieval import ann
from retrieval.build import discard_partial
from retrieval.exemplars import Exemplar, first_few

log = logging.getLogger(__name__)

#: What the merged bank's ``dataset`` says; ``sources`` names the real ones.
MERGED = "merged"
#: Manifest keys that describe one build, not its embedder: the merge writes its own.
_PER_BUILD = ("count", "dataset", "split", "created", "index", "sources")


def merge_banks(
    banks: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    index_type: str = "auto",
    progress: bool = False,
) -> Path:
    """Write to the folder ``out`` a bank holding the exemplars of every bank in ``banks``.

    Each source is loaded and checked as :meth:`ExemplarIndex.load` checks it; a
    source built with another embedder than the first is refused with an
    :class:`ExemplarIndexError` naming both banks and embedders. The sources are
    left untouched; ``out`` may not be one of them. Returns ``out`` as a Path.
    """
    from tqdm.auto import tqdm

    from retrieval.index import ExemplarIndex

    folders = [Path(bank) for bank in banks]
    target = Path(out)
    _check_folders(folders, target)
    ann.choose_kind(1, index_type)  # a bad choice fails before any bank is read
    sources: list[ExemplarIndex] = []
    # disable=None turns the bar off when not writing to a terminal.
    for folder in tqdm(
        folders, desc="reading banks", unit="bank", disable=None if progress else True
    ):
        bank = ExemplarIndex.load(folder)
        if sources:
            _check_same_embedder(sources[0], bank)
        sources.append(bank)
    exemplars = [ex for bank in sources for ex in bank.exemplars]
    _warn_repeated_photos(exemplars)
    vectors = np.concatenate([bank.vectors() for bank in sources], axis=0)
    index, params = ann.build_vector_index(vectors, index_type)
    manifest = _manifest(sources, params, len(exemplars))
    if params.get("kind") != "flat":
        from retrieval.index import RECALL_AT

        recall = ann.recall_at_k(index, vectors, k=min(RECALL_AT, len(exemplars)))
        manifest[f"recall_at_{RECALL_AT}"] = round(float(recall), 4)
    _write_bank(target, index, exemplars, manifest)
    log.info(
        "merged %d banks into %s: %d exemplars, %s index",
        len(sources),
        target,
        len(exemplars),
        params.get("kind"),
    )
    return target


def _check_folders(folders: list[Path], target: Path) -> None:
    if len(folders) < 2:
        raise ConfigError(f"merging needs two or more banks, got {len(folders)}: name them all")
    resolved = [folder.resolve() for folder in folders]
    repeated = sorted({str(f) for f, n in Counter(map(str, resolved)).items() if n > 1})
    if repeated:
        raise ConfigError(f"bank {repeated[0]} is given twice: name each bank once")
    if target.resolve() in resolved:
        raise ConfigError(
            f"--out {target} is one of the banks being merged: write the merged bank elsewhere"
        )


def _check_same_embedder(first: Any, other: Any) -> None:
    if first.embedder_name != other.embedder_name or first.dim != other.dim:
        raise ExemplarIndexError(
            f"cannot merge {other.folder} (embedder {other.embedder_name!r}, {other.dim}-d) "
            f"with {first.folder} (embedder {first.embedder_name!r}, {first.dim}-d): banks must "
            f"share one embedder; rebuild {other.folder} with --clip {first.embedder_name}"
        )


def _warn_repeated_photos(exemplars: list[Exemplar]) -> None:
    counts = Counter(ex.image for ex in exemplars)
    repeated = [image for image, n in counts.items() if n > 1]
    if repeated:
        log.warning(
            "%d photos are in more than one source bank; each copy is kept: %s",
            len(repeated),
            first_few(repeated),
        )


def _manifest(sources: list[Any], params: dict[str, Any], count: int) -> dict[str, Any]:
    """The first source's embedder facts, then this merge's own (count, sources, index)."""
    from retrieval.index import FORMAT_VERSION

    first = sources[0].manifest
    manifest = {
        k: v for k, v in first.items() if k not in _PER_BUILD and not k.startswith("recall")
    }
    manifest.update(
        format_version=FORMAT_VERSION,
        count=count,
        dataset=MERGED,
        split=None,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        index=params,
        sources=[_source(bank) for bank in sources],
    )
    return manifest


def _source(bank: Any) -> dict[str, Any]:
    manifest = bank.manifest
    entry = {
        "bank": str(bank.folder.resolve()),
        "count": len(bank),
        "dataset": manifest.get("dataset"),
        "split": manifest.get("split"),
    }
    if "sources" in manifest:  # a merged bank merged again keeps its history
        entry["sources"] = manifest["sources"]
    return entry


def _write_bank(
    folder: Path, index: Any, exemplars: list[Exemplar], manifest: dict[str, Any]
) -> None:
    """Write as a build writes: the three files atomically, the manifest last."""
    from retrieval.index import write_bank

    try:
        write_bank(folder, index, exemplars, manifest)
    except OSError as exc:
        raise ExemplarIndexError(f"cannot write the merged bank to {folder}: {exc}") from None
    discard_partial(folder)  # a stopped build's work there is for a bank now replaced
