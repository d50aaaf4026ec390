"""Memory of ``Cropper.crop_batch``: a chunk of 12-MP photos, and RSS over a long stream.

Each measurement runs in a fresh process (this script with ``--child``), against a local
OpenAI-compatible test server in this process (instant replies of R=6 crops a round,
the paper's three rounds), with the real workload's parts that hold pixels: a bank of
exemplars (S=30 in each prompt), photo decoding, the prompt images, and scoring, whose
crops a CLIP embeds (a tiny random open_clip: the pixels handled are those of a real
one; its own memory is not the point) with an aesthetic head.

- *chunk*: ``crop_batch`` of 16 JPEGs of 4000x3000 (12 MP) in one chunk
  (``concurrency=16``): the process's RSS before, its peak (``ru_maxrss``), and its RSS
  while the results are held and once they are dropped.
- *stream* and *batch*: 400 small photos (1024x768) through ``crop_stream`` at the default
  concurrency, RSS sampled every 25 photos: *stream* keeps nothing of a result (as a
  caller that saves each crop and moves on), *batch* keeps every result (as
  ``crop_batch`` does). The slope, MB per 100 photos past the first 100, says whether
  RSS stays flat.

    python benchmarks/memory_batch.py                     # all three: about 4 minutes
    python benchmarks/memory_batch.py --only chunk
    python benchmarks/memory_batch.py --code /tmp/old     # another checkout's cropper

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent


def rss_mb() -> float:
    """This process's resident set size now (Linux ``/proc``; else its peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slope_per_100(samples: list[list[float]], after: int = 100) -> float | None:
    """Least-squares MB per 100 photos of the samples past ``after`` photos."""
    points = [(n, mb) for n, mb in samples if n >= after]
    if len(points) < 2:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_mb = sum(mb for _, mb in points) / len(points)
    num = sum((n - mean_n) * (mb - mean_mb) for n, mb in points)
    den = sum((n - mean_n) ** 2 for n, _ in points)
    return round(100 * num / den, 1) if den else None


# --------------------------------------------------------------------------- the child


def child(args: argparse.Namespace) -> dict:
    """One measurement, in this fresh process; returns its report."""
    import cropper
    from cropper import Cropper

    photos = sorted(str(p) for p in Path(args.photos_dir).glob("*.jpg"))
    c = Cropper(vlm=args.url, clip=args.clip, head=args.head, index=args.bank)
    c.crop_batch([args.warmup])  # imports, the exemplar photos' cache, the first allocations
    gc.collect()
    out: dict = {
        "cropper_package": str(Path(cropper.__file__).parent),
        "photos": len(photos),
        "rss_before_mb": round(rss_mb()),
        "peak_before_mb": round(peak_mb()),
    }
    start = time.perf_counter()
    if args.child == "chunk":
        results = c.crop_batch(photos, concurrency=len(photos))
        out["wall_s"] = round(time.perf_counter() - start, 1)
        out["failed"] = sum(isinstance(r, Exception) for r in results)
        out["peak_rss_mb"] = round(peak_mb())
        out["peak_over_before_mb"] = round(peak_mb() - out["rss_before_mb"])
        gc.collect()
        out["rss_with_results_mb"] = round(rss_mb())
        del results
        gc.collect()
        out["rss_results_dropped_mb"] = round(rss_mb())
        return out
    kept = []
    samples = [[0, round(rss_mb(), 1)]]
    failed = 0
    for done, (_, result) in enumerate(c.crop_stream(photos), start=1):
        failed += isinstance(result, Exception)
        if args.child == "batch":
            kept.append(result)
        if done % args.every == 0 or done == len(photos):
            samples.append([done, round(rss_mb(), 1)])
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["failed"] = failed
    out["kept_results"] = len(kept)
    out["rss_samples_mb"] = samples  # [photos done, RSS MB]
    out["rss_growth_mb"] = round(samples[-1][1] - samples[0][1])
    out["mb_per_100_photos_after_100"] = slope_per_100(samples)
    out["peak_rss_mb"] = round(peak_mb())
    return out


# --------------------------------------------------------------------------- the parent


def make_photos(folder: Path, count: int, size: tuple[int, int], first_seed: int = 0) -> Path:
    from cropper.testing.synthetic import synthetic_photo

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        synthetic_photo(first_seed + i, size=size).save(folder / f"p{i:04d}.jpg", quality=90)
    return folder


def setup(root: Path, bank_size: int) -> dict:
    """A tiny CLIP, its head, a bank, the warm-up photo: what every child loads."""
    from cropper.scoring.head import random_head, save_head
    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_tiny_clip
    from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl

    spec = build_tiny_clip(root / "clip")
    clip = ClipEmbedder(spec, device="cpu")
    head = save_head(random_head(clip.dim, embedder=spec), root / "head.safetensors")
    lines = []
    for i in range(bank_size):
        synthetic_photo(1000 + i).save(root / f"ex{i}.jpg", quality=90)
        crops = [[40 * k, 30 * k, 1024 - 30 * k, 768 - 20 * k] for k in range(6)]
        lines.append({"image": f"ex{i}.jpg", "crops": crops, "scores": [4, 3.8, 3.5, 3, 2, 1]})
    (root / "bank.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ExemplarIndex.build(read_jsonl(root / "bank.jsonl"), clip, root / "bank", progress=False)
    warmup = root / "warmup.jpg"
    synthetic_photo(999).save(warmup, quality=90)
    return {"clip": spec, "head": str(head), "bank": str(root / "bank"), "warmup": str(warmup)}


def run_child(kind: str, photos_dir: Path, url: str, parts: dict, every: int, code: str) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
            "--photos-dir", str(photos_dir), "--url", url, "--clip", parts["clip"],
            "--head", parts["head"], "--bank", parts["bank"], "--warmup", parts["warmup"],
            "--every", str(every)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": code}
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": run.stderr[-2000:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["chunk", "stream", "batch"], action="append")
    parser.add_argument("--chunk-photos", type=int, default=16)
    parser.add_argument("--chunk-size", default="4000x3000")
    parser.add_argument("--stream-photos", type=int, default=400)
    parser.add_argument("--stream-size", default="1024x768")
    parser.add_argument("--every", type=int, default=25, help="sample RSS every N photos")
    parser.add_argument("--bank-size", type=int, default=40)
    parser.add_argument("--code", help="the checkout whose cropper to measure (default: this)")
    parser.add_argument("--child", choices=["chunk", "stream", "batch"], help=argparse.SUPPRESS)
    parser.add_argument("--photos-dir", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--head", help=argparse.SUPPRESS)
    parser.add_argument("--bank", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    sys.path[:0] = [str(CHECKOUT), str(HERE)]  # this checkout's cropper; the siblings
    from loop_overhead import full_responder
    from run import commit, load_average, parse_size

    from cropper.testing.openai_server import OpenAICompatibleServer

    kinds = args.only or ["chunk", "stream", "batch"]
    code = str(Path(args.code).resolve()) if args.code else str(CHECKOUT)
    report: dict = {
        "benchmark": "memory_batch",
        "date": datetime.date.today().isoformat(),
        "commit": commit() if not args.code else f"--code {code}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": "python benchmarks/memory_batch.py " + " ".join(sys.argv[1:]),
        "load_average_start": load_average(),
        "bank_size": args.bank_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = setup(root, args.bank_size)
        with OpenAICompatibleServer(responder=full_responder) as server:
            for kind in kinds:
                if kind == "chunk":
                    size = parse_size(args.chunk_size)
                    folder = make_photos(root / "chunk", args.chunk_photos, size)
                else:
                    size = parse_size(args.stream_size)
                    folder = root / "stream"
                    if not folder.is_dir():
                        make_photos(folder, args.stream_photos, size)
                row = run_child(kind, folder, server.url, parts, args.every, code)
                report[kind] = {"size": f"{size[0]}x{size[1]}", **row}
                print(f"{kind}: {json.dumps(report[kind])}", file=sys.stderr, flush=True)
    report["load_average_end"] = load_average()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
