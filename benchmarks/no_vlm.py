"""``--vlm none`` on a CPU: time a photo against smartcrop, and how narrowing agrees with the grid.

Without a VLM, ``Cropper(vlm=None)`` crops with the head baseline
(:class:`cropper.agent.baselines.HeadGridCrop`): GAICD's grid of 87-90 crops, each embedded by
CLIP and ranked by the aesthetic head, now narrowed to 16 embedded crops by default
(:mod:`cropper.agent.narrowing`). The CLIP is the real ViT-B/32 architecture with random weights
(``cropper.testing.tiny_clip.build_random_clip``: the compute of the pretrained model; nothing
downloaded); the head is the real LAION-Aesthetics v1 B/32 head when ``--data`` holds it.

    python benchmarks/no_vlm.py                  # speed: 1024-px photos, then a 12-MP JPEG
    python benchmarks/no_vlm.py --clip tiny --photos 2 --repeats 1   # the plumbing, fast
    python benchmarks/no_vlm.py --agreement      # narrowed choice vs the whole grid's (~15 min)
    python benchmarks/no_vlm.py --lanes          # two lanes embedding at once, lock on and off
    PYTHONPATH=/old/checkout python benchmarks/no_vlm.py   # another checkout (before/after)

*Speed*: each photo is cropped by smartcrop, by ``Cropper(vlm=None)`` narrowed and by it on
the whole grid, one after another, so the ratios compare runs on the same machine at the same
moment. Wall and CPU seconds are both reported: on a machine others share, torch's threads
wait for each other and the wall time swells; with ``--threads 1`` the CPU seconds are the
work itself, what one core of its own would take. The 12-MP photo (4000x3000 JPEG) is
cropped in fresh processes, each reporting its time and its peak memory above what it held
before the crop (``/proc/self/clear_refs`` resets the peak after the models load).

*Agreement*: (1) GAICD, no pixels: people's ratings (MOS) of every grid crop of the 1,236
photos stand in for the head, and the cheap pass has only its geometric term (size); how often
the search's choice is the best-rated crop, or one of the five best, on the training photos the
settings were chosen on and on the 200 test photos. (2) Real and synthetic photos (GAICD's
photos at hand, scikit-image's, ``cropper.testing.synthetic``) with the random ViT-B/32 and the
real LAION B/32 head and three random heads: how often ``narrow=16`` chooses the whole grid's
crop. With random CLIP weights the head's choice follows no aesthetics, so that figure says how
well the search finds a maximum, not how good the crop is.

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LAION_B32 = "laion_aesthetic/sa_0_4_vit_b_32_linear.pth"
SKIMAGE_PHOTOS = (
    "astronaut camera chelsea clock coffee coins hubble_deep_field immunohistochemistry moon "
    "rocket retina page text cell colorwheel"
).split()


def machine() -> str:
    import torch

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def head_for(embedder: Any, data: Path) -> tuple[Any, str]:
    """The LAION v1 B/32 head (told no embedder, as the CLIP is random), else a random one.

    Random CLIP weights give embeddings the head rates 0.2-3.3, partly below its 1-10
    range, where scores clip to 0 and tie; a wider range keeps the head's own order.
    """
    from cropper.scoring.head import AestheticHead, HeadConfig, load_head, random_head

    path = data / LAION_B32
    if not path.is_file() or embedder.dim != 512:  # the head reads ViT-B/32's 512-d
        return random_head(embedder.dim, seed=0), "random head"
    laion = load_head(str(path))
    config = HeadConfig(laion.config.dims, laion.config.activation, (-20.0, 20.0))
    return AestheticHead(config, laion.state_dict()), "LAION v1 B/32 head"


def build_clip(folder: Path, name: str = "ViT-B-32") -> Any:
    """open_clip's ``name`` with random weights; ``tiny``: the 32-px toy of the tests."""
    from cropper.testing.tiny_clip import build_random_clip, build_tiny_clip
    from retrieval.embedder import load_embedder

    spec = build_tiny_clip(folder) if name == "tiny" else build_random_clip(folder, name)
    return load_embedder(spec, device="cpu")


def cropper_without_vlm(embedder: Any, head: Any, narrow: bool) -> Any:
    from cropper import Cropper

    cropper = Cropper(vlm=None, clip=embedder, head=head, index=None)
    if not narrow and hasattr(cropper._no_vlm, "narrow"):
        cropper._no_vlm.narrow = None  # the whole grid (no public switch on Cropper yet)
    return cropper


def has_narrowing() -> bool:
    from cropper.agent.baselines import HeadGridCrop

    return "narrow" in HeadGridCrop.__init__.__code__.co_varnames


def speed_photos(data: Path, count: int) -> dict[str, Image.Image]:
    from cropper.core.images import load_image
    from cropper.testing.synthetic import synthetic_photo

    photos = {}
    for path in sorted((data / "gaicd" / "official_layout" / "images").rglob("*.jpg")):
        photos[f"gaicd/{path.stem}"] = load_image(path)  # 1024 px on the long side
    for seed in range(max(0, count - len(photos))):
        photos[f"synthetic/{seed}"] = synthetic_photo(seed, (1024, 768))
    return dict(list(photos.items())[:count])


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_timed(fn: Any) -> tuple[float, float]:
    """Wall seconds and the process's CPU seconds (all its threads) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def speed(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from cropper.agent.baselines import SmartcropCrop

    embedder = build_clip(root / "clip", args.clip)
    head, head_name = head_for(embedder, args.data)
    narrow = has_narrowing()
    modes = {"narrowed": cropper_without_vlm(embedder, head, True)} if narrow else {}
    modes["whole_grid"] = cropper_without_vlm(embedder, head, False)
    smart = SmartcropCrop()
    photos = speed_photos(args.data, args.photos)
    warm = next(iter(photos.values()))
    for cropper in modes.values():
        cropper.crop(warm)  # first-call costs (the knowledge prompts, allocations)
    smart.crop(warm)
    times: dict[str, list[tuple[float, float]]] = {"smartcrop": [], **{m: [] for m in modes}}
    for _ in range(args.repeats):
        for photo in photos.values():
            times["smartcrop"].append(cpu_timed(lambda photo=photo: smart.crop(photo)))
            for mode, cropper in modes.items():
                times[mode].append(cpu_timed(lambda c=cropper, p=photo: c.crop(p)))
    wall = {k: round(float(np.mean([w for w, _ in v])), 3) for k, v in times.items()}
    cpu = {k: round(float(np.mean([c for _, c in v])), 3) for k, v in times.items()}
    out: dict[str, Any] = {
        "photos": list(photos),
        "head": head_name,
        "seconds_per_1024px_photo": wall,
        "cpu_seconds_per_1024px_photo": cpu,
        "ratio_to_smartcrop": {m: round(wall[m] / wall["smartcrop"], 1) for m in modes},
        "cpu_ratio_to_smartcrop": {m: round(cpu[m] / cpu["smartcrop"], 1) for m in modes},
    }
    if not args.skip_12mp:
        jpeg = root / "12mp.jpg"
        big = speed_photos(args.data, 1)
        next(iter(big.values())).resize((4000, 3000), Image.Resampling.BICUBIC).save(
            jpeg, quality=90
        )
        out["12mp"] = {mode: child(root, jpeg, mode, args) for mode in ["smartcrop", *modes]}
    return out


def child(root: Path, jpeg: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Crop ``jpeg`` in a fresh process; its time and peak memory above what it held before."""
    argv = [sys.executable, __file__, "--child", mode, "--photo", str(jpeg),
            "--clip-dir", str(root / "clip"), "--data", str(args.data)]  # fmt: skip
    if args.threads:
        argv += ["--threads", str(args.threads)]
    run = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    if run.returncode != 0:
        return {"error": run.stderr[-500:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(args: argparse.Namespace) -> None:
    from cropper.agent.baselines import SmartcropCrop
    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_random_clip  # noqa: F401 (same imports as speed)
    from retrieval.embedder import load_embedder

    if args.child == "smartcrop":
        cropper: Any = SmartcropCrop()
    else:
        embedder = load_embedder(f"local-dir:{args.clip_dir}", device="cpu")
        head, _ = head_for(embedder, args.data)
        cropper = cropper_without_vlm(embedder, head, args.child == "narrowed")
    cropper.crop(synthetic_photo(0, (1024, 768)))  # warm
    before = rss_mb("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    seconds, cpu = cpu_timed(lambda: cropper.crop(args.photo))
    peak = round(rss_mb("VmHWM") - before)
    out = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_above_start_mb": peak}
    print(json.dumps(out))


# -- agreement -------------------------------------------------------------------------------


class CachedEmbedder:
    """An embedder that embeds each distinct image once (the heads share the crops)."""

    def __init__(self, inner: Any):
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.cache: dict[str, np.ndarray] = {}
        self.preprocess_info = inner.preprocess_info

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        keys = [hashlib.sha1(im.tobytes() + repr(im.size).encode()).hexdigest() for im in images]
        todo = [(k, im) for k, im in zip(keys, images, strict=True) if k not in self.cache]
        if todo:
            for (k, _), row in zip(todo, self.inner.embed([im for _, im in todo]), strict=True):
                self.cache[k] = row
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, self.dim))


def gaicd_mos(data: Path) -> dict[str, Any]:
    """The search with people's ratings standing in for the head, on GAICD's annotations."""
    from cropper.agent.narrowing import NARROW, search
    from cropper.core.boxes import Box

    crops = json.loads((data / "gaicd" / "image_crop.json").read_text())
    split = json.loads((data / "gaicd" / "split.json").read_text())
    out: dict[str, Any] = {}
    for part in ("train", "test"):
        rows: dict[str, list[tuple[bool, bool]]] = {"search": [], "top_by_size": [], "random": []}
        for j, name in enumerate(n for n in split[part] if n in crops):
            b = np.array(crops[name]["bbox"], dtype=float)
            mos = np.array(crops[name]["score"])
            # The image size is not recorded: the grid's last corners sit at 11.5/12 of it.
            w, h = b[:, 2].max() * 12 / 11.5, b[:, 3].max() * 12 / 11.5
            boxes = [Box(*r) for r in np.clip(b / [w, h, w, h], 0, 1)]
            area = np.array([x.area for x in boxes])
            best, fifth = np.sort(mos)[::-1][[0, 4]]
            picks = {
                "search": list(search(boxes, area, lambda idx, m=mos: m[idx], budget=NARROW)),
                "top_by_size": list(np.argsort(-area, kind="stable")[:NARROW]),
                "random": list(np.random.default_rng(j).permutation(len(boxes))[:NARROW]),
            }
            for kind, idx in picks.items():
                chosen = mos[idx].max()
                rows[kind].append((chosen >= best - 1e-9, chosen >= fifth - 1e-9))
        out[part] = {
            kind: {
                "photos": len(r),
                "finds_best": round(float(np.mean([a for a, _ in r])), 3),
                "finds_a_top5": round(float(np.mean([b for _, b in r])), 3),
            }
            for kind, r in rows.items()
        }
    return out


def agreement_photos(data: Path, synthetic: int) -> dict[str, Image.Image]:
    import warnings

    from cropper.core.images import load_image
    from cropper.testing.synthetic import synthetic_photo

    photos = {}
    for path in sorted((data / "gaicd" / "official_layout" / "images").rglob("*.jpg")):
        photos[f"gaicd/{path.stem}"] = load_image(path)
    try:
        import skimage.data
    except ImportError:
        skimage = None
    if skimage is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in SKIMAGE_PHOTOS:
                photos[f"skimage/{name}"] = load_image(
                    Image.fromarray(getattr(skimage.data, name)())
                )
    for seed in range(synthetic):
        photos[f"synthetic/{seed}"] = synthetic_photo(seed, (1024, 768))
    return photos


def agreement(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from cropper.agent.baselines import HeadGridCrop, scoring_copy, scoring_side
    from cropper.agent.narrowing import NARROW, cheap_scores
    from cropper.scoring.head import random_head
    from cropper.scoring.saliency import saliency_map
    from cropper.scoring.scorer import Scorer

    embedder = CachedEmbedder(build_clip(root / "clip", args.clip))
    laion, laion_name = head_for(embedder, args.data)
    heads = {laion_name: laion, **{f"random head {s}": random_head(512, seed=s) for s in (1, 2, 3)}}
    photos = agreement_photos(args.data, args.synthetic)
    per_head: dict[str, dict[str, list]] = {}
    for photo_name, photo in photos.items():
        for head_name, head in heads.items():
            scorer = Scorer(embedder, head)
            whole = HeadGridCrop(scorer, narrow=None).crop(photo)
            narrowed = HeadGridCrop(scorer, narrow=NARROW).crop(photo)
            scores = {c.box: c.score for c in whole.candidates}
            boxes = [c.box for c in whole.candidates]
            # The simpler first pass: the 16 best by the cheap score alone, no search.
            work = scoring_copy(photo, boxes, scoring_side(embedder))
            cheap = cheap_scores(saliency_map(work), boxes)
            top = [boxes[i] for i in np.argsort(-cheap, kind="stable")[:NARROW]]
            top_choice = max(top, key=lambda b: scores[b])
            rank = 1 + sum(s > scores[narrowed.box] + 1e-12 for s in scores.values())
            row = per_head.setdefault(head_name, {"search": [], "top16": [], "rank": []})
            row["search"].append(narrowed.box == whole.box)
            row["top16"].append(top_choice == whole.box)
            row["rank"].append(rank)
        print(f"{photo_name}: done", file=sys.stderr, flush=True)
    return {
        "photos": len(photos),
        "clip": f"{args.clip} architecture, random weights",
        "heads": {
            name: {
                "search_agrees": round(float(np.mean(r["search"])), 3),
                "top16_by_cheap_score_agrees": round(float(np.mean(r["top16"])), 3),
                "search_choice_rank_in_grid_mean": round(float(np.mean(r["rank"])), 2),
                "search_choice_rank_in_grid_worst": int(np.max(r["rank"])),
            }
            for name, r in per_head.items()
        },
        "all_heads": {
            "search_agrees": round(
                float(np.mean([x for r in per_head.values() for x in r["search"]])), 3
            ),
            "top16_by_cheap_score_agrees": round(
                float(np.mean([x for r in per_head.values() for x in r["top16"]])), 3
            ),
        },
    }


# -- lanes -----------------------------------------------------------------------------------


def lanes(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Two threads embedding 32 crops each at once, with the forward lock and without."""
    import retrieval.embedder as module
    from cropper.testing.synthetic import synthetic_photo

    embedder = build_clip(root / "clip", args.clip)
    crops = [synthetic_photo(i, (448, 336)) for i in range(32)]
    embedder.embed(crops[:4])

    def two_lanes() -> float:
        threads = [threading.Thread(target=embedder.embed, args=(crops,)) for _ in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    out: dict[str, list[float]] = {"one_lane": [], "two_lanes_locked": [], "two_lanes_unlocked": []}
    lock = module.FORWARD_LOCK
    for _ in range(args.repeats):
        out["one_lane"].append(2 * timed(lambda: embedder.embed(crops)))
        out["two_lanes_locked"].append(two_lanes())
        module.FORWARD_LOCK = contextlib.nullcontext()
        try:
            out["two_lanes_unlocked"].append(two_lanes())
        finally:
            module.FORWARD_LOCK = lock
    return {
        "what": "seconds to embed 2 x 32 crops (ViT-B/32, random weights); one_lane: twice one",
        **{k: round(float(np.median(v)), 2) for k, v in out.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--photos", type=int, default=6, help="1024-px photos timed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-12mp", action="store_true")
    parser.add_argument("--agreement", action="store_true")
    parser.add_argument("--synthetic", type=int, default=10, help="synthetic photos (agreement)")
    parser.add_argument("--lanes", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--clip", default="ViT-B-32", help="open_clip (random weights), or tiny")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    parser.add_argument("--clip-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        run_child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.agreement:
            result = {"gaicd_mos": gaicd_mos(args.data), "random_clip": agreement(args, root)}
        elif args.lanes:
            result = lanes(args, root)
        else:
            result = speed(args, root)
    import cropper

    print(json.dumps({
        "benchmark": "no_vlm", "command": "python benchmarks/no_vlm.py " + " ".join(sys.argv[1:]),
        "cropper_package": str(Path(cropper.__file__).parent), "machine": machine(),
        "load_average": list(os.getloadavg()), "clip": args.clip,
        "narrowing": has_narrowing(), **result,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
