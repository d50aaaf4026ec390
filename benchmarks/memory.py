"""Peak memory of a batch of very large photos: ``cropper crop DIR --out OUT``.

Each run is a fresh ``cropper crop`` process, measured by its peak resident set size
(``ru_maxrss``), with the real parts that hold pixels: photo decoding, the prompt photos
sent to a local OpenAI-compatible test server (instant replies, R=6 crops a round, the
paper's three rounds), and scoring, whose crops a CLIP embeds (a tiny random open_clip:
the pixels handled are the same as with a real one; its own memory is not the point).

    python benchmarks/memory.py                     # 8 photos of 12000x12000 (144 MP)
    python benchmarks/memory.py --side 4000 --photos 16
    python benchmarks/memory.py --code /tmp/old     # another checkout, side by side

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo
from cropper.testing.tiny_clip import build_tiny_clip


def make_photos(folder: Path, count: int, side: int) -> None:
    """``count`` JPEGs of ``side`` x ``side``: one synthetic photo, enlarged, saved apart."""
    folder.mkdir(parents=True, exist_ok=True)
    big = synthetic_photo(0, size=(512, 512)).resize((side, side), Image.Resampling.BILINEAR)
    big.save(folder / "p0.jpg", quality=85)
    for i in range(1, count):
        shutil.copyfile(folder / "p0.jpg", folder / f"p{i}.jpg")


def peak_rss_mb(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """The child's peak RSS (MB), wall seconds and exit code."""
    start = time.perf_counter()
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        print(run.stderr[-2000:], file=sys.stderr)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak_kb / 1024, wall, run.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--side", type=int, default=12000)
    parser.add_argument("--concurrency", type=int, help="cropper crop --concurrency (default)")
    parser.add_argument("--code", help="the checkout to run (default: this one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_photos(root / "photos", args.photos, args.side)
        clip = build_tiny_clip(root / "clip")
        # The checkout measured: --code, else this script's own (not whichever is installed).
        code = args.code or str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": code}
        with OpenAICompatibleServer() as server:
            argv = [sys.executable, "-m", "cropper.cli", "crop", str(root / "photos"),
                    "--out", str(root / "out"), "--vlm", server.url, "--clip", clip,
                    "--head", "none", "--index", "none"]  # fmt: skip
            if args.concurrency:
                argv += ["--concurrency", str(args.concurrency)]
            peak, wall, code = peak_rss_mb(argv, env)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "photos": args.photos,
        "side": args.side,
        "megapixels_each": round(args.side**2 / 1e6, 1),
        "code": args.code or "this checkout",
        "exit_code": code,
        "peak_rss_mb": round(peak),
        "wall_s": round(wall, 1),
    }
    for key, value in out.items():
        print(f"{key:>18}: {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
