"""Exemplar banks at scale: build throughput, and query latency and recall up to a million vectors.

Two parts, both on this machine's CPU:

- *build*: synthetic 1024x768 JPEG photos through ``ExemplarIndex.build`` with a
  full-size open_clip architecture with random weights (the compute of the
  pretrained model; nothing downloaded): photos per second, and how that splits
  into decoding and embedding;
- *search*: synthetic unit vectors of CLIP's dimension (768, ViT-L/14) in an exact
  index and in HNSW (``retrieval.ann``), at each size: build time, milliseconds per
  query (one query a call, and 1,000 queries in one call) and recall@30 against
  exact search, over a sweep of HNSW's ``ef_search``.

The vectors are not uniform noise, on which nearest neighbours are meaningless and
graph indexes look worse than on real data. They are a mixture of gaussians on the
sphere shaped like image embeddings: a direction shared by all (CLIP's embeddings
fill a narrow cone), 1,000 cluster centres, and within-cluster scatter, both with a
decaying (power-law) variance spectrum; then normalized. Queries are held out, drawn
from the same mixture. The JSON reports the data's statistics (cosine of random
pairs, of the nearest and 30th nearest neighbour, PCA dimensions for 90% of the
variance) so the reader can judge how close that is to their embeddings.

    python benchmarks/index_scale.py --quick                  # ~5 minutes: 10k and 100k
    python benchmarks/index_scale.py --sizes 1000000 --photos 0   # ~15-18 minutes on 2 cores
    python benchmarks/index_scale.py --sizes "" --photos 64 --clip ViT-L-14

The last line printed is a JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cropper.testing.synthetic import synthetic_photo
from retrieval.ann import HNSW_DEFAULTS, build_vector_index, recall_at_k

K = 30
QUERIES = 1000
EF_SWEEP = (16, 32, 64, 128, 256, 512)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------


def clustered_embeddings(
    n: int,
    dim: int,
    *,
    clusters: int = 1000,
    spectrum: float = 0.5,
    shared: float = 0.9,
    scatter: float = 0.6,
    seed: int = 0,
) -> np.ndarray:
    """``(n, dim)`` unit rows from a mixture of gaussians shaped like image embeddings.

    Variance along axis ``i`` falls as ``i ** -spectrum`` for both the centres and the
    scatter around them (exact and HNSW search are rotation-invariant, so the axes
    need not be rotated). ``shared`` is the length of the direction common to all.
    """
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1, dtype=np.float32) ** (-spectrum / 2)
    scale /= np.linalg.norm(scale)
    common = rng.standard_normal(dim).astype(np.float32)
    common *= shared / np.linalg.norm(common)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        labels = rng.integers(0, clusters, rows)
        noise = rng.standard_normal((rows, dim), dtype=np.float32) * (scale * scatter)
        x = common + centres[labels] + noise
        out[start : start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def data_statistics(bank: np.ndarray, queries: np.ndarray, exact_scores: np.ndarray) -> dict:
    rng = np.random.default_rng(1)
    a, b = bank[rng.integers(0, len(bank), 2000)], bank[rng.integers(0, len(bank), 2000)]
    sample = bank[rng.choice(len(bank), min(5000, len(bank)), replace=False)]
    energy = np.linalg.svd(sample - sample.mean(0), compute_uv=False) ** 2
    share = np.cumsum(energy) / energy.sum()
    return {
        "random_pair_cosine": round(float((a * b).sum(1).mean()), 3),
        "nearest_cosine": round(float(exact_scores[:, 0].mean()), 3),
        f"nearest_{K}th_cosine": round(float(exact_scores[:, K - 1].mean()), 3),
        "pca_dims_for_90pct_variance": int((share < 0.9).sum() + 1),
    }


# -- timing --------------------------------------------------------------------------


def single_query_ms(index, queries: np.ndarray, count: int) -> dict:
    """One query a call, as the cropper does for one photo: mean, p50 and p95."""
    times = []
    for row in queries[:count]:
        start = time.perf_counter()
        index.search(row[None, :], K)
        times.append((time.perf_counter() - start) * 1000)
    times = np.asarray(times)
    return {
        "mean": round(float(times.mean()), 4),
        "p50": round(float(np.percentile(times, 50)), 4),
        "p95": round(float(np.percentile(times, 95)), 4),
        "queries": int(count),
    }


def batched(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """All queries in one call: milliseconds per query, and the rows found."""
    start = time.perf_counter()
    _, rows = index.search(queries, K)
    return round((time.perf_counter() - start) * 1000 / len(queries), 4), rows


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f, e)) for f, e in zip(found, exact, strict=True))
    return round(hits / exact.size, 4)


def search_at_scale(
    n: int,
    dim: int,
    settings: dict,
    ef_sweep: tuple[int, ...],
    *,
    clusters: int = 1000,
    with_hnsw: bool = True,
) -> dict:
    import faiss

    say(f"{n:,} vectors: generating")
    data = clustered_embeddings(n + QUERIES, dim, clusters=clusters)
    queries, bank = data[:QUERIES], data[QUERIES:]
    result: dict = {
        "vectors": n,
        "dim": dim,
        "clusters": clusters,
        "bank_gb": round(bank.nbytes / 1e9, 2),
    }

    say(f"{n:,} vectors: exact index")
    start = time.perf_counter()
    flat, _ = build_vector_index(bank, "flat")
    flat_build = time.perf_counter() - start
    # Enough single queries for a stable mean, without spending minutes at 1M.
    singles = int(min(QUERIES, max(20, 2e7 // n)))
    flat_single = single_query_ms(flat, queries, singles)
    start = time.perf_counter()
    exact_scores, exact = flat.search(queries, K)
    flat_batched = round((time.perf_counter() - start) * 1000 / QUERIES, 4)
    result["data"] = data_statistics(bank, queries, exact_scores)
    result["flat"] = {
        "build_s": round(flat_build, 2),
        "single_query_ms": flat_single,
        "batched_ms_per_query": flat_batched,
        f"recall@{K}": 1.0,
    }
    del flat
    if not with_hnsw:
        return result

    say(f"{n:,} vectors: HNSW {settings}")
    start = time.perf_counter()
    hnsw, params = build_vector_index(bank, "hnsw", **settings)
    hnsw_build = time.perf_counter() - start
    say(f"{n:,} vectors: HNSW built in {hnsw_build:.0f} s")
    sweep = []
    for ef in ef_sweep:
        faiss.ParameterSpace().set_index_parameter(hnsw, "efSearch", ef)
        single = single_query_ms(hnsw, queries, QUERIES)
        per_query, found = batched(hnsw, queries)
        sweep.append(
            {
                "ef_search": ef,
                f"recall@{K}": recall(found, exact),
                "single_query_ms": single,
                "batched_ms_per_query": per_query,
            }
        )
        say(f"  ef_search={ef}: {sweep[-1]}")
    faiss.ParameterSpace().set_index_parameter(hnsw, "efSearch", params["ef_search"])
    result["hnsw"] = {
        "params": params,
        "build_s": round(hnsw_build, 1),
        "build_vectors_per_s": round(n / hnsw_build, 1),
        "graph_links_mb": round(hnsw.hnsw.neighbors.size() * 4 / 1e6, 1),
        # What a bank build reports: queries near bank rows, as retrieval.ann measures it.
        f"library_recall@{K}_at_default": round(recall_at_k(hnsw, bank, k=K), 4),
        "sweep": sweep,
    }
    return result


# -- photos --------------------------------------------------------------------------


def build_throughput(count: int, clip_name: str, workers: int | None) -> dict:
    import torch

    from cropper.core.images import load_image
    from cropper.testing.tiny_clip import build_random_clip
    from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        say(f"build: writing {count} photos, making {clip_name} with random weights")
        lines = []
        for i in range(count):
            synthetic_photo(i).save(root / f"p{i}.jpg", quality=90)
            lines.append({"image": f"p{i}.jpg", "crops": [[100, 80, 900, 700]], "scores": [4.0]})
        (root / "bank.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
        exemplars = read_jsonl(root / "bank.jsonl")
        clip = ClipEmbedder(build_random_clip(root / "clip", clip_name))
        clip.embed([synthetic_photo(0)] * 2)  # warm-up: first-call costs are not throughput

        # Decoding in worker processes where the build offers it: the default, and none.
        has_workers = "num_workers" in inspect.signature(ExemplarIndex.build).parameters
        choices = [workers] if workers is not None else [None, 0]
        builds = []
        for choice in choices if has_workers else [None]:
            kwargs = {"num_workers": choice} if choice is not None else {}
            say(f"build: ExemplarIndex.build of {count} photos {kwargs or '(defaults)'}")
            start = time.perf_counter()
            ExemplarIndex.build(exemplars, clip, root / f"bank{choice}", progress=False, **kwargs)
            build_s = time.perf_counter() - start
            builds.append(
                {
                    "num_workers": "default" if choice is None else choice,
                    "build_s": round(build_s, 2),
                    "photos_per_s": round(count / build_s, 2),
                }
            )

        start = time.perf_counter()
        images = [load_image(ex.image) for ex in exemplars]
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        clip.embed(images)
        embed_s = time.perf_counter() - start
    return {
        "clip": f"{clip_name} (random weights, {clip.dim}-d)",
        "photos": count,
        "photo_size": "1024x768 JPEG",
        "torch_threads": torch.get_num_threads(),
        "builds": builds,
        "decode_only_photos_per_s": round(count / decode_s, 2),
        "embed_only_photos_per_s": round(count / embed_s, 2),
    }


# -- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors, 16 photos")
    parser.add_argument(
        "--sizes", default=None, help="bank sizes, e.g. 10000,100000,1000000 ('' for none)"
    )
    parser.add_argument("--dim", type=int, default=768, help="vector dimension (ViT-L/14: 768)")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components")
    parser.add_argument("--photos", type=int, default=None, help="photos to build (0: skip)")
    parser.add_argument("--clip", default="ViT-B-32", help="open_clip architecture (random)")
    parser.add_argument("--workers", type=int, default=None, help="num_workers for the build")
    parser.add_argument("--m", type=int, default=None, help="HNSW graph degree")
    parser.add_argument("--ef-construction", type=int, default=None)
    parser.add_argument("--ef-sweep", default=None, help="ef_search values, e.g. 32,64,128")
    parser.add_argument("--exact-only", action="store_true", help="skip HNSW (its build is long)")
    args = parser.parse_args()
    # retrieval.ann says how far an HNSW build has got.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("retrieval").addHandler(handler)
    logging.getLogger("retrieval").setLevel(logging.INFO)
    logging.getLogger("retrieval").propagate = False  # open_clip gives the root logger a handler
    default_sizes = "10000,100000" if args.quick else "10000,100000,1000000"
    sizes = [int(s) for s in (default_sizes if args.sizes is None else args.sizes).split(",") if s]
    photos = args.photos if args.photos is not None else (16 if args.quick else 64)
    ef_sweep = tuple(int(s) for s in args.ef_sweep.split(",")) if args.ef_sweep else EF_SWEEP
    settings = {"m": args.m, "ef_construction": args.ef_construction}

    import faiss

    report: dict = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "faiss": f"{faiss.__version__} ({faiss.get_compile_options().strip()}), "
        f"{faiss.omp_get_max_threads()} threads",
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "k": K,
        "hnsw_defaults": HNSW_DEFAULTS,
    }
    if photos:
        report["build"] = build_throughput(photos, args.clip, args.workers)
        say(f"build: {report['build']}")
    report["search"] = [
        search_at_scale(
            n, args.dim, settings, ef_sweep, clusters=args.clusters, with_hnsw=not args.exact_only
        )
        for n in sizes
    ]
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
