"""Per-photo time the loop spends outside the model.

Real parts throughout: an exemplar bank (faiss) of synthetic photos embedded by a
full-size open_clip architecture with random weights (same compute as the
pretrained one; nothing downloaded), the shipped prompt files, the parser, the
scorer with an aesthetic head. The VLM answers instantly, so what remains is the
library's own time: photo loading, embedding, retrieval, exemplar photos, prompt
rendering, payload encoding (server backend), parsing and scoring.

    python benchmarks/loop_overhead.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/loop_overhead.py --backend server   # through the HTTP backend
    python benchmarks/loop_overhead.py --quick --clip tiny  # the toy CLIP: the rest alone

The stand-in VLM writes the R crops a round asks for (the JSON schema's ``maxItems``),
as a model constrained to the schema does, so scoring is counted in full.

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# This checkout's cropper is measured, whichever one the environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cropper.agent.loop  # noqa: E402
import cropper.vlm.openai_server as server_backend  # noqa: E402
from cropper import Cropper  # noqa: E402
from cropper.scoring.head import random_head, save_head  # noqa: E402
from cropper.testing.openai_server import OpenAICompatibleServer  # noqa: E402
from cropper.testing.synthetic import synthetic_photo  # noqa: E402
from cropper.testing.tiny_clip import build_random_clip, build_tiny_clip  # noqa: E402
from cropper.vlm.base import VLM  # noqa: E402
from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)


def timed(owner, name: str, key: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its time to ``TIMES[key]``.

    A name the code no longer has is left out (its part then shows under no key).
    """
    inner = getattr(owner, name, None)
    if inner is None:
        return

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            TIMES[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


#: Crops a reply holds when a request carries no JSON schema: the paper's R.
DEFAULT_CROPS = 6


def crops_asked(schema: dict | None) -> int:
    """The crops a reply may hold: the schema's ``maxItems`` (R), else :data:`DEFAULT_CROPS`."""
    try:
        return int(schema["properties"]["crops"]["maxItems"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return DEFAULT_CROPS


def full_reply(schema: dict | None, rng: random.Random) -> str:
    """A reply with as many valid crops as the schema allows, inside its number bounds.

    A model asked for R crops writes R of them, so scoring is counted in full: each box
    spans 30-70% of the range on each axis, at a random place, so boxes differ.
    """
    try:
        number = schema["properties"]["crops"]["items"]["items"]  # type: ignore[index]
        lo, hi = float(number.get("minimum", 0)), float(number.get("maximum", 1000))
        integer = number.get("type") == "integer"
    except (KeyError, TypeError):
        lo, hi, integer = 0.0, 1000.0, True
    span = hi - lo
    crops = []
    for _ in range(crops_asked(schema)):
        box = []
        for _axis in range(2):
            size = span * rng.uniform(0.3, 0.7)
            start = lo + rng.uniform(0, span - size)
            box.append((start, start + size))
        x0, x1 = box[0]
        y0, y1 = box[1]
        values = [x0, y0, x1, y1]
        crops.append([int(v) for v in values] if integer else [round(v, 4) for v in values])
    return json.dumps({"crops": crops})


_REPLIES = itertools.count()


def full_responder(request: dict) -> list[str]:
    """The test server's responder writing R crops a reply (``OpenAICompatibleServer``).

    ``cropper.testing.openai_server.default_responder`` writes a random 1 to R crops a
    reply (R/2 on average), which undercounts scoring; this one writes R.
    """
    schema = None
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]["schema"]
    elif isinstance(request.get("structured_outputs"), dict):
        schema = request["structured_outputs"].get("json")
    rng = random.Random(next(_REPLIES))
    return [full_reply(schema, rng) for _ in range(request.get("n", 1))]


class InstantVLM(VLM):
    """Answers at once, each reply holding the R crops asked for (the model's time is zero).

    R is the schema's ``maxItems``, as a model constrained to the schema writes; the
    boxes differ from call to call, so every round's crops are scored.
    """

    name = "instant"

    def __init__(self) -> None:
        self._calls = itertools.count()

    def generate(self, conversations, sampling):
        rng = random.Random(next(self._calls))
        return [
            [full_reply(sampling.json_schema, rng) for _ in range(sampling.n)]
            for _ in conversations
        ]


def count_clip_images(clip: ClipEmbedder) -> list[int]:
    """Count the images ``clip`` embeds, whichever of its methods is called: ``[count]``.

    Every path (``embed``, ``embed_pixels``) ends in the model's ``encode_image``.
    """
    model = clip._model  # a benchmark looks inside
    if hasattr(model, "images_counted"):  # wrapped already: the same counter
        return model.images_counted
    counter = [0]
    model.images_counted = counter
    encode = model.encode_image

    def counted(pixels, *args, **kwargs):
        counter[0] += int(pixels.shape[0])
        return encode(pixels, *args, **kwargs)

    model.encode_image = counted
    return counter


def build_bank(root: Path, clip: ClipEmbedder, count: int) -> Path:
    lines = []
    for i in range(count):
        synthetic_photo(1000 + i).save(root / f"ex{i}.jpg", quality=90)
        lines.append(
            {
                "image": f"ex{i}.jpg",
                "scores": [4.2, 3.9, 3.1, 2.5, 2.0, 1.5],
                "crops": [[40 * k, 30 * k, 1024 - 30 * k, 768 - 20 * k] for k in range(6)],
            }
        )
    (root / "bank.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    start = time.perf_counter()
    ExemplarIndex.build(read_jsonl(root / "bank.jsonl"), clip, root / "bank", progress=False)
    TIMES["bank_build_s"] = time.perf_counter() - start
    return root / "bank"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and a smaller bank")
    parser.add_argument(
        "--clip",
        default="ViT-B-32",
        help="open_clip architecture (random weights), or 'tiny' for the 32-px toy",
    )
    parser.add_argument("--backend", choices=["instant", "server"], default="instant")
    parser.add_argument("--photos", type=int, default=None)
    parser.add_argument("--bank-size", type=int, default=None)
    parser.add_argument("--task", default="free", choices=["free", "subject", "aspect"])
    args = parser.parse_args()
    n_photos = args.photos or (4 if args.quick else 12)
    bank_size = args.bank_size or (40 if args.quick else 200)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip_spec = (
            build_tiny_clip(root / "clip")
            if args.clip == "tiny"
            else build_random_clip(root / "clip", args.clip)
        )
        clip = ClipEmbedder(clip_spec)
        images = count_clip_images(clip)
        head = save_head(random_head(clip.dim, embedder=clip_spec), root / "head.safetensors")
        bank = build_bank(root, clip, bank_size)
        queries = []
        for i in range(n_photos + 1):
            path = root / f"q{i}.jpg"
            synthetic_photo(i).save(path, quality=90)
            queries.append(path)

        srv = (
            OpenAICompatibleServer(responder=full_responder).start()
            if args.backend == "server"
            else None
        )
        vlm = server_backend.OpenAIServerVLM(srv.url) if srv else InstantVLM()
        c = Cropper(vlm=vlm, clip=clip, head=head, index=bank)  # paper defaults: S=30, R=6, L=2
        timed(vlm, "generate", "vlm_call")
        timed(server_backend, "to_openai_messages", "payload_encoding")
        timed(cropper.agent.loop, "load_image", "photo_loading")
        timed(clip, "embed", "clip_embedding")
        timed(c.index, "search", "faiss_search")
        # The loop calls the batched forms (retrieve and score call them too).
        timed(c._exemplars, "retrieve_each", "retrieval_with_exemplar_photos")
        timed(c.prompts, "render", "prompt_rendering")
        timed(cropper.agent.loop, "parse_reply", "parsing")
        timed(c.scorer, "score_many", "scoring_incl_its_clip_embedding")

        kwargs = {"ratio": "4:5"} if args.task == "aspect" else {}
        if args.task == "subject":
            kwargs = {"subject": (0.5, 0.5)}
        c.crop(queries[0], task=args.task, **kwargs)  # warm-up: exemplar photos enter the cache
        warm = dict(TIMES)
        TIMES.clear()
        images[0] = 0
        start = time.perf_counter()
        for path in queries[1:]:
            result = c.crop(path, task=args.task, **kwargs)
        wall = (time.perf_counter() - start) / n_photos
        if srv:
            srv.stop()

    per_photo = {k: round(v / n_photos, 5) for k, v in TIMES.items()}
    vlm_calls = len(result.rounds)
    crops_scored = sum(len(r.candidates) for r in result.rounds)
    # The library's own time: everything but the model call, plus the payload it builds.
    overhead = wall - per_photo.get("vlm_call", 0.0) + per_photo.get("payload_encoding", 0.0)
    report = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "cropper_package": str(Path(cropper.__file__).parent),
        "backend": args.backend,
        "clip": "tiny (32 px toy)" if args.clip == "tiny" else f"{args.clip} (random weights)",
        "task": args.task,
        "bank_size": bank_size,
        "exemplars_S": c.config.exemplars,
        "crops_R": c.config.crops,
        "refine_rounds_L": c.config.refine_rounds,
        "photos": n_photos,
        "vlm_calls_per_photo": vlm_calls,
        "crops_scored_last_photo": crops_scored,
        "clip_images_per_photo": round(images[0] / n_photos, 1),
        "wall_s_per_photo": round(wall, 4),
        "overhead_s_per_photo": round(overhead, 4),
        "overhead_ratio_at_1s_per_call": round(overhead / vlm_calls, 4),
        "breakdown_s_per_photo": per_photo,
        "first_photo_extra_s": {k: round(v, 3) for k, v in warm.items()},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
