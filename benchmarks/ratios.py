"""Several ratios in one call against one call a ratio: time, model calls and tokens a photo.

The real workload: an exemplar bank (faiss) of synthetic 1024x768 photos embedded by a
full-size open_clip architecture with random weights (nothing downloaded), S=30
exemplars, R=6 crops a round, L=2 refinement rounds, an aesthetic head, the shipped
prompt files. The VLM answers every call after ``--latency`` seconds however many
conversations it holds, as a server answers the requests it has in flight together.

- *one call*: ``crop(photo, task="aspect", ratio=["1:1", "4:5", "16:9", "9:16"])``;
- *separate calls*: ``crop(photo, task="aspect", ratio=r)`` for each ratio.

Tokens: each ratio's prompts through the real chat template and Qwen2-VL image processor
(``benchmarks/tokens.py``), and how much of them a ratio's prompt shares with another
ratio's (what vLLM's prefix cache would serve).

    python benchmarks/ratios.py --quick     # a few minutes on 2 CPU cores

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from cropper import Cropper
from cropper.scoring.head import random_head, save_head
from cropper.testing.synthetic import synthetic_photo
from cropper.testing.tiny_clip import build_random_clip
from retrieval import ClipEmbedder

HERE = Path(__file__).parent
RATIOS = ["1:1", "4:5", "16:9", "9:16"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LatentVLM(_script("loop_overhead").InstantVLM):
    """Each call takes ``latency`` seconds however many it holds, and writes R crops a reply."""

    def __init__(self, latency: float):
        super().__init__()
        self.latency = latency
        self.calls = 0

    def generate(self, conversations, sampling):
        self.calls += 1
        time.sleep(self.latency)
        rng = random.Random(self.calls)
        crops = sampling.json_schema["properties"]["crops"]["maxItems"]  # R, as asked

        def reply() -> str:
            boxes = []
            for _ in range(crops):
                x0, y0 = rng.randint(0, 400), rng.randint(0, 400)
                boxes.append([x0, y0, x0 + rng.randint(300, 600), y0 + rng.randint(300, 600)])
            return json.dumps({"crops": boxes})

        return [[reply() for _ in range(sampling.n)] for _ in conversations]


def timing(root: Path, photos: int, bank_size: int, latency: float, clip_arch: str) -> dict:
    overhead = _script("loop_overhead")
    clip_spec = build_random_clip(root / "clip", clip_arch)
    clip = ClipEmbedder(clip_spec)
    head = save_head(random_head(clip.dim, embedder=clip_spec), root / "head.safetensors")
    bank = overhead.build_bank(root, clip, bank_size)
    queries = []
    for i in range(photos + 1):
        queries.append(root / f"q{i}.jpg")
        synthetic_photo(i).save(queries[-1], quality=90)
    vlm = LatentVLM(latency)
    cropper = Cropper(vlm=vlm, clip=clip, head=head, index=bank)
    embeds = []
    embed = clip.embed
    clip.embed = lambda images: (embeds.append(len(images)), embed(images))[1]
    cropper.crop(queries[0], task="aspect", ratio=RATIOS)  # warm-up: exemplar photos cached
    rows = {}
    for way in ("one_call", "separate_calls", "one_call_again"):
        vlm.calls, embeds[:] = 0, []
        start = time.perf_counter()
        for path in queries[1:]:
            if way.startswith("one_call"):
                cropper.crop(path, task="aspect", ratio=RATIOS)
            else:
                for ratio in RATIOS:
                    cropper.crop(path, task="aspect", ratio=ratio)
        wall = (time.perf_counter() - start) / photos
        rows[way] = {
            "wall_s_per_photo": round(wall, 3),
            "library_s_per_photo": round(wall - vlm.calls / photos * latency, 3),
            "vlm_calls_per_photo": vlm.calls / photos,
            "clip_passes_per_photo": len(embeds) / photos,
            "clip_images_per_photo": sum(embeds) / photos,
        }
    return rows


def ratio_exemplars(exemplars: list, ratio: float) -> list:
    """The exemplars as one ratio's prompt shows them: each with its crops nearest the ratio.

    Each exemplar carries ground-truth crops of eight shapes, as FCDB's photos carry crops
    of many; the loop shows the T=5 nearest the requested ratio (retrieval.selection).
    """
    from types import SimpleNamespace

    from cropper.agent.exemplars import PromptExemplar
    from cropper.core.boxes import Box
    from retrieval.selection import select_crops

    shown = []
    for ex in exemplars:
        w, h = ex.photo.size
        crops = []
        for shape in (1.0, 0.8, 1.25, 16 / 9, 9 / 16, 1.5, 2 / 3, 2.0):
            bw = min(0.9, 0.9 * shape * h / w)
            bh = min(0.9, bw * w / (shape * h))
            bw = bh * shape * h / w
            crops.append(Box(0.05, 0.05, 0.05 + bw, 0.05 + bh))
        hit = SimpleNamespace(crops=crops, scores=None, subjects=None, size=(w, h))
        chosen = select_crops(hit, "aspect", top=5, ratio=ratio)
        shown.append(PromptExemplar(ex.photo, chosen, ex.similarity))
    return shown


def tokens() -> dict:
    """Each ratio's prompt tokens, and the prefix a ratio's prompt shares with another's."""
    counts = _script("tokens")
    from cropper.agent.prompts import PromptSet
    from cropper.core.tasks import parse_ratio

    family = "qwen2.5-vl"
    budget, coords = counts.FAMILIES[family]["budget"], counts.FAMILIES[family]["coords"]
    with tempfile.TemporaryDirectory() as tmp:
        processor, tokenizer = counts.load_processor(family, None, Path(tmp))
        held = counts.workload("aspect", budget, counts.PAPER_WORKLOAD)
        rounds = held.pop("rounds")
        bank = held.pop("exemplars")
        prompts = PromptSet()
        per_ratio = {}
        for text in RATIOS:
            held["ratio"] = parse_ratio(text)
            held["exemplars"] = ratio_exemplars(bank, held["ratio"].value)
            conversations = [prompts.render("aspect", "propose", coords=coords, **held)]
            conversations += [
                prompts.render("aspect", "refine", coords=coords, candidates=c, **held)
                for c in rounds
            ]
            per_ratio[text] = [counts.model_input(processor, c)[0] for c in conversations]
    lengths = {t: [len(p) for p in ps] for t, ps in per_ratio.items()}
    total = sum(sum(v) for v in lengths.values())
    # A ratio's first prompt against the first ratio's: what a prefix cache reuses across them.
    first = per_ratio[RATIOS[0]][0]
    shared = [counts.common_prefix(first, per_ratio[t][0]) for t in RATIOS[1:]]
    return {
        "tokenizer": tokenizer,
        "prompt_tokens_per_ratio": lengths,
        "tokens_per_photo_four_ratios": total,
        "separate_calls_tokens_per_photo": total,  # the same prompts, sent apart
        "first_prompt_prefix_shared_with_the_first_ratio": shared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 photos, a bank of 40")
    parser.add_argument("--photos", type=int)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds a VLM call takes")
    parser.add_argument("--clip", default="ViT-B-32", help="open_clip architecture (random)")
    args = parser.parse_args()
    photos = args.photos or (3 if args.quick else 8)
    with tempfile.TemporaryDirectory() as tmp:
        rows = timing(Path(tmp), photos, 40 if args.quick else 200, args.latency, args.clip)
    report = {
        "benchmark": "ratios",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "ratios": RATIOS,
        "clip": f"{args.clip} (random weights)",
        "latency_s_per_vlm_call": args.latency,
        "photos": photos,
        **rows,
        "tokens": tokens(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
