"""The exemplar bank on disk: a faiss index of CLIP embeddings, the exemplars, a manifest.

A bank is a folder of three files, written atomically and checked against each
other when loaded:

- ``index.faiss``: faiss's own format, an inner-product index over L2-normalized
  float32 vectors (so scores are cosine similarities): exact (flat) by default,
  HNSW for large banks (see :mod:`retrieval.ann`);
- ``exemplars.jsonl``: one :class:`~retrieval.exemplars.Exemplar` a line, in the
  order of the vectors; photo paths absolute, or relative to the folder;
- ``manifest.json``, written last: format version, embedder (spec, model,
  pretrained tag, preprocessing), dimension, count, source dataset and split,
  creation time, index kind and parameters, for HNSW its recall@30 against
  exact search, and the SHA-256 of the other two files (``sha256``), so that a
  bank whose vectors and rows come from different builds is refused when loaded.

Embedding (batched, decoded in worker processes, resumable) is :mod:`retrieval.build`.
faiss is imported when a bank is built or loaded, never at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cropper.core.boxes import Box, Size
from cropper.core.errors import (
    ConfigError,
    CropperError,
    ExemplarIndexError,
    MissingDependencyError,
)
from cropper.core.fileio import FolderLock, atomic_path, remove_stale_temporaries, write_text
from cropper.core.images import load_image
from retrieval import ann
from retrieval.build import DEFAULT_CHUNK_SIZE, PARTIAL_DIR, discard_partial, embed_exemplars
from retrieval.embedder import split_spec
from retrieval.exemplars import Exemplar, Point

log = logging.getLogger(__name__)

#: The newest bank layout this code reads and the one it writes. 2 added HNSW
#: banks, whose search settings live in the manifest: code reading only 1 would
#: search them with faiss's defaults, so it must refuse them.
FORMAT_VERSION = 2
INDEX_FILE = "index.faiss"
EXEMPLARS_FILE = "exemplars.jsonl"
MANIFEST_FILE = "manifest.json"
#: The S of recall@S measured for approximate (HNSW) banks: the loop retrieves 30.
RECALL_AT = 30
#: The faiss class each index kind loads as.
_KIND_CLASSES = {"flat": "IndexFlat", "hnsw": "IndexHNSW"}
#: The manifest key holding each other file's SHA-256 (banks written before it have none).
CHECKSUMS = "sha256"


def _rebuild(
    folder: str | os.PathLike, manifest: dict[str, Any] | None = None, clip: str | None = None
) -> str:
    """How to rebuild a bank, filled in from its manifest where that is readable."""
    known = manifest or {}
    words = ["cropper index build", f"--dataset {known.get('dataset') or '...'}", "--root ..."]
    if isinstance(known.get("split"), str):
        words.append(f"--split {shlex.quote(known['split'])}")
    clip = clip or (known.get("embedder") if isinstance(known.get("embedder"), str) else None)
    if clip:
        words.append(f"--clip {shlex.quote(clip)}")
    words.append(f"--out {shlex.quote(str(folder))}")
    return f"rebuild it with `{' '.join(words)}`"


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

    def vectors(self) -> np.ndarray:
        """The bank's unit vectors in row order; flat and HNSW-flat indexes keep them whole."""
        return np.asarray(self._index.reconstruct_n(0, self._index.ntotal), dtype=np.float32)

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
        num_workers: int | None = None,
        index_type: str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dataset: str = "jsonl",
        split: str | None = None,
        progress: bool = True,
    ) -> ExemplarIndex:
        """Embed each exemplar's photo and write the bank to the folder ``out``.

        Photos are decoded in ``num_workers`` processes (default up to 4; 0 decodes
        here) when the embedder has a ``transform``; see :mod:`retrieval.build`.
        A stopped build resumes when run again with the same inputs and ``out``.
        ``index_type`` is ``"flat"`` (exact), ``"hnsw"`` or ``"auto"`` (HNSW above
        :data:`retrieval.ann.HNSW_THRESHOLD` vectors); an HNSW bank's recall@30
        against exact search is measured and kept in ``manifest["recall_at_30"]``.
        Unreadable photos are skipped and reported in one warning. An existing bank
        in ``out`` is replaced only once every embedding is made. Two builds must not
        write one ``out`` at once: hold :func:`bank_lock` around it, as
        ``cropper index build`` does.
        """
        exemplars = list(exemplars)
        if not exemplars:
            raise ExemplarIndexError(f"no exemplars to build {out} from; give at least one")
        ann.choose_kind(len(exemplars), index_type)  # a bad choice fails before the long part
        name, dim = str(embedder.name), int(embedder.dim)
        embedded = embed_exemplars(
            exemplars,
            embedder,
            out,
            batch_size=batch_size,
            num_workers=num_workers,
            chunk_size=chunk_size,
            progress=progress,
        )
        kept, vectors = embedded.exemplars, embedded.vectors
        index, params = ann.build_vector_index(vectors, index_type)
        model, pretrained = split_spec(name)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "embedder": name,
            "model": getattr(embedder, "model_name", model),
            "pretrained": getattr(embedder, "pretrained", pretrained),
            "preprocess": getattr(embedder, "preprocess_info", None),
            "dim": dim,
            "count": len(kept),
            "dataset": dataset,
            "split": split,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "index": params,
        }
        if params.get("kind") != "flat":
            recall = ann.recall_at_k(index, vectors, k=min(RECALL_AT, len(kept)))
            manifest[f"recall_at_{RECALL_AT}"] = round(float(recall), 4)
        folder = Path(out)
        try:
            manifest = write_bank(folder, index, kept, manifest)
        except OSError as exc:
            raise ExemplarIndexError(f"cannot write the exemplar bank to {folder}: {exc}") from None
        discard_partial(folder)  # only now: until the manifest is in, a rerun resumes
        recall = manifest.get(f"recall_at_{RECALL_AT}")
        log.info(
            "built exemplar bank %s: %d exemplars, %s, %s index%s",
            folder,
            len(kept),
            name,
            params.get("kind"),
            f", recall@{RECALL_AT} {recall}" if recall is not None else "",
        )
        return cls(index, kept, manifest, folder=folder, embedder=embedder)

    # -- load ------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike, embedder: Any = None) -> ExemplarIndex:
        """Open a bank folder, checking its files against each other and against ``embedder``."""
        folder = Path(folder)
        manifest = check_bank(folder)
        rebuild = _rebuild(folder, manifest)
        dim, count = manifest["dim"], manifest["count"]
        # First: the commonest mistake, and cheap to spot before reading a large index.
        if embedder is not None and (embedder.name != manifest["embedder"] or embedder.dim != dim):
            # One name, two widths: the model behind the name changed, or the manifest did.
            same = " (the model changed since, or the manifest is damaged)"
            raise ExemplarIndexError(
                f"{folder / MANIFEST_FILE}: this bank was built with embedder "
                f"{manifest['embedder']!r} ({dim}-d), not {embedder.name!r} ({embedder.dim}-d)"
                f"{same if embedder.name == manifest['embedder'] else ''}: use that embedder, or "
                f"{_rebuild(folder, manifest, clip=str(embedder.name))}"
            )
        faiss = _faiss()
        index = _read_index(folder / INDEX_FILE, rebuild, faiss)
        if index.ntotal != count or index.d != dim:
            raise ExemplarIndexError(
                f"{folder / INDEX_FILE} holds {index.ntotal} vectors of {index.d} dims but the "
                f"manifest says {count} of {dim}; {rebuild}"
            )
        params = _index_params(folder, manifest, index, faiss)
        try:
            ann.configure_for_search(index, params)
        except (CropperError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ExemplarIndexError(
                f"{folder / MANIFEST_FILE}: bad index settings {params} ({exc}); {rebuild}"
            ) from None
        exemplars, rows_digest = _read_exemplars(folder, rebuild)
        if len(exemplars) != count:
            raise ExemplarIndexError(
                f"{folder / EXEMPLARS_FILE} has {len(exemplars)} exemplars but the manifest says "
                f"{count}; {rebuild}"
            )
        _check_sums(folder, manifest, rows_digest, rebuild)
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
            # Loaded without one: the bank's own embedder, built on the first photo query.
            from retrieval.embedder import load_embedder

            self.embedder = load_embedder(self.embedder_name)
        image = query if isinstance(query, Image.Image) else load_image(query)
        return np.asarray(self.embedder.embed([image]), dtype=np.float32)

    def _hit(self, row: int, similarity: float) -> Hit:
        ex = self.exemplars[row]
        return Hit(ex.image, ex.size, ex.crops, ex.scores, ex.subjects, similarity, row)


# -- writing -----------------------------------------------------------------------


def _stored_path(image: str, folder: Path) -> str:
    """Absolute, or relative to the bank when the photo lies inside it (so both move together)."""
    path = Path(os.path.abspath(image))
    with contextlib.suppress(ValueError):
        return path.relative_to(Path(os.path.abspath(folder))).as_posix()
    return str(path)


def write_bank(
    folder: Path, index: Any, exemplars: list[Exemplar], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write the three files, each atomically; the manifest goes last. Returns the manifest.

    The old manifest is removed first, so a build stopped halfway leaves a folder
    that :meth:`ExemplarIndex.load` refuses rather than a mix of two banks. The
    manifest written records the SHA-256 of the index and exemplars files as they
    were written, so files of two writers mixed in one folder are refused too.
    """
    faiss = _faiss()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / MANIFEST_FILE)
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
        index_digest = _file_sha256(tmp)
    lines = []
    for ex in exemplars:
        row = ex.to_json()
        row["image"] = _stored_path(ex.image, folder)
        lines.append(json.dumps(row, ensure_ascii=False))
    rows = ("\n".join(lines) + "\n").encode("utf-8")
    with atomic_path(folder / EXEMPLARS_FILE) as tmp:
        tmp.write_bytes(rows)
    manifest = {
        **manifest,
        CHECKSUMS: {INDEX_FILE: index_digest, EXEMPLARS_FILE: hashlib.sha256(rows).hexdigest()},
    }
    write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


#: The bank's own files; a writer killed mid-write leaves ``.NAME.*.tmp`` beside them.
_BANK_FILES = (INDEX_FILE, EXEMPLARS_FILE, MANIFEST_FILE)


def check_bank(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the bank in ``folder``, after the checks that need no large read.

    A missing, unfinished or incomplete bank, or a damaged or newer manifest, is one line
    saying what to do; ``Cropper`` runs this before any model loads.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExemplarIndexError(
            f"{folder}: no exemplar bank there; build one with "
            f"`cropper index build --dataset ... --root ... --out {shlex.quote(str(folder))}`"
        )
    missing = [f for f in (INDEX_FILE, EXEMPLARS_FILE, MANIFEST_FILE) if not (folder / f).is_file()]
    if missing and (folder / PARTIAL_DIR).is_dir():
        raise ExemplarIndexError(
            f"{folder}: a build of this bank was stopped before it finished; run the same "
            "`cropper index build` (or ExemplarIndex.build) again to resume it"
        )
    if missing:
        raise ExemplarIndexError(
            f"{folder}: exemplar bank is incomplete (no {', '.join(missing)}); {_rebuild(folder)}"
        )
    return _read_manifest(folder)


@contextlib.contextmanager
def bank_lock(
    folder: str | os.PathLike, command: str, *, wait: bool = False
) -> Iterator[FolderLock]:
    """Hold the bank folder for one writer, then clear what a killed writer left there.

    A second writer is refused in one line naming the holder (or, with ``wait``, waits
    for it); see :class:`~cropper.core.fileio.FolderLock`. Once the lock is held, the
    temporary files of the bank's own atomic writes (``.index.faiss.*.tmp`` and the
    like, and any under ``.partial``) are removed: no live writer can own them.
    """
    with FolderLock(folder, command, wait=wait) as lock:
        remove_stale_temporaries(folder)  # only names atomic writes make, .partial/ too
        yield lock


# -- loading -----------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExemplarIndexError(
            f"{path}: not a readable JSON manifest ({exc}); {_rebuild(folder)}"
        ) from None
    if not isinstance(manifest, dict):
        raise ExemplarIndexError(f"{path}: the manifest is not a JSON object; {_rebuild(folder)}")
    rebuild = _rebuild(folder, manifest)
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExemplarIndexError(f"{path}: no valid format_version; {rebuild}")
    if version > FORMAT_VERSION:
        raise ExemplarIndexError(
            f"{path}: bank format {version} is newer than this cropper reads ({FORMAT_VERSION}); "
            f"upgrade cropper, or {rebuild}"
        )
    for key, kind in (("embedder", str), ("dim", int), ("count", int)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ExemplarIndexError(f"{path}: missing or bad {key!r}; {rebuild}")
    return manifest


@contextlib.contextmanager
def _vectors_at_most(faiss: Any, limit: int) -> Any:
    """Let faiss read no array larger than ``limit`` bytes, then restore its own limit."""
    get = getattr(faiss, "get_deserialization_vector_byte_limit", None)
    set_ = getattr(faiss, "set_deserialization_vector_byte_limit", None)
    if get is None or set_ is None:  # an older faiss: its own (large) limit stands
        yield
        return
    before = get()
    set_(min(before, limit))
    try:
        yield
    finally:
        set_(before)


def _read_index(path: Path, rebuild: str, faiss: Any) -> Any:
    """The faiss index file, or a one-line error saying it is damaged."""
    try:
        # No array in the file can be larger than the file: a damaged length field must
        # fail here, not allocate (and zero) terabytes before the read comes up short.
        with _vectors_at_most(faiss, max(path.stat().st_size, 1)):
            return faiss.read_index(str(path))
    except (RuntimeError, MemoryError, OSError) as exc:
        text = " ".join(str(exc).split())
        # faiss's message starts with a C++ signature; what failed follows "Error:".
        reason = (text[text.rfind("Error:") :] if "Error:" in text else text) or "unreadable"
        raise ExemplarIndexError(
            f"{path}: corrupt or truncated faiss index ({reason[:160]}); {rebuild}"
        ) from None


def _index_params(folder: Path, manifest: dict[str, Any], index: Any, faiss: Any) -> dict[str, Any]:
    """The manifest's index settings, checked against the index file (format 1 banks: flat)."""
    params = manifest.get("index", {"kind": "flat"} if manifest["format_version"] < 2 else None)
    kind = params.get("kind") if isinstance(params, dict) else None
    if kind not in _KIND_CLASSES:
        raise ExemplarIndexError(
            f"{folder / MANIFEST_FILE}: missing or unknown index kind {kind!r} (expected "
            f"{' or '.join(_KIND_CLASSES)}); {_rebuild(folder, manifest)}"
        )
    expected = getattr(faiss, _KIND_CLASSES[kind])
    if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ExemplarIndexError(
            f"{folder / INDEX_FILE} is a {type(index).__name__}, not the inner-product {kind} "
            f"index the manifest names; {_rebuild(folder, manifest)}"
        )
    return params


#: What a damaged exemplars line may raise (RecursionError: JSON nested too deep).
_ROW_ERRORS = (ConfigError, KeyError, TypeError, ValueError, ArithmeticError, RecursionError)


def _check_sums(folder: Path, manifest: dict[str, Any], rows_digest: str, rebuild: str) -> None:
    """The index and exemplars files are the ones the manifest was written with."""
    sums = manifest.get(CHECKSUMS)
    if sums is None:
        return  # a bank written before checksums were kept
    if not isinstance(sums, dict):
        raise ExemplarIndexError(f"{folder / MANIFEST_FILE}: bad {CHECKSUMS!r}; {rebuild}")
    other = "written by two builds at once, or a file was replaced or edited"
    if sums.get(EXEMPLARS_FILE) != rows_digest:
        raise ExemplarIndexError(
            f"{folder / EXEMPLARS_FILE} is not the one the manifest was written with "
            f"(SHA-256 differs): its rows may not match the vectors ({other}); {rebuild}"
        )
    try:
        index_digest = _file_sha256(folder / INDEX_FILE)
    except OSError as exc:
        raise ExemplarIndexError(f"{folder / INDEX_FILE}: unreadable ({exc}); {rebuild}") from None
    if sums.get(INDEX_FILE) != index_digest:
        raise ExemplarIndexError(
            f"{folder / INDEX_FILE} is not the one the manifest was written with "
            f"(SHA-256 differs): its vectors may not match the rows ({other}); {rebuild}"
        )


def _read_exemplars(folder: Path, rebuild: str) -> tuple[list[Exemplar], str]:
    """The exemplars, and the SHA-256 of the file they were read from."""
    path = folder / EXEMPLARS_FILE
    try:
        data = path.read_bytes()
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExemplarIndexError(f"{path}: unreadable ({exc}); {rebuild}") from None
    exemplars = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ex = Exemplar.from_json(json.loads(line))
        except _ROW_ERRORS as exc:
            raise ExemplarIndexError(
                f"{path}, line {number}: bad exemplar ({exc}); {rebuild}"
            ) from None
        if not Path(ex.image).is_absolute():
            ex = Exemplar(
                str(folder.resolve() / ex.image), ex.size, ex.crops, ex.scores, ex.subjects
            )
        exemplars.append(ex)
    return exemplars, hashlib.sha256(data).hexdigest()
