"""CPU time and prefilled tokens per photo, in-process, with and without the prefix cache.

The transformers backend (``TransformersVLM``) answers a photo's three prompts
(propose, refine 1, refine 2) as the loop sends them: rendered from the shipped
free-form prompt files, S exemplars at ``exemplar_side``, the query at
``query_side``, R candidate crops a refine round at ``candidate_side``, all sized to
the model's pixel budget; ``--photos`` photos at a time, each round's prompts in one
call, greedy constrained decoding of R crops. The model is the tiny random
checkpoint of ``cropper.testing.tiny_vlm`` with its image processor set to the real
checkpoint's pixel range (Qwen2.5-VL: 3,136 to 12,845,056 pixels), so prompts have
the paper workload's tokens while the language model is small: the times show the
work around the model (image processing, the vision tower and prefill of tiny
layers, decoding steps), not a real model's.

Each repeat runs the two modes side by side, each on a fresh backend after a
warm-up call (grammar compiled), in alternating order. Counts: ``prompt_tokens``
(what the prompts hold), ``prefilled`` (what the language model ran for them,
padding included), and the floor: each prompt's tokens past the longest prefix it
shares with an earlier prompt, the same images in the same places (the least any
prefill can run).

    python benchmarks/prefix_reuse.py --exemplars 30           # the paper's S: minutes
    python benchmarks/prefix_reuse.py --quick                  # S=8: about a minute

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cropper.agent.exemplars import PromptExemplar
from cropper.agent.prompts import PromptPhoto, PromptSet
from cropper.agent.sizing import BUDGETS, fit_to_budget
from cropper.core.boxes import Box
from cropper.core.messages import Message, TextPart
from cropper.testing.synthetic import synthetic_photo
from cropper.testing.tiny_vlm import build_tiny_qwen_vl
from cropper.vlm.base import Sampling
from cropper.vlm.schema import boxes_schema
from cropper.vlm.transformers_engine import TransformersVLM
from retrieval.selection import ExemplarCrop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokens import EXEMPLAR_SIZES, candidate_rounds, common_prefix, model_input  # noqa: E402

#: Each family: its tiny checkpoint, pixel budget and coordinates.
FAMILIES = {
    "qwen2.5-vl": ("qwen2_5_vl", "pixel"),
    "qwen3-vl": ("qwen3_vl", "norm1000"),
}


def checkpoint(family: str, folder: Path) -> Path:
    """The tiny checkpoint, its image processor given the real model's pixel range."""
    path = build_tiny_qwen_vl(folder / family, FAMILIES[family][0])
    budget = BUDGETS[family]
    config_file = path / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["image_processor"]["size"] = {
        "shortest_edge": budget.min_pixels,
        "longest_edge": budget.max_pixels,
    }
    config_file.write_text(json.dumps(config, indent=2))
    return path


_EXEMPLARS: dict[tuple, PromptPhoto] = {}  # one object per exemplar, as the bank's cache keeps


def photo_prompts(i: int, family: str, settings: dict[str, int]) -> list[list[Message]]:
    """Photo ``i``'s propose and refine prompts (neighbouring photos share some exemplars)."""
    budget = BUDGETS[family]
    photo = synthetic_photo(1000 + i, (1536, 1024))
    query = PromptPhoto(fit_to_budget(photo, budget, settings["query_side"]), key=f"q{i}")
    exemplars = []
    for j in range(settings["exemplars"]):
        seed = 10 * i + j
        key = (family, seed, settings["exemplar_side"])
        if key not in _EXEMPLARS:
            image = synthetic_photo(seed, EXEMPLAR_SIZES[seed % len(EXEMPLAR_SIZES)], discs=4)
            sized = fit_to_budget(image, budget, settings["exemplar_side"])
            _EXEMPLARS[key] = PromptPhoto(sized, key=f"ex{seed}")
        crops = [
            ExemplarCrop(Box(0.02 * k, 0.03 * k, 0.7 + k / 20, 0.8 + k / 25), 4.4 - 0.3 * k, None)
            for k in range(5)
        ]
        exemplars.append(PromptExemplar(_EXEMPLARS[key], crops, 0.9))
    held = {"query": query, "exemplars": exemplars, "n_crops": settings["crops"]}
    prompts, coords = PromptSet(), FAMILIES[family][1]
    out = [prompts.render("free", "propose", coords=coords, candidates=[], **held)]
    for candidates in candidate_rounds(photo, budget, settings):
        out.append(prompts.render("free", "refine", coords=coords, candidates=candidates, **held))
    return out


def floor_tokens(processor: Any, rounds: list[list[list[Message]]]) -> int:
    """Each prompt, in the order sent, past the longest prefix shared with an earlier one."""
    sent = [model_input(processor, c)[0] for prompts in rounds for c in prompts]
    total = 0
    for k, tokens in enumerate(sent):
        total += len(tokens) - max((common_prefix(tokens, e) for e in sent[:k]), default=0)
    return total


def timed(owner: Any, name: str, spent: dict[str, float], key: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its CPU seconds to ``spent[key]``."""
    inner = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[key] += time.process_time() - start

    setattr(owner, name, wrapper)


def run_once(folder: Path, rounds: list, sampling: Sampling, prefix_cache: bool) -> dict:
    """One fresh backend answering every round; CPU and wall seconds, counts, replies.

    ``parts``: CPU seconds in the image processor, in the backend's own prefill (prefix
    cache only), and in ``model.generate`` (the whole prefill, vision tower included,
    without the prefix cache; the last prompt token and decoding with it).
    """
    vlm = TransformersVLM(str(folder), prefix_cache=prefix_cache)
    warm = [[Message("user", (TextPart("Warm up."),))]]
    vlm.generate(warm, sampling)  # compiles the grammar; what it left is dropped
    vlm.counts = type(vlm.counts)()
    vlm._prefixes.clear()  # a cold start: the first prompt finds nothing
    parts = dict.fromkeys(["image_processor", "prefill", "generate"], 0.0)
    timed(vlm.processor.image_processor, "preprocess", parts, "image_processor")
    timed(vlm, "_prefill", parts, "prefill")
    timed(vlm.model, "generate", parts, "generate")
    cpu, wall = time.process_time(), time.perf_counter()
    replies = [vlm.generate(prompts, sampling) for prompts in rounds]
    out = {
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "parts": parts,
        "counts": vars(vlm.counts).copy(),
        "replies": replies,
    }
    vlm.close()
    return out


def measure(
    family: str = "qwen2.5-vl",
    *,
    exemplars: int = 30,
    photos: int = 2,
    repeats: int = 3,
    max_tokens: int = 160,
    threads: int = 1,
    **overrides: int,
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    settings = {
        "exemplars": exemplars,
        "crops": 6,
        "refine_rounds": 2,
        "query_side": 1024,
        "exemplar_side": 448,
        "candidate_side": 224,
        **overrides,
    }
    per_photo = [photo_prompts(i, family, settings) for i in range(photos)]
    rounds = [[p[k] for p in per_photo] for k in range(settings["refine_rounds"] + 1)]
    sampling = Sampling(
        n=1,
        temperature=0.0,
        max_tokens=max_tokens,
        json_schema=boxes_schema(settings["crops"], FAMILIES[family][1], (1024, 1024)),
    )
    runs: dict[str, list[dict]] = {"whole": [], "prefix_cache": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint(family, Path(tmp))
        for r in range(repeats):
            order = ["whole", "prefix_cache"] if r % 2 == 0 else ["prefix_cache", "whole"]
            for mode in order:
                done = run_once(folder, rounds, sampling, mode == "prefix_cache")
                runs[mode].append(done)
                print(f"repeat {r + 1} {mode}: {done['cpu_s']:.1f} s CPU", file=sys.stderr)
        from transformers import AutoProcessor

        floor = floor_tokens(AutoProcessor.from_pretrained(folder), rounds)
    cpu = {m: [x["cpu_s"] / photos for x in runs[m]] for m in runs}
    ratios = [a / b for a, b in zip(cpu["prefix_cache"], cpu["whole"], strict=True)]
    counts = {m: runs[m][0]["counts"] for m in runs}
    prefilled = {m: counts[m]["prefilled"] / photos for m in runs}
    return {
        "benchmark": "prefix_reuse",
        "family": family,
        "model": "tiny random checkpoint (cropper.testing.tiny_vlm), the real pixel range",
        "workload": {**settings, "photos_per_call": photos, "max_tokens": max_tokens},
        "machine": f"{platform.machine()}, torch threads {threads}",
        "cpu_s_per_photo": {m: [round(v, 3) for v in cpu[m]] for m in cpu},
        "cpu_s_per_photo_median": {m: round(statistics.median(cpu[m]), 3) for m in cpu},
        "cpu_ratio_prefix_cache_to_whole": [round(v, 3) for v in ratios],
        "cpu_ratio_median": round(statistics.median(ratios), 3),
        "cpu_s_per_photo_parts_median": {
            m: {
                part: round(statistics.median(x["parts"][part] / photos for x in runs[m]), 3)
                for part in runs[m][0]["parts"]
            }
            for m in runs
        },
        "prompt_tokens_per_photo": counts["whole"]["prompt_tokens"] / photos,
        "prefilled_per_photo": prefilled,
        "reused_per_photo": counts["prefix_cache"]["reused"] / photos,
        "floor_per_photo": floor / photos,
        "prefilled_over_floor": {m: round(prefilled[m] * photos / floor, 3) for m in prefilled},
        "replies_identical": all(
            x["replies"] == runs["whole"][0]["replies"] for m in runs for x in runs[m]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S=8 exemplars")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2.5-vl")
    parser.add_argument("--exemplars", type=int, default=30, help="S")
    parser.add_argument("--photos", type=int, default=2, help="photos answered per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    result = measure(
        args.family,
        exemplars=8 if args.quick else args.exemplars,
        photos=args.photos,
        repeats=args.repeats,
        max_tokens=args.max_tokens,
        threads=args.threads,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
