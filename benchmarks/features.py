"""What the optional features cost beside a crop: debug folders, overlays, composition, top-k.

At the paper's workload (S=30 exemplars of T=5 crops, a query fitted to Qwen2.5-VL's
pixel budget, one propose and two refine rounds of R=6 crops; see tokens.py):

- ``draw()`` and ``write_debug()`` time and the debug folder's size on disk, for a first
  photo and for a second that shares the run's prompt-image folder (``--debug-dir``);
- the composition step's prompt tokens (one extra, short VLM call) and the tokens its
  line adds to every propose and refine prompt;
- ``diverse_top`` over a photo's 18 candidates, and the knowledge term over them;
- the request's constraints (``cropper.agent.constraints``) repairing a round's proposals, slivers
  among them, on a 12-megapixel photo: free, subject and aspect.

    python benchmarks/features.py

The last line printed is a JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cropper.agent.composition import load_compositions
from cropper.agent.constraints import Constraints
from cropper.agent.diversity import diverse_top
from cropper.agent.prompts import PromptSet, default_prompt_dir
from cropper.agent.result import Candidate, CropResult, Round
from cropper.core.boxes import Box
from cropper.core.tasks import Subject
from cropper.scoring.knowledge import KnowledgePrompts, KnowledgeTerm
from cropper.testing.synthetic import synthetic_photo
from cropper.views.debug import write_debug

HERE = Path(__file__).resolve().parent


def _tokens_module() -> Any:
    spec = importlib.util.spec_from_file_location("cropper_bench_tokens", HERE / "tokens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _best_of(fn: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def paper_result(tokens: Any, family: str = "qwen2.5-vl") -> CropResult:
    """A CropResult holding the paper workload's three prompts and 18 candidates."""
    budget, coords = tokens.FAMILIES[family]["budget"], tokens.FAMILIES[family]["coords"]
    held = tokens.workload("free", budget, tokens.PAPER_WORKLOAD)
    feedback = held.pop("rounds")
    prompts = PromptSet()
    photo = synthetic_photo(0, (1536, 1024))
    rounds, candidates = [], []
    for k in range(1 + tokens.PAPER_WORKLOAD["refine_rounds"]):
        stage = "propose" if k == 0 else "refine"
        shown = feedback[k - 1] if k else []
        prompt = prompts.render("free", stage, coords=coords, candidates=shown, **held)
        boxes = [Box(0.03 * j + 0.02 * k, 0.05, 0.7 + 0.04 * j, 0.95) for j in range(6)]
        round_ = tuple(Candidate(b, 0.5 + 0.01 * j + 0.05 * k, {"area": b.area}, k) for j, b in
                       enumerate(boxes))  # fmt: skip
        reply = json.dumps(
            {"crops": [list(b.to_coords(coords, held["query"].size)) for b in boxes]}
        )
        rounds.append(Round(k, stage, prompt, (reply,), round_))
        candidates += round_
    best = max(candidates[-6:], key=lambda c: c.score)
    return CropResult(best.box, best.score, "free", photo, tuple(candidates), tuple(rounds))


def debug_costs(result: CropResult) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        start = time.perf_counter()
        write_debug(result, run / "first", images=run / "prompt-images")
        first = time.perf_counter() - start
        start = time.perf_counter()
        write_debug(result, run / "second", images=run / "prompt-images")
        second = time.perf_counter() - start
        size = {p: sum(f.stat().st_size for f in (run / p).rglob("*") if f.is_file())
                for p in ("first", "second", "prompt-images")}  # fmt: skip
        images = len(list((run / "prompt-images").iterdir()))
    return {
        "draw_s": round(_best_of(result.draw), 4),
        "write_debug_first_photo_s": round(first, 3),
        "write_debug_next_photo_s": round(second, 3),
        "debug_folder_mb_per_photo": round(size["first"] / 2**20, 2),
        "prompt_images_mb_shared": round(size["prompt-images"] / 2**20, 2),
        "prompt_images_saved": images,
    }


def composition_tokens(tokens: Any, cache: Path, family: str = "qwen2.5-vl") -> dict[str, Any]:
    processor, source = tokens.load_processor(family, None, cache)
    budget, coords = tokens.FAMILIES[family]["budget"], tokens.FAMILIES[family]["coords"]
    held = tokens.workload("free", budget, tokens.PAPER_WORKLOAD)
    held.pop("rounds")
    prompts = PromptSet()
    compositions = load_compositions(default_prompt_dir())
    ask = prompts.render("free", "compose", coords=coords, query=held["query"], subject=None,
                         ratio=None, compositions=compositions)  # fmt: skip
    plain = prompts.render("free", "propose", coords=coords, candidates=[], **held)
    composed = prompts.render("free", "propose", coords=coords, candidates=[],
                              composition=compositions[0], **held)  # fmt: skip
    count = {name: len(tokens.model_input(processor, c)[0])
             for name, c in (("ask", ask), ("plain", plain), ("composed", composed))}  # fmt: skip
    return {
        "compose_prompt_tokens": count["ask"],
        "propose_prompt_tokens": count["plain"],
        "tokens_the_composition_line_adds": count["composed"] - count["plain"],
        "text_counted_with": source,
    }


def selection_costs(result: CropResult) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(len(result.candidates), 768))
    crops /= np.linalg.norm(crops, axis=1, keepdims=True)

    class Texts:  # ViT-L/14's width; the term's cost is two dot products a crop
        name, dim = "random-768", 768

        def embed_text(self, texts):
            return rng.normal(size=(len(texts), 768))

    term = KnowledgeTerm(Texts(), KnowledgePrompts(("good",) * 10, ("bad",) * 10))
    return {
        "candidates": len(result.candidates),
        "diverse_top_5_ms": round(
            1000 * _best_of(lambda: diverse_top(result.candidates, 5, 0.5), 20), 3
        ),
        "knowledge_term_ms": round(1000 * _best_of(lambda: term.score(crops), 20), 3),
        **constraint_costs(result),
    }


def constraint_costs(result: CropResult) -> dict[str, Any]:
    """Repairing a round's R=6 proposals (two of them slivers) on a 4000x3000 photo."""
    size = (4000, 3000)
    proposals = [c.box for c in result.candidates[:4]] + [
        Box.from_pixels((378, 300, 734, 304), size),  # 356 x 4 px, as a real reply wrote
        Box.from_pixels((1000, 1000, 1002, 1064), size),
    ]
    requests = {
        "free": Constraints(size),
        "subject": Constraints(size, subject=Subject((0.4, 0.5), Box(0.35, 0.4, 0.45, 0.6))),
        "aspect": Constraints(size, ratio=16 / 9),
    }
    return {
        f"constraints_{task}_6_proposals_ms": round(
            1000 * _best_of(lambda c=c: c.apply(proposals), 20), 3
        )
        for task, c in requests.items()
    }


def main() -> None:
    import platform

    tokens = _tokens_module()
    result = paper_result(tokens)
    with tempfile.TemporaryDirectory() as cache:
        out = {
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            **debug_costs(result),
            **composition_tokens(tokens, Path(cache)),
            **selection_costs(result),
        }
    for key, value in out.items():
        print(f"{key:>36}: {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
