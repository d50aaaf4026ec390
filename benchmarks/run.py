"""Throughput benchmarks: server capacity kept busy on the real workload, overhead, tokens.

- capacity: a local OpenAI-compatible server, in its own process, answers each request
  after a fixed latency with a fixed number of slots, so it serves at most
  ``slots / latency`` requests a second. ``Cropper.crop_batch`` crops a batch of JPEG
  photos through it with the real workload: a bank of exemplars (S=30 in each prompt),
  a CLIP with random weights (ViT-B/32's architecture, and the 32-px toy, which leaves
  the library's own work alone), an aesthetic head, R=6 crops a reply (the server's
  stand-in writes as many as the JSON schema asks), L=2 refinement rounds. Two photo
  sizes: 1024x768 and 12 megapixels (4000x3000). ``capacity_ratio`` is the photos a
  second achieved over that ideal (goal >= 0.9); ``client_cpu_s_per_photo`` is the
  client process's CPU time (``time.process_time``: all its threads, the server's
  process excluded) over the timed batch, per photo (goal at 12 MP <= 0.1 s).
  ``clip_forward_cpu_s_per_photo`` estimates the CLIP model's share of it (images
  embedded a photo x CPU seconds an image, measured apart at batch 32), and
  ``client_cpu_s_per_photo_less_clip_forward`` is what remains: decoding, resizing,
  encoding the prompts' images, rendering, parsing, scoring's crops. With ViT-B/32 on a
  CPU that remainder is a small difference of large numbers (it can come out below
  zero); the tiny CLIP's rows measure it directly (its forward pass costs ~0).
- overhead: the same loop with a VLM that answers at once (R crops a reply): the
  library's own time per photo over the model's, modelled at 1 s a VLM call (goal
  <= 0.05), with each CLIP.
- tokens: prompt tokens per crop and the share that is a prefix reused across rounds
  (``benchmarks/tokens.py``), when it is there.

    python benchmarks/run.py --quick                       # both CLIPs, both sizes
    python benchmarks/run.py --quick --clips tiny          # the library's own work only
    python benchmarks/run.py --quick --sizes 4000x3000 --clips ViT-B-32

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This checkout's cropper is measured, whichever one the environment has installed
# (an editable install of another worktree, say); and the sibling scripts.
sys.path[:0] = [str(HERE.parent), str(HERE)]

from loop_overhead import (  # noqa: E402 (a sibling script)
    InstantVLM,
    build_bank,
    count_clip_images,
    full_responder,
)

import cropper  # noqa: E402
from cropper import Cropper  # noqa: E402
from cropper.scoring.head import random_head, save_head  # noqa: E402
from cropper.testing.openai_server import OpenAICompatibleServer  # noqa: E402
from cropper.testing.synthetic import synthetic_photo  # noqa: E402
from cropper.testing.tiny_clip import build_random_clip, build_tiny_clip  # noqa: E402
from retrieval import ClipEmbedder  # noqa: E402

MODELLED_CALL_S = 1.0  # the model time per VLM call
CAPACITY_GOAL = 0.9
CLIENT_CPU_GOAL_12MP_S = 0.1
OVERHEAD_GOAL = 0.05


def commit() -> str:
    """This checkout's commit, with ``+dirty`` when it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", "cropper", "retrieval"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch threads {__import__('torch').get_num_threads()}"
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work sharing the cores skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def _photos(root: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` synthetic photos of ``size`` as JPEG quality 90."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"q{i}.jpg"
        synthetic_photo(i, size=size).save(path, quality=90)
        paths.append(str(path))
    return paths


def _serve(latency: float, slots: int, conn) -> None:
    """Run the test server in its own process, as a real server would be: not sharing
    this process's interpreter lock or CPU accounting with the client being measured.
    Answers each message with (requests so far, most in flight, this process's CPU s)."""
    with OpenAICompatibleServer(latency=latency, slots=slots, responder=full_responder) as server:
        conn.send(server.url)
        while conn.recv() != "stop":
            conn.send((len(server.chat_requests), server.max_in_flight, time.process_time()))
        conn.send((len(server.chat_requests), server.max_in_flight, time.process_time()))


def make_clip(root: Path, name: str) -> tuple[ClipEmbedder, str]:
    """A CLIP with random weights (``tiny``: the 32-px toy) and its aesthetic head."""
    folder = root / "clip"
    spec = build_tiny_clip(folder) if name == "tiny" else build_random_clip(folder, name)
    clip = ClipEmbedder(spec)
    head = save_head(random_head(clip.dim, embedder=spec), root / "head.safetensors")
    return clip, head


def clip_forward_cpu_s(clip: ClipEmbedder, batch: int = 32, reps: int = 2) -> float:
    """CPU seconds (this process, all threads) the CLIP model takes an image, at ``batch``."""
    import torch

    info = clip.preprocess_info
    side = info.get("image_size") or 224
    side = side[0] if isinstance(side, list | tuple) else side
    pixels = torch.randn(batch, 3, side, side)
    clip.embed_pixels(pixels)  # warm-up
    start = time.process_time()
    for _ in range(reps):
        clip.embed_pixels(pixels)
    return (time.process_time() - start) / (reps * batch)


def capacity(
    root: Path,
    clip: ClipEmbedder,
    head: str,
    bank: Path,
    size: tuple[int, int],
    photos: int,
    latency: float,
    slots: int,
    forward_s: float,
) -> dict:
    """Photos a second through a server of ``slots`` slots at ``latency`` s a request."""
    import multiprocessing

    paths = _photos(root, photos + 2, size)
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=_serve, args=(latency, slots, there), daemon=True)
    process.start()
    images = count_clip_images(clip)
    try:
        url = here.recv()
        cropper = Cropper(vlm=url, clip=clip, head=head, index=bank)  # S=30, R=6, L=2
        cropper.crop_batch(paths[:2], concurrency=slots)  # warm-up: exemplars enter the cache
        here.send("count")
        asked, _, server_cpu0 = here.recv()
        images[0] = 0
        cpu0 = time.process_time()
        start = time.perf_counter()
        results = cropper.crop_batch(paths[2:], concurrency=slots)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        here.send("stop")
        total, in_flight, server_cpu1 = here.recv()
    finally:
        process.join(timeout=10)
    requests = total - asked
    failed = [str(r) for r in results if isinstance(r, Exception)]
    done = [r for r in results if not isinstance(r, Exception)]
    calls_per_photo = requests / photos
    ideal = slots / latency / calls_per_photo  # photos/s if every slot were always busy
    achieved = photos / wall
    clip_images = images[0] / photos
    clip_cpu = clip_images * forward_s
    scored = sum(len(c.candidates) for r in done for c in r.rounds) / max(1, len(done))
    return {
        "size": f"{size[0]}x{size[1]}",
        "photos": photos,
        "failed": failed[:3],
        "failed_count": len(failed),
        "latency_s": latency,
        "slots": slots,
        "concurrency": slots,
        "calls_per_photo": round(calls_per_photo, 3),
        "crops_scored_per_photo": round(scored, 1),
        "max_in_flight": in_flight,
        "ideal_photos_per_s": round(ideal, 3),
        "photos_per_s": round(achieved, 3),
        "capacity_ratio": round(achieved / ideal, 4),
        "wall_s": round(wall, 1),
        "client_cpu_s_per_photo": round(cpu / photos, 4),
        "clip_images_per_photo": round(clip_images, 1),
        "clip_forward_cpu_s_per_photo": round(clip_cpu, 4),
        "client_cpu_s_per_photo_less_clip_forward": round(cpu / photos - clip_cpu, 4),
        "server_cpu_s_per_photo": round((server_cpu1 - server_cpu0) / photos, 4),
    }


def overhead(root: Path, clip: ClipEmbedder, head: str, bank: Path, photos: int) -> dict:
    """The library's own time per photo, over the model's at a modelled 1 s a call."""
    paths = _photos(root, photos + 2, (1024, 768))
    images = count_clip_images(clip)
    cropper = Cropper(vlm=InstantVLM(), clip=clip, head=head, index=bank)
    cropper.crop_batch(paths[:2])  # warm-up: exemplar photos enter the cache
    images[0] = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    results = cropper.crop_batch(paths[2:], concurrency=photos)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    calls = len(results[0].rounds)
    per_photo = wall / photos
    return {
        "photos": photos,
        "size": "1024x768",
        "exemplars_per_prompt": cropper.config.exemplars,
        "vlm_calls_per_photo": calls,
        "crops_scored_per_photo": sum(len(r.candidates) for r in results[0].rounds),
        "clip_images_per_photo": round(images[0] / photos, 1),
        "library_s_per_photo": round(per_photo, 4),
        "library_cpu_s_per_photo": round(cpu / photos, 4),
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
    parser.add_argument("--quick", action="store_true", help="96 photos a size, bank of 40")
    parser.add_argument("--latency", type=float, default=1.0, help="server seconds a request")
    parser.add_argument("--slots", type=int, default=16, help="requests the server runs at once")
    parser.add_argument(
        "--clips", default="ViT-B-32,tiny", help="CLIPs (random weights), comma-separated"
    )
    parser.add_argument(
        "--sizes", default="1024x768,4000x3000", help="capacity photo sizes, comma-separated"
    )
    parser.add_argument("--photos", type=int, help="capacity photos a size (96 quick, else 192)")
    parser.add_argument("--overhead-photos", type=int, help="16 quick, else 64; 0: skip")
    parser.add_argument("--bank-size", type=int, help="exemplars in the bank (40 quick, else 200)")
    parser.add_argument("--no-tokens", action="store_true", help="skip benchmarks/tokens.py")
    args = parser.parse_args()
    photos = args.photos or (96 if args.quick else 192)
    over_photos = args.overhead_photos
    if over_photos is None:
        over_photos = 16 if args.quick else 64
    bank_size = args.bank_size or (40 if args.quick else 200)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]

    report: dict = {
        "benchmark": "run",
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "cropper_package": str(Path(cropper.__file__).parent),
        "machine": machine(),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "load_average_start": load_average(),
        "workload": {
            "bank_size": bank_size,
            "exemplars_S": 30,
            "crops_R": 6,
            "refine_rounds_L": 2,
            "photos": "synthetic_photo, JPEG quality 90",
        },
        "capacity": [],
        "overhead": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in clips:
            where = root / name
            where.mkdir()
            clip, head = make_clip(where, name)
            bank = build_bank(where, clip, bank_size)
            forward_s = clip_forward_cpu_s(clip)
            for size in sizes:
                load = load_average()
                row = capacity(
                    where / f"cap{size[0]}", clip, head, bank, size, photos,
                    args.latency, args.slots, forward_s,
                )  # fmt: skip
                row = {
                    "clip": name,
                    "clip_forward_cpu_s_per_image": round(forward_s, 5),
                    **row,
                    "load_average_before": load,
                }
                report["capacity"].append(row)
                print(f"capacity: {json.dumps(row)}", file=sys.stderr, flush=True)
            if over_photos:
                row = {"clip": name, **overhead(where / "over", clip, head, bank, over_photos)}
                report["overhead"].append(row)
                print(f"overhead: {json.dumps(row)}", file=sys.stderr, flush=True)
    report["capacity_ratio"] = {
        f"{r['clip']} {r['size']}": r["capacity_ratio"] for r in report["capacity"]
    }
    report["client_cpu_s_per_photo"] = {
        f"{r['clip']} {r['size']}": r["client_cpu_s_per_photo"] for r in report["capacity"]
    }
    report["client_cpu_s_per_photo_less_clip_forward"] = {
        f"{r['clip']} {r['size']}": r["client_cpu_s_per_photo_less_clip_forward"]
        for r in report["capacity"]
    }
    report["overhead_ratio"] = {r["clip"]: r["overhead_ratio"] for r in report["overhead"]}
    report["goals"] = {
        "capacity_ratio >= 0.9": {
            k: v >= CAPACITY_GOAL for k, v in report["capacity_ratio"].items()
        },
        "client CPU per 12 MP photo <= 0.1 s": {
            k: v <= CLIENT_CPU_GOAL_12MP_S
            for k, v in report["client_cpu_s_per_photo"].items()
            if "4000x3000" in k
        },
        "overhead_ratio <= 0.05": {
            k: v <= OVERHEAD_GOAL for k, v in report["overhead_ratio"].items()
        },
    }
    report["load_average_end"] = load_average()
    report["tokens"] = None if args.no_tokens else tokens(args.quick)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
