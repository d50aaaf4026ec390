"""Prompt tokens per crop, and the share that is a prefix reused across rounds.

The paper's workload: S=30 exemplars (T=5 crops each) sent at ``exemplar_side``, a
query fitted to 1024 px, R=6 crops a round, L=2 refinement rounds: one propose and
two refine prompts a photo, each refine prompt adding the 6 previous candidates as
crops at ``candidate_side``. Photos are sized to the model's pixel budget
(``cropper.agent.sizing``) as the loop sends them, prompts rendered from the shipped
prompt files, turned into model input by the real path (the chat template, then the
processor, which expands each image into its tokens).

Image tokens come from transformers' ``Qwen2VLImageProcessor`` built offline with the
checkpoints' own settings (Qwen2.5-VL: patch 14, merge 2, 3,136 to 12,845,056
pixels; Qwen3-VL: patch 16, merge 2, 65,536 to 16,777,216). Text tokens come from
the tiny byte-level BPE of ``cropper.testing.tiny_vlm`` (600 tokens, Qwen's
pre-tokenizer and special tokens), which splits words more finely than Qwen's
151k-token vocabulary: text counts are an upper bound. ``--processor DIR`` uses a
local Qwen-VL checkpoint's processor instead (tokenizer and image settings).

A prefix is reused when it is the same tokens with the same images as one of the
photo's earlier prompts (what vLLM's prefix cache serves; counted whole and in
vLLM's 16-token blocks).

    python benchmarks/tokens.py --quick    # Qwen2.5-VL, free-form: seconds
    python benchmarks/tokens.py            # every task, Qwen2.5-VL and Qwen3-VL

The last line printed is a JSON object. ``token_counts(quick=...)`` returns it
(import this file by path: benchmarks/ is a folder of scripts).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from cropper.agent.exemplars import PromptExemplar
from cropper.agent.prompts import PromptPhoto, PromptSet
from cropper.agent.sizing import BUDGETS, PixelBudget, fit_to_budget
from cropper.core.boxes import Box
from cropper.core.messages import Conversation, conversation_images
from cropper.core.tasks import Ratio, Subject
from cropper.testing.synthetic import synthetic_photo
from cropper.vlm.transformers_engine import to_chat_messages
from retrieval.selection import ExemplarCrop

#: vLLM's prefix cache reuses whole blocks of this many tokens.
BLOCK = 16
#: Each family: its pixel budget, its coordinate convention, its tiny test checkpoint.
FAMILIES = {
    "qwen2.5-vl": {"budget": BUDGETS["qwen2.5-vl"], "coords": "pixel", "tiny": "qwen2_5_vl"},
    "qwen3-vl": {"budget": BUDGETS["qwen3-vl"], "coords": "norm1000", "tiny": "qwen3_vl"},
}
#: The paper's workload: S, T, R, L and the sides photos are sent at.
PAPER_WORKLOAD = {
    "exemplars": 30,
    "exemplar_crops": 5,
    "crops": 6,
    "refine_rounds": 2,
    "query_side": 1024,
    "exemplar_side": 448,
    "candidate_side": 224,
}
#: Exemplar photo sizes, cycled: GAICD's photos are mostly landscape, some portrait.
EXEMPLAR_SIZES = [(1024, 768), (1024, 683), (768, 1024), (1024, 576), (1024, 1024)]


def image_processor(budget: PixelBudget) -> Any:
    """transformers' Qwen2-VL image processor with a checkpoint's own settings."""
    from transformers import Qwen2VLImageProcessor

    extra = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if budget.factor == 32 else {}
    return Qwen2VLImageProcessor(
        patch_size=budget.factor // 2,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels},
        **extra,
    )


def load_processor(family: str, folder: str | None, cache: Path) -> tuple[Any, str]:
    """The family's processor: a local checkpoint's, or the tiny tokenizer + real image sizes."""
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the tiny checkpoint's "Writing model shards"
    if folder is not None:
        return AutoProcessor.from_pretrained(folder), f"the processor in {folder}"
    from cropper.testing.tiny_vlm import build_tiny_qwen_vl

    processor = AutoProcessor.from_pretrained(
        build_tiny_qwen_vl(cache / family, FAMILIES[family]["tiny"])
    )
    processor.image_processor = image_processor(FAMILIES[family]["budget"])
    return processor, "cropper.testing.tiny_vlm's BPE (600 tokens): an upper bound on text"


def candidate_rounds(
    photo: Any, budget: PixelBudget, settings: dict[str, int]
) -> list[list[dict[str, Any]]]:
    """Each refine round's candidates as the prompt shows them: R crops of ``photo``, sized."""
    rounds = []
    for k in range(settings["refine_rounds"]):
        boxes = [
            Box(0.03 * j + 0.01 * k, 0.05, 0.75 + 0.03 * j - 0.01 * k, 0.95)
            for j in range(settings["crops"])
        ]
        rounds.append(
            [
                {
                    "photo": PromptPhoto(
                        fit_to_budget(
                            photo.crop(b.to_pixels(photo.size)), budget, settings["candidate_side"]
                        )
                    ),
                    "box": b,
                    "score": 0.8 - 0.02 * j + 0.01 * k,
                    "round": k,
                }
                for j, b in enumerate(boxes)
            ]
        )
    return rounds


def workload(task: str, budget: PixelBudget, settings: dict[str, int]) -> dict[str, Any]:
    """What the loop holds for one photo: the sized query and exemplars, and crops per round."""
    photo = synthetic_photo(0, (1536, 1024))
    query = PromptPhoto(fit_to_budget(photo, budget, settings["query_side"]), key="query")
    exemplars = []
    for i in range(settings["exemplars"]):
        image = synthetic_photo(i + 1, EXEMPLAR_SIZES[i % len(EXEMPLAR_SIZES)], discs=4)
        crops = [
            ExemplarCrop(
                Box(0.02 * j, 0.03 * j, 0.7 + 0.05 * j, 0.8 + 0.04 * j), 4.4 - 0.3 * j, None
            )
            for j in range(settings["exemplar_crops"])
        ]
        sized = PromptPhoto(fit_to_budget(image, budget, settings["exemplar_side"]), key=f"ex{i}")
        exemplars.append(PromptExemplar(sized, crops, 0.9))
    rounds = candidate_rounds(photo, budget, settings)
    return {
        "query": query,
        "exemplars": exemplars,
        "subject": Subject((0.5, 0.45), Box(0.35, 0.3, 0.65, 0.6), None, "point"),
        "ratio": Ratio(4 / 5, "4:5"),
        "n_crops": settings["crops"],
        "rounds": rounds,
    }


def model_input(processor: Any, conversation: Conversation) -> tuple[list, list[int]]:
    """The prompt's tokens, each image's run of tokens tagged with that image's identity.

    Two different photos of one size give the same image-pad ids; the prefix cache
    tells them apart by their pixels, so the tags stand in for those.
    """
    text = processor.apply_chat_template(
        to_chat_messages(conversation), add_generation_prompt=True, tokenize=False
    )
    images = conversation_images(conversation)
    inputs = processor(text=[text], images=images or None, return_tensors="np")
    ids = [int(t) for t in inputs["input_ids"][0]]
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size
    per_image = [int(g.prod()) // merge**2 for g in inputs.get("image_grid_thw", [])]
    tagged: list = []
    image, used = -1, 0
    for t in ids:
        if t == pad:
            if used == 0:
                image += 1
                used = per_image[image]
            tagged.append(("image", id(images[image]), used))
            used -= 1
        else:
            tagged.append(t)
    return tagged, per_image


def common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def count_one(task: str, family: str, processor: Any, settings: dict[str, int]) -> dict[str, Any]:
    """Token counts of one photo's prompts for one task and model family."""
    budget = FAMILIES[family]["budget"]
    coords = FAMILIES[family]["coords"]
    held = workload(task, budget, settings)
    rounds = held.pop("rounds")
    prompts = PromptSet()
    conversations = [prompts.render(task, "propose", coords=coords, candidates=[], **held)]
    conversations += [
        prompts.render(task, "refine", coords=coords, candidates=c, **held) for c in rounds
    ]
    inputs = [model_input(processor, c) for c in conversations]
    lengths = [len(tokens) for tokens, _ in inputs]
    reused = [0]  # the first prompt of a photo finds nothing of its own cached
    for k in range(1, len(inputs)):
        reused.append(max(common_prefix(inputs[j][0], inputs[k][0]) for j in range(k)))
    image_tokens = [sum(per_image) for _, per_image in inputs]
    first_images = inputs[0][1]
    n_ex = len(held["exemplars"])
    candidate_tokens = inputs[1][1][n_ex + 1 :] if len(inputs) > 1 else []
    total = sum(lengths)
    in_blocks = sum(r // BLOCK * BLOCK for r in reused)
    first_image = next(i for i, t in enumerate(inputs[0][0]) if isinstance(t, tuple))
    return {
        "task": task,
        "family": family,
        "coords": coords,
        "query_sent": list(held["query"].size),
        "exemplar_sent": sorted({tuple(e.photo.size) for e in held["exemplars"]}),
        "candidate_sent": [list(c["photo"].size) for c in rounds[0]] if rounds else [],
        "prompt_tokens": lengths,
        "image_tokens": image_tokens,
        "text_tokens": [n - i for n, i in zip(lengths, image_tokens, strict=True)],
        "image_tokens_query": first_images[n_ex],
        "image_tokens_per_exemplar": round(sum(first_images[:n_ex]) / max(n_ex, 1), 1),
        "image_tokens_per_candidate": round(
            sum(candidate_tokens) / max(len(candidate_tokens), 1), 1
        ),
        "tokens_per_crop": total,
        "reused_prefix_tokens": reused,
        "reused_share": round(sum(reused) / total, 4),
        "reused_share_in_blocks": round(in_blocks / total, 4),
        "new_tokens_per_crop": total - sum(reused),
        "same_for_every_photo": first_image,  # the system text and instructions
    }


def token_counts(
    quick: bool = False,
    *,
    tasks: tuple[str, ...] | None = None,
    families: tuple[str, ...] | None = None,
    processor_dir: str | None = None,
    **overrides: int,
) -> dict[str, Any]:
    """Prompt tokens per crop of the paper's workload; ``quick``: Qwen2.5-VL free-form only.

    ``overrides`` change the workload: ``exemplars`` (S), ``exemplar_crops`` (T),
    ``crops`` (R), ``refine_rounds`` (L), ``query_side``, ``exemplar_side``,
    ``candidate_side``.
    """
    settings = {**PAPER_WORKLOAD, **overrides}
    tasks = tasks or (("free",) if quick else ("free", "subject", "aspect"))
    families = families or (("qwen2.5-vl",) if quick else tuple(FAMILIES))
    rows, tokenizers = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            processor, tokenizers[family] = load_processor(family, processor_dir, Path(tmp))
            rows += [count_one(task, family, processor, settings) for task in tasks]
    head = rows[0]
    return {
        "benchmark": "tokens",
        "workload": settings,
        "tokenizer": tokenizers,
        "image_processor": "transformers Qwen2VLImageProcessor, the checkpoints' settings",
        "tokens_per_crop": head["tokens_per_crop"],
        "reused_share": head["reused_share"],
        "new_tokens_per_crop": head["new_tokens_per_crop"],
        "headline": f"{head['family']} {head['task']}",
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | task | query sent | image tokens: query / exemplar / candidate "
        "| prompt tokens (propose, refine 1, refine 2) | per crop | reused prefix | new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['family']} | {r['task']} | {r['query_sent'][0]}x{r['query_sent'][1]} "
            f"| {r['image_tokens_query']} / {r['image_tokens_per_exemplar']} / "
            f"{r['image_tokens_per_candidate']} "
            f"| {', '.join(f'{n:,}' for n in r['prompt_tokens'])} | {r['tokens_per_crop']:,} "
            f"| {r['reused_share']:.1%} ({r['reused_share_in_blocks']:.1%} in blocks) "
            f"| {r['new_tokens_per_crop']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Qwen2.5-VL, free-form only")
    parser.add_argument("--processor", help="a local Qwen-VL checkpoint folder to count with")
    parser.add_argument("--family", choices=sorted(FAMILIES), action="append")
    parser.add_argument("--exemplars", type=int, default=30, help="S")
    parser.add_argument("--exemplar-side", type=int, default=448)
    parser.add_argument("--candidate-side", type=int, default=224)
    args = parser.parse_args()
    result = token_counts(
        args.quick,
        families=tuple(args.family) if args.family else None,
        processor_dir=args.processor,
        exemplars=args.exemplars,
        exemplar_side=args.exemplar_side,
        candidate_side=args.candidate_side,
    )
    print(table(result), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
