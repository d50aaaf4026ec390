"""The vector index under an exemplar bank: exact search for small banks, HNSW for large ones.

Vectors are L2-normalized float32 rows, so inner product is cosine similarity.
Exact search (``IndexFlatIP``) is the default; above :data:`HNSW_THRESHOLD`
vectors "auto" picks a graph index (``IndexHNSWFlat`` with inner product), whose
settings go into the bank's manifest and come back with :func:`configure_for_search`.
:func:`recall_at_k` says how much a graph index loses against exact search.

The defaults were measured with ``benchmarks/index_scale.py`` (see benchmarks/README.md).
faiss is imported when an index is built or measured, never at import time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cropper.core.errors import ConfigError, ExemplarIndexError, MissingDependencyError

log = logging.getLogger(__name__)

#: "auto" picks HNSW for banks with more vectors than this; exact search below.
HNSW_THRESHOLD = 50_000
KINDS = ("flat", "hnsw")
#: Graph degree, build-time and search-time beam widths (faiss's M, efConstruction, efSearch).
HNSW_DEFAULTS: dict[str, int] = {"m": 32, "ef_construction": 200, "ef_search": 128}
_ADD_SLICE = 100_000


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu", purpose="the exemplar index") from None
    return faiss


def choose_kind(count: int, requested: str = "auto") -> str:
    """``"flat"`` or ``"hnsw"`` for a bank of ``count`` vectors; ``"auto"`` decides by size."""
    if requested == "auto":
        return "hnsw" if count > HNSW_THRESHOLD else "flat"
    if requested in KINDS:
        return requested
    raise ConfigError(f"index kind {requested!r} is unknown: use 'auto', 'flat' or 'hnsw'")


def build_vector_index(
    vectors: np.ndarray, kind: str = "auto", **params: Any
) -> tuple[Any, dict[str, Any]]:
    """An inner-product index over ``vectors`` and the settings to store in the manifest.

    ``params`` are HNSW settings (``m``, ``ef_construction``, ``ef_search``); ``None``
    means the default, and they are ignored when the index is exact.
    """
    matrix = _unit_matrix(vectors)
    kind = choose_kind(len(matrix), kind)
    unknown = sorted(set(params) - set(HNSW_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown index setting(s) {', '.join(unknown)}: use {', '.join(HNSW_DEFAULTS)}"
        )
    faiss = _faiss()
    dim = matrix.shape[1]
    start = time.perf_counter()
    if kind == "flat":
        if any(v is not None for v in params.values()):
            log.info("exact index: ignoring the HNSW settings %s", params)
        index = faiss.IndexFlatIP(dim)
        index.add(matrix)
        stored: dict[str, Any] = {"kind": "flat"}
    else:
        settings = _hnsw_settings(params)
        index = faiss.IndexHNSWFlat(dim, settings["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings["ef_construction"]
        # In slices, to say how far a long build has got (a million vectors take minutes).
        for start_row in range(0, len(matrix), _ADD_SLICE):
            index.add(matrix[start_row : start_row + _ADD_SLICE])
            log.info("HNSW: %d of %d vectors added", index.ntotal, len(matrix))
        index.hnsw.efSearch = settings["ef_search"]
        stored = {"kind": "hnsw", **settings}
    log.info(
        "built %s index of %d vectors (%d-d) in %.1f s",
        kind,
        len(matrix),
        dim,
        time.perf_counter() - start,
    )
    return index, stored


def configure_for_search(index: Any, params: dict[str, Any]) -> None:
    """Apply a manifest's settings to an index read back from disk.

    The manifest decides, not the file: a caller may change ``ef_search`` there to
    trade speed for recall without rebuilding.

    Raises :class:`ExemplarIndexError` when the index is not the kind the settings describe.
    """
    faiss = _faiss()
    kind = params.get("kind", "flat")
    if kind not in KINDS:
        raise ExemplarIndexError(
            f"the manifest names index kind {kind!r}, which this version does not know; "
            "rebuild the bank"
        )
    found = _kind_of(faiss, index)
    if found != kind or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ExemplarIndexError(
            f"the manifest says a {kind} inner-product index but the index file holds "
            f"{type(index).__name__} (metric {index.metric_type}); rebuild the bank"
        )
    if kind == "hnsw":
        ef_search = _positive("ef_search", params.get("ef_search", HNSW_DEFAULTS["ef_search"]))
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", ef_search)


def recall_at_k(
    index: Any, vectors: np.ndarray, k: int = 30, n_queries: int = 200, seed: int = 0
) -> float:
    """Mean share of the exact top ``k`` that ``index`` returns, for queries near bank rows.

    Each query is a random row of ``vectors`` (the bank, in index order) plus a little
    noise, so it lies near the data without being one of its rows. 1.0 for an exact index.
    """
    faiss = _faiss()
    matrix = _unit_matrix(vectors)
    if index.ntotal != len(matrix) or index.d != matrix.shape[1]:
        raise ConfigError(
            f"the index holds {index.ntotal} vectors of {index.d} dims but {matrix.shape} "
            "vectors were given; pass the vectors the index was built from"
        )
    if k < 1 or n_queries < 1:
        raise ConfigError(f"k and n_queries must be at least 1, got {k} and {n_queries}")
    k = min(k, len(matrix))
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(matrix), size=min(n_queries, len(matrix)), replace=False)
    dim = matrix.shape[1]
    # Noise of norm ~0.5: each query has a cosine of ~0.9 to its row, like a similar photo.
    noise = rng.standard_normal((len(rows), dim), dtype=np.float32) * (0.5 / np.sqrt(dim))
    queries = _unit_matrix(matrix[rows] + noise)
    _, exact = faiss.knn(queries, matrix, k, faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, k)
    hits = [
        len(np.intersect1d(e, f[f >= 0], assume_unique=True))
        for e, f in zip(exact, found, strict=True)
    ]
    return float(np.sum(hits)) / (k * len(rows))


def _kind_of(faiss: Any, index: Any) -> str | None:
    """The kind (flat or hnsw) of an index this module builds, else None."""
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return None


def _hnsw_settings(params: dict[str, Any]) -> dict[str, int]:
    merged = {**HNSW_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    return {name: _positive(name, value) for name, value in merged.items()}


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"HNSW setting {name} must be a positive integer, got {value!r}")
    return int(value)


def _unit_matrix(vectors: Any) -> np.ndarray:
    """A C-contiguous float32 ``(N, d)`` copy (or view) of unit rows; checks shape and values."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise ConfigError(f"vectors must be a non-empty (N, d) matrix, got shape {matrix.shape}")
    # Row norms without a temporary the size of the matrix (a 1M-row bank is 3 GB);
    # a NaN or infinity anywhere in a row makes its norm non-finite.
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    if not np.isfinite(norms).all():
        raise ConfigError("vectors hold NaN or infinite values")
    if not np.allclose(norms, 1.0, atol=1e-3):
        matrix = matrix / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(matrix, dtype=np.float32)
