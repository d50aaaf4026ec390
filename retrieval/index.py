"""The exemplar bank on disk: a faiss index of CLIP embeddings, the exemplars, a manifest.

A bank is a folder of three files, written atomically and checked against each
other when loaded:

- ``index.faiss``: faiss's own format, an exact inner-product index over
  L2-normalized float32 vectors (so scores are cosine similarities);
- ``exemplars.jsonl``: one :class:`~retrieval.exemplars.Exemplar` a line, in the
  order of the vectors; photo paths absolute, or relative to the folder;
- ``manifest.json``: format version, embedder name and dimension, count,
  preprocessing, source dataset and split, creation time.

faiss is imported when a bank is built or loaded, never at import time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cropper.boxes import Box, Size
from cropper.errors import (
    ConfigError,
    CropperError,
    ExemplarIndexError,
    MissingDependencyError,
)
from cropper.fileio import atomic_path, write_text
from cropper.images import describe, load_image
from retrieval.exemplars import Exemplar, Point, first_few

log = logging.getLogger(__name__)

#: The newest bank layout this code reads and the one it writes.
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
EXEMPLARS_FILE = "exemplars.jsonl"
MANIFEST_FILE = "manifest.json"

_REBUILD = "rebuild it with ExemplarIndex.build(exemplars, embedder, folder)"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu", purpose="the exemplar index") from None
    return faiss


@dataclass(frozen=True)
class Hit:
    """One retrieved exemplar: its photo, size and crops, and how similar it is."""

    image: str
    size: Size
    crops: tuple[Box, ...]
    scores: tuple[float, ...] | None
    subjects: tuple[Point | None, ...] | None
    similarity: float  # cosine of the query's and the exemplar's embeddings
    index: int  # row in the bank

    @property
    def exemplar(self) -> Exemplar:
        return Exemplar(self.image, self.size, self.crops, self.scores, self.subjects)


class ExemplarIndex:
    """Exemplars searchable by CLIP similarity; build with :meth:`build`, open with :meth:`load`.

    ``embedder`` is needed only to search by photo; searching by embedding works without.
    """

    def __init__(
        self,
        faiss_index: Any,
        exemplars: Sequence[Exemplar],
        manifest: dict[str, Any],
        *,
        folder: str | os.PathLike | None = None,
        embedder: Any = None,
    ):
        self._index = faiss_index
        self.exemplars: tuple[Exemplar, ...] = tuple(exemplars)
        self._manifest = dict(manifest)
        self.folder = Path(folder) if folder is not None else None
        self.embedder = embedder

    # -- facts -----------------------------------------------------------------
    @property
    def embedder_name(self) -> str:
        return str(self._manifest["embedder"])

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest."""
        return json.loads(json.dumps(self._manifest))

    def __len__(self) -> int:
        return len(self.exemplars)

    def __repr__(self) -> str:
        return f"ExemplarIndex({len(self)} exemplars, embedder={self.embedder_name!r})"

    # -- build -----------------------------------------------------------------
    @classmethod
    def build(
        cls,
        exemplars: Sequence[Exemplar],
        embedder: Any,
        out: str | os.PathLike,
        *,
        batch_size: int = 32,
        dataset: str = "jsonl",
        split: str | None = None,
        progress: bool = True,
    ) -> ExemplarIndex:
        """Embed each exemplar's photo and write the bank to the folder ``out``.

        Photos that cannot be loaded are skipped and reported in one warning.
        An existing bank in ``out`` is replaced only once every embedding is made.
        """
        faiss = _faiss()
        exemplars = list(exemplars)
        if not exemplars:
            raise ExemplarIndexError(f"no exemplars to build {out} from; give at least one")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        name, dim = str(embedder.name), int(embedder.dim)
        kept, vectors = _embed_all(exemplars, embedder, batch_size, progress)
        matrix = _unit_rows(np.concatenate(vectors, axis=0), dim, name)
        index = faiss.IndexFlatIP(dim)
        index.add(matrix)
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedder": name,
            "dim": dim,
            "count": len(kept),
            "preprocess": getattr(embedder, "preprocess_info", None),
            "dataset": dataset,
            "split": split,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        folder = Path(out)
        try:
            _write(folder, index, kept, manifest)
        except OSError as exc:
            raise ExemplarIndexError(f"cannot write the exemplar bank to {folder}: {exc}") from None
        log.info("built exemplar bank %s: %d exemplars, %s", folder, len(kept), name)
        return cls(index, kept, manifest, folder=folder, embedder=embedder)

    # -- load ------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike, embedder: Any = None) -> ExemplarIndex:
        """Open a bank folder, checking its files against each other and against ``embedder``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ExemplarIndexError(f"{folder}: no exemplar bank there; build one ({_REBUILD})")
        missing = [
            f for f in (INDEX_FILE, EXEMPLARS_FILE, MANIFEST_FILE) if not (folder / f).is_file()
        ]
        if missing:
            raise ExemplarIndexError(
                f"{folder}: exemplar bank is incomplete (no {', '.join(missing)}); {_REBUILD}"
            )
        manifest = _read_manifest(folder)
        dim, count = manifest["dim"], manifest["count"]
        try:
            index = _faiss().read_index(str(folder / INDEX_FILE))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unreadable"
            raise ExemplarIndexError(
                f"{folder / INDEX_FILE}: corrupt or truncated faiss index ({reason}); {_REBUILD}"
            ) from None
        if index.ntotal != count or index.d != dim:
            raise ExemplarIndexError(
                f"{folder / INDEX_FILE} holds {index.ntotal} vectors of {index.d} dims but the "
                f"manifest says {count} of {dim}; {_REBUILD}"
            )
        exemplars = _read_exemplars(folder)
        if len(exemplars) != count:
            raise ExemplarIndexError(
                f"{folder / EXEMPLARS_FILE} has {len(exemplars)} exemplars but the manifest says "
                f"{count}; {_REBUILD}"
            )
        if embedder is not None and (embedder.name != manifest["embedder"] or embedder.dim != dim):
            raise ExemplarIndexError(
                f"{folder} was built with embedder {manifest['embedder']!r} ({dim}-d), not "
                f"{embedder.name!r} ({embedder.dim}-d): use that embedder, or {_REBUILD}"
            )
        return cls(index, exemplars, manifest, folder=folder, embedder=embedder)

    # -- search ----------------------------------------------------------------
    def search(self, query: Any, k: int = 30) -> list[Hit]:
        """The ``k`` nearest exemplars to a photo (path, PIL image) or an embedding vector."""
        if isinstance(query, (np.ndarray, list, tuple)):
            vector = np.asarray(query, dtype=np.float32).reshape(1, -1)
        else:
            vector = self._embed_query(query)
        return self.search_embeddings(vector, k)[0]

    def search_embeddings(self, matrix: Any, k: int = 30) -> list[list[Hit]]:
        """The ``k`` nearest exemplars to each row of an ``(N, dim)`` matrix."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        queries = np.array(matrix, dtype=np.float32, ndmin=2)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(
                f"query embeddings must be (N, {self.dim}) for embedder {self.embedder_name!r}, "
                f"got shape {np.shape(matrix)}"
            )
        if not np.isfinite(queries).all():
            raise ConfigError("query embeddings hold NaN or infinite values")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = np.ascontiguousarray(queries / np.maximum(norms, 1e-12))
        similarities, rows = self._index.search(queries, min(k, len(self)))
        return [
            [self._hit(int(r), float(s)) for s, r in zip(sims, idx, strict=True) if r >= 0]
            for sims, idx in zip(similarities, rows, strict=True)
        ]

    def _embed_query(self, query: Any) -> np.ndarray:
        if self.embedder is None:
            raise ConfigError(
                f"searching by photo ({describe(query)}) needs an embedder: pass "
                "embedder= to ExemplarIndex.load, or search by embedding"
            )
        image = query if isinstance(query, Image.Image) else load_image(query)
        return np.asarray(self.embedder.embed([image]), dtype=np.float32)

    def _hit(self, row: int, similarity: float) -> Hit:
        ex = self.exemplars[row]
        return Hit(ex.image, ex.size, ex.crops, ex.scores, ex.subjects, similarity, row)


# -- building ----------------------------------------------------------------------


def _batches(items: list[Exemplar], size: int) -> Iterator[list[Exemplar]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _embed_all(
    exemplars: list[Exemplar], embedder: Any, batch_size: int, progress: bool
) -> tuple[list[Exemplar], list[np.ndarray]]:
    """Embeddings of the photos that load, with their exemplars; reports those that do not."""
    from tqdm.auto import tqdm

    kept: list[Exemplar] = []
    vectors: list[np.ndarray] = []
    failed: list[str] = []
    # disable=None turns the bar off when not writing to a terminal.
    bar = tqdm(
        total=len(exemplars),
        desc="embedding exemplars",
        unit="photo",
        disable=None if progress else True,
    )
    with bar:
        for batch in _batches(exemplars, batch_size):
            images, batch_kept = [], []
            for ex in batch:
                try:
                    images.append(load_image(ex.image))
                    batch_kept.append(ex)
                except CropperError as exc:
                    failed.append(str(exc))
            if images:
                out = np.asarray(embedder.embed(images), dtype=np.float32)
                if out.shape != (len(images), int(embedder.dim)):
                    raise ExemplarIndexError(
                        f"embedder {embedder.name!r} returned shape {out.shape} for "
                        f"{len(images)} photos, expected ({len(images)}, {embedder.dim})"
                    )
                vectors.append(out)
                kept.extend(batch_kept)
            bar.update(len(batch))
    if failed:
        report = f"skipped {len(failed)} of {len(exemplars)} exemplar photos: {first_few(failed)}"
        if not kept:
            raise ExemplarIndexError(f"{report}; no photo could be embedded, so no bank was built")
        log.warning("%s", report)
    return kept, vectors


def _unit_rows(matrix: np.ndarray, dim: int, name: str) -> np.ndarray:
    if not np.isfinite(matrix).all():
        raise ExemplarIndexError(f"embedder {name!r} returned NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _stored_path(image: str, folder: Path) -> str:
    """Absolute, or relative to the bank when the photo lies inside it (so both move together)."""
    path = Path(os.path.abspath(image))
    with contextlib.suppress(ValueError):
        return path.relative_to(Path(os.path.abspath(folder))).as_posix()
    return str(path)


def _write(folder: Path, index: Any, exemplars: list[Exemplar], manifest: dict[str, Any]) -> None:
    """Write the three files, each atomically; the manifest goes last.

    The old manifest is removed first, so a build stopped halfway leaves a folder
    that :meth:`ExemplarIndex.load` refuses rather than a mix of two banks.
    """
    faiss = _faiss()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / MANIFEST_FILE)
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    lines = []
    for ex in exemplars:
        row = ex.to_json()
        row["image"] = _stored_path(ex.image, folder)
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text(folder / EXEMPLARS_FILE, "\n".join(lines) + "\n")
    write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


# -- loading -----------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExemplarIndexError(
            f"{path}: not a readable JSON manifest ({exc}); {_REBUILD}"
        ) from None
    if not isinstance(manifest, dict):
        raise ExemplarIndexError(f"{path}: the manifest is not a JSON object; {_REBUILD}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExemplarIndexError(f"{path}: no valid format_version; {_REBUILD}")
    if version > FORMAT_VERSION:
        raise ExemplarIndexError(
            f"{path}: bank format {version} is newer than this cropper reads ({FORMAT_VERSION}); "
            f"upgrade cropper, or {_REBUILD}"
        )
    for key, kind in (("embedder", str), ("dim", int), ("count", int)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ExemplarIndexError(f"{path}: missing or bad {key!r}; {_REBUILD}")
    return manifest


def _read_exemplars(folder: Path) -> list[Exemplar]:
    path = folder / EXEMPLARS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExemplarIndexError(f"{path}: unreadable ({exc}); {_REBUILD}") from None
    exemplars = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ex = Exemplar.from_json(json.loads(line))
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ExemplarIndexError(
                f"{path}, line {number}: bad exemplar ({exc}); {_REBUILD}"
            ) from None
        if not Path(ex.image).is_absolute():
            ex = Exemplar(
                str(folder.resolve() / ex.image), ex.size, ex.crops, ex.scores, ex.subjects
            )
        exemplars.append(ex)
    return exemplars
