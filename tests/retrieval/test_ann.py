"""The vector index: exact vs HNSW choice, builds, stored settings, recall against exact search."""

from __future__ import annotations

import subprocess
import sys

import faiss
import numpy as np
import pytest

from cropper.core.errors import ConfigError, ExemplarIndexError
from retrieval.ann import (
    HNSW_DEFAULTS,
    HNSW_THRESHOLD,
    build_vector_index,
    choose_kind,
    configure_for_search,
    recall_at_k,
)


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit rows from a mixture of gaussians on the sphere, like embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim), np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("count", "requested", "expected"),
    [
        (1, "auto", "flat"),
        (HNSW_THRESHOLD, "auto", "flat"),
        (HNSW_THRESHOLD + 1, "auto", "hnsw"),
        (10_000_000, "auto", "hnsw"),
        (10, "hnsw", "hnsw"),
        (10_000_000, "flat", "flat"),
    ],
)
def test_choose_kind(count: int, requested: str, expected: str) -> None:
    assert choose_kind(count, requested) == expected


@pytest.mark.parametrize("bad", ["ivf", "HNSW", "", "exact"])
def test_unknown_kind_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="'auto', 'flat' or 'hnsw'"):
        choose_kind(10, bad)
    with pytest.raises(ConfigError, match="index kind"):
        build_vector_index(clustered(10), bad)


def test_flat_index_is_exact() -> None:
    vectors = clustered(600)
    index, params = build_vector_index(vectors, "auto")
    assert params == {"kind": "flat"}
    assert isinstance(index, faiss.IndexFlatIP) and index.ntotal == 600
    assert recall_at_k(index, vectors, k=30, n_queries=100) == 1.0


def test_hnsw_recall_is_high_on_clustered_data() -> None:
    vectors = clustered(3000)
    index, params = build_vector_index(vectors, "hnsw", m=16, ef_construction=80, ef_search=64)
    assert params == {"kind": "hnsw", "m": 16, "ef_construction": 80, "ef_search": 64}
    assert isinstance(index, faiss.IndexHNSWFlat)
    assert index.hnsw.efSearch == 64 and index.hnsw.efConstruction == 80
    assert recall_at_k(index, vectors, k=30, n_queries=100) >= 0.95
    # A graph too sparse to navigate loses neighbours: the measure must see it.
    weak = faiss.IndexHNSWFlat(32, 2, faiss.METRIC_INNER_PRODUCT)
    weak.hnsw.efConstruction = 2
    weak.add(vectors)
    weak.hnsw.efSearch = 1
    assert recall_at_k(weak, vectors, k=30, n_queries=100) < 0.9


def test_hnsw_defaults_fill_missing_and_none_settings() -> None:
    _, params = build_vector_index(clustered(200), "hnsw", m=None, ef_search=40)
    assert params == {**HNSW_DEFAULTS, "kind": "hnsw", "ef_search": 40}


def test_flat_ignores_hnsw_settings() -> None:
    index, params = build_vector_index(clustered(50), "flat", m=8, ef_search=10)
    assert params == {"kind": "flat"} and isinstance(index, faiss.IndexFlatIP)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"efSearch": 10}, "unknown index setting"),
        ({"m": 0}, "m must be a positive integer"),
        ({"ef_search": "64"}, "ef_search must be a positive integer"),
        ({"ef_construction": True}, "ef_construction must be a positive integer"),
    ],
)
def test_bad_settings_are_config_errors(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_vector_index(clustered(50), "hnsw", **params)


@pytest.mark.parametrize(
    "vectors",
    [np.zeros((0, 8), np.float32), np.ones(8, np.float32), np.full((3, 8), np.nan, np.float32)],
    ids=["empty", "one-dimensional", "nan"],
)
def test_bad_vectors_are_config_errors(vectors: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="vectors"):
        build_vector_index(vectors)


def test_rows_are_normalized_so_scores_are_cosines() -> None:
    vectors = clustered(100)
    index, _ = build_vector_index(vectors * 7.0, "flat")
    scores, rows = index.search(vectors[:5], 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_configure_for_search_round_trips_through_a_file(tmp_path) -> None:
    vectors = clustered(2000)
    index, params = build_vector_index(vectors, "hnsw", m=16, ef_construction=64, ef_search=48)
    queries = vectors[:20] + 0.01
    before = index.search(queries, 10)[1]
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    loaded = faiss.read_index(str(tmp_path / "index.faiss"))
    loaded.hnsw.efSearch = 16  # whatever the file says, the manifest's setting wins
    configure_for_search(loaded, params)
    assert loaded.hnsw.efSearch == 48
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], before)
    configure_for_search(loaded, {**params, "ef_search": 300})
    assert loaded.hnsw.efSearch == 300


def test_configure_for_search_accepts_a_flat_index_without_settings(tmp_path) -> None:
    index, params = build_vector_index(clustered(30), "flat")
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    loaded = faiss.read_index(str(tmp_path / "index.faiss"))
    configure_for_search(loaded, params)
    configure_for_search(loaded, {})  # a manifest from before HNSW: exact search


@pytest.mark.parametrize(
    ("index", "params", "message"),
    [
        (faiss.IndexFlatIP(8), {"kind": "hnsw", "ef_search": 10}, "hnsw inner-product index"),
        (faiss.IndexHNSWFlat(8, 4, faiss.METRIC_INNER_PRODUCT), {"kind": "flat"}, "IndexHNSW"),
        (faiss.IndexFlatL2(8), {"kind": "flat"}, "metric"),
        (faiss.IndexFlatIP(8), {"kind": "ivf"}, "does not know"),
    ],
    ids=["flat-file-hnsw-manifest", "hnsw-file-flat-manifest", "l2-metric", "unknown-kind"],
)
def test_configure_for_search_refuses_a_mismatch(index, params: dict, message: str) -> None:
    with pytest.raises(ExemplarIndexError, match=message):
        configure_for_search(index, params)


def test_recall_needs_the_index_vectors() -> None:
    index, _ = build_vector_index(clustered(100), "flat")
    with pytest.raises(ConfigError, match="vectors the index was built from"):
        recall_at_k(index, clustered(99))


def test_recall_with_k_above_the_bank_size_counts_the_whole_bank() -> None:
    vectors = clustered(12)
    index, _ = build_vector_index(vectors, "flat")
    assert recall_at_k(index, vectors, k=30, n_queries=50) == 1.0


def test_import_does_not_load_faiss() -> None:
    probe = "import sys, retrieval.ann; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
