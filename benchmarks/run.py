"""Throughput benchmarks: server capacity kept busy, the library's own overhead, tokens.

- capacity: a local OpenAI-compatible server on 127.0.0.1 answers each request after a
  fixed latency with a fixed number of slots, so it serves at most ``slots / latency``
  requests a second. ``Cropper.crop_batch`` crops a batch of photos through it;
  ``capacity_ratio`` is the photos a second achieved over that ideal (needs >= 0.9).
- overhead: the same loop with a VLM that answers at once, a bank of exemplars, the
  shipped prompts and a small random CLIP with an aesthetic head: everything the library
  does itself. ``overhead_ratio`` is its time per photo over the model's, modelled at
  1 s a VLM call (needs <= 0.05).
- tokens: prompt tokens per crop and the share that is a prefix reused across rounds
  (``benchmarks/tokens.py``), when it is there.

    python benchmarks/run.py --quick

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from cropper import Cropper
from cropper.scoring.head import random_head, save_head
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo
from cropper.testing.tiny_clip import build_tiny_clip
from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loop_overhead import InstantVLM  # noqa: E402 (a sibling script)

MODELLED_CALL_S = 1.0  # the model time per VLM call


def _photos(root: Path, count: int, size=(800, 600)) -> list[str]:
    paths = []
    for i in range(count):
        path = root / f"q{i}.jpg"
        synthetic_photo(i, size=size).save(path, quality=90)
        paths.append(str(path))
    return paths


def _serve(latency: float, slots: int, conn) -> None:
    """Run the test server in its own process, as a real server would be: not sharing
    this process's interpreter lock with the client being measured."""
    with OpenAICompatibleServer(latency=latency, slots=slots) as server:
        conn.send(server.url)
        while conn.recv() != "stop":
            conn.send((len(server.chat_requests), server.max_in_flight))
        conn.send((len(server.chat_requests), server.max_in_flight))


def capacity(root: Path, photos: int, latency: float, slots: int) -> dict:
    """Photos a second through a server of ``slots`` slots at ``latency`` s a request."""
    import multiprocessing

    paths = _photos(root, photos)
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=_serve, args=(latency, slots, there), daemon=True)
    process.start()
    try:
        url = here.recv()
        cropper = Cropper(vlm=url, clip=None, head=None, index=None)
        cropper.crop_batch(paths[:2], concurrency=slots, refine_rounds=0)  # warm-up
        here.send("count")
        asked, _ = here.recv()
        start = time.perf_counter()
        results = cropper.crop_batch(paths, concurrency=slots)
        wall = time.perf_counter() - start
        here.send("stop")
        total, in_flight = here.recv()
    finally:
        process.join(timeout=10)
    requests = total - asked
    failed = sum(1 for r in results if isinstance(r, Exception))
    calls_per_photo = requests / photos
    ideal = slots / latency / calls_per_photo  # photos/s if every slot were always busy
    achieved = photos / wall
    return {
        "photos": photos,
        "failed": failed,
        "latency_s": latency,
        "slots": slots,
        "concurrency": slots,
        "calls_per_photo": round(calls_per_photo, 3),
        "max_in_flight": in_flight,
        "ideal_photos_per_s": round(ideal, 3),
        "photos_per_s": round(achieved, 3),
        "capacity_ratio": round(achieved / ideal, 4),
    }


def overhead(root: Path, photos: int, bank_size: int) -> dict:
    """The library's own time per photo, over the model's at a modelled 1 s a call."""
    clip_spec = build_tiny_clip(root / "clip")
    clip = ClipEmbedder(clip_spec)
    head = save_head(random_head(clip.dim, embedder=clip_spec), root / "head.safetensors")
    lines = []
    for i in range(bank_size):
        synthetic_photo(1000 + i, size=(800, 600)).save(root / f"ex{i}.jpg", quality=90)
        crops = [[30 * k, 20 * k, 800 - 25 * k, 600 - 15 * k] for k in range(6)]
        lines.append({"image": f"ex{i}.jpg", "crops": crops, "scores": [4, 3.8, 3.5, 3, 2, 1]})
    (root / "bank.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ExemplarIndex.build(read_jsonl(root / "bank.jsonl"), clip, root / "bank", progress=False)
    paths = _photos(root, photos + 2)
    cropper = Cropper(vlm=InstantVLM(), clip=clip, head=head, index=root / "bank")
    cropper.crop_batch(paths[:2])  # warm-up: exemplar photos enter the cache
    start = time.perf_counter()
    results = cropper.crop_batch(paths[2:], concurrency=photos)
    wall = time.perf_counter() - start
    calls = len(results[0].rounds)
    per_photo = wall / photos
    return {
        "photos": photos,
        "bank_size": bank_size,
        "exemplars_per_prompt": cropper.config.exemplars,
        "clip": "tiny random open_clip (cropper.testing.tiny_clip)",
        "vlm_calls_per_photo": calls,
        "library_s_per_photo": round(per_photo, 4),
        "model_s_per_photo": calls * MODELLED_CALL_S,
        "overhead_ratio": round(per_photo / (calls * MODELLED_CALL_S), 4),
    }


def tokens(quick: bool) -> dict | None:
    """Prompt tokens per crop from benchmarks/tokens.py, if that script is there."""
    path = HERE / "tokens.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("cropper_bench_tokens", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.token_counts(quick=quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores")
    parser.add_argument("--latency", type=float, default=1.0, help="server seconds a request")
    parser.add_argument("--slots", type=int, default=16, help="requests the server runs at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cap").mkdir()
        (root / "over").mkdir()
        cap = capacity(root / "cap", 96 if args.quick else 192, args.latency, args.slots)
        print(f"capacity: {json.dumps(cap)}", file=sys.stderr)
        over = overhead(root / "over", 16 if args.quick else 64, 40 if args.quick else 200)
        print(f"overhead: {json.dumps(over)}", file=sys.stderr)
    tok = tokens(args.quick)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "capacity_ratio": cap["capacity_ratio"],
        "overhead_ratio": over["overhead_ratio"],
        "capacity": cap,
        "overhead": over,
        "tokens": tok,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
