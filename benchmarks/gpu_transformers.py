"""The transformers backend on a GPU: a full-size random Qwen2.5-VL-7B through the real loop.

The model is built from ``Qwen2_5_VLConfig`` with the 7B's dimensions and random
weights (the compute of the real checkpoint; nothing downloaded), saved to a
temporary folder with an offline processor (``cropper.testing.tiny_vlm``'s BPE
tokenizer, which overcounts text, and Qwen2.5-VL's real image settings) and loaded
by :class:`cropper.vlm.transformers_engine.TransformersVLM`, as a real checkpoint is.
``Cropper.crop_batch`` then runs the paper's workload (S=30 exemplars from a bank of
synthetic photos, R=6, L=2: three VLM calls a photo) at batches 1 and 8 after a
warm-up at each. Measured on the machine itself: the bf16 matmul rate and the memory
bandwidth, which give the floor; ms per decoded token with and without the static
cache; open_clip ViT-L/14 (random weights) embedding throughput at batch 64.

    python benchmarks/gpu_transformers.py                  # on a GPU: about 6-8 minutes
    python benchmarks/gpu_transformers.py --tiny           # tiny configs on the CPU: a check

The floor of one VLM call of ``b`` rows is ``(2 N_text T + 2 N_vision P) / rate +
steps x decode_bytes / bandwidth``: ``T`` the rows' prompt tokens, ``P`` their vision
patches, ``steps`` the decoding steps (shared by the rows), ``decode_bytes`` the
language model's weights less its embedding table. Attention FLOPs and KV-cache
reads are left out, so it is a lower bound. The last line printed is a JSON object;
``--out FILE`` also writes it after every stage, so a run cut short keeps its results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Qwen2.5-VL-7B-Instruct's dimensions (the config class defaults are the 72B's).
TEXT_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
VISION_7B = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
#: The tiny run: two layers of each, so the CPU gets through the same steps in seconds.
TEXT_TINY = TEXT_7B | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
}
VISION_TINY = VISION_7B | {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1],
}


def _tokens_script() -> Any:
    """benchmarks/tokens.py, imported by path (benchmarks/ is a folder of scripts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tokens_script", Path(__file__).with_name("tokens.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Run:
    """The report, stages run under a time limit, written out after each stage."""

    def __init__(self, limit_s: float, out: Path | None):
        self.start = time.perf_counter()
        self.limit_s = limit_s
        self.out = out
        self.report: dict[str, Any] = {"skipped": []}

    def stage(self, name: str, needs_s: float, fn: Callable[[], Any], report: bool = True) -> Any:
        """Run ``fn`` (and report its result) unless ``needs_s`` more would pass the limit."""
        elapsed = time.perf_counter() - self.start
        if elapsed + needs_s > self.limit_s:
            self.report["skipped"].append(name)
            print(f"[{elapsed:6.1f}s] skip {name}: time limit", file=sys.stderr, flush=True)
            return None
        print(f"[{elapsed:6.1f}s] {name}", file=sys.stderr, flush=True)
        result = fn()
        if report and result is not None:
            self.report[name] = result
        self.save()
        return result

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        if self.out is not None:
            from cropper.core.fileio import write_text

            write_text(self.out, json.dumps(self.report, indent=1))


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: Any, reps: int) -> float:
    """Mean seconds of ``fn`` over ``reps`` runs after one warm-up run."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def hardware(device: Any, tiny: bool) -> dict[str, Any]:
    """The bf16 matmul rate (FLOP/s) and copy bandwidth (bytes/s) measured here."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 512 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul_s = timeit(lambda: torch.matmul(a, b), device, reps=3 if tiny else 20)
    elements = (16 if tiny else 1024) * 2**20  # 32 MiB / 2 GiB in bf16
    src = torch.empty(elements, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy_s = timeit(lambda: dst.copy_(src), device, reps=3 if tiny else 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": name or "cpu",
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_tflops": round(2 * n**3 / matmul_s / 1e12, 2),
        "copy_bandwidth_gb_s": round(2 * src.numel() * src.element_size() / copy_s / 1e9, 1),
    }


def build_model(folder: Path, device: Any, tiny: bool) -> dict[str, Any]:
    """Write a random Qwen2.5-VL with the offline processor to ``folder``; count its params."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from cropper.agent.sizing import QWEN2_5_VL
    from cropper.testing.tiny_vlm import (
        SPECIAL_TOKENS,
        _processor,
        _set_generation_config,
    )

    processor = _processor("qwen2_5_vl")
    if not tiny:  # the checkpoint's own image sizes, so image token counts are the real ones
        processor.image_processor = _tokens_script().image_processor(QWEN2_5_VL)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = (TEXT_TINY if tiny else TEXT_7B) | {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=VISION_TINY if tiny else VISION_7B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    _set_generation_config(model.generation_config, processor.tokenizer)
    vision = sum(p.numel() for p in model.model.visual.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    saved_s = time.perf_counter() - start
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "params": total,
        "vision_params": vision,
        "text_matmul_params": total - vision - embeddings,  # lookup is no matmul
        "param_bytes": total * torch.finfo(dtype).bits // 8,
        # What one decoding step reads: the language model less its embedding table.
        "decode_bytes": (total - vision - embeddings) * torch.finfo(dtype).bits // 8,
        "save_s": round(saved_s, 1),
    }


class CallLog:
    """Wraps ``model.generate``: each call's rows, prompt tokens, patches, steps, time."""

    def __init__(self, vlm: Any):
        self.calls: list[dict[str, Any]] = []
        self.first_inputs: dict[str, Any] | None = None
        self._inner = vlm.model.generate
        self._device = vlm.device
        vlm.model.generate = self

    def __call__(self, **kwargs: Any) -> Any:
        start = time.perf_counter()
        output = self._inner(**kwargs)
        sync(self._device)
        prompt = kwargs["input_ids"].shape[1]
        grid = kwargs.get("image_grid_thw")
        self.calls.append(
            {
                "rows": int(kwargs["input_ids"].shape[0]),
                "prompt_tokens": int(kwargs["attention_mask"].sum()),
                "padded_prompt": int(prompt),
                "patches": int(grid.prod(dim=1).sum()) if grid is not None else 0,
                "steps": int(output.shape[1] - prompt),
                "s": time.perf_counter() - start,
            }
        )
        if self.first_inputs is None:
            keep = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
            self.first_inputs = {k: kwargs[k] for k in keep if k in kwargs}
        return output


def make_cropper(root: Path, folder: Path, device: Any, tiny: bool) -> tuple[Any, Any, list]:
    """A Cropper on the saved model, a bank of 30 synthetic exemplars, and query photos."""
    from cropper import Cropper
    from cropper.scoring.head import random_head, save_head
    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_tiny_clip
    from cropper.vlm.transformers_engine import TransformersVLM
    from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl

    # Retrieval and scoring use a tiny CLIP: ViT-L/14's cost is measured on its own below.
    clip_spec = build_tiny_clip(root / "clip")
    clip = ClipEmbedder(clip_spec, device=device)
    head = save_head(random_head(clip.dim, embedder=clip_spec), root / "head.safetensors")
    lines = []
    for i in range(30):
        synthetic_photo(1000 + i).save(root / f"ex{i}.jpg", quality=90)
        crops = [[40 * k, 30 * k, 1024 - 30 * k, 768 - 20 * k] for k in range(6)]
        scores = [4.2, 3.9, 3.1, 2.5, 2.0, 1.5]
        lines.append({"image": f"ex{i}.jpg", "scores": scores, "crops": crops})
    (root / "bank.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ExemplarIndex.build(read_jsonl(root / "bank.jsonl"), clip, root / "bank", progress=False)
    vlm = TransformersVLM(str(folder), device=device, batch_size=8)
    cropper = Cropper(
        vlm=vlm,
        clip=clip,
        head=head,
        index=root / "bank",
        pixel_budget=None if tiny else "qwen2.5-vl",
        seed=0,
    )  # paper defaults: S=30, R=6, L=2
    photos = [synthetic_photo(i, (1536, 1024)) for i in range(20)]
    return cropper, vlm, photos


def floor_s(calls: list[dict], model: dict, hw: dict) -> float:
    """The floor of these VLM calls (module docstring), in seconds."""
    rate = hw["matmul_tflops"] * 1e12
    bandwidth = hw["copy_bandwidth_gb_s"] * 1e9
    total = 0.0
    for call in calls:
        flops = 2 * model["text_matmul_params"] * call["prompt_tokens"]
        flops += 2 * model["vision_params"] * call["patches"]
        total += flops / rate + call["steps"] * model["decode_bytes"] / bandwidth
    return total


def crop_run(cropper: Any, log: CallLog, photos: list, batch: int, model: dict, hw: dict) -> dict:
    """One warm-up batch, then one timed ``crop_batch`` of ``batch`` photos."""
    cropper.crop_batch(photos[:batch])  # compiles the static cache's graph at this batch size
    log.calls.clear()
    start = time.perf_counter()
    results = cropper.crop_batch(photos[batch : 2 * batch])
    wall = time.perf_counter() - start
    failed = [str(r) for r in results if isinstance(r, Exception)]
    floor = floor_s(log.calls, model, hw) / batch
    per_photo = wall / batch
    return {
        "photos": batch,
        "failed": failed,
        "latency_s_per_photo": round(per_photo, 3),
        "photos_per_s": round(batch / wall, 3),
        "vlm_s_per_photo": round(sum(c["s"] for c in log.calls) / batch, 3),
        "floor_s_per_photo": round(floor, 3),
        "ratio_to_floor": round(per_photo / floor, 2),
        "prompt_tokens_per_photo": sum(c["prompt_tokens"] for c in log.calls) // batch,
        "calls": [{k: round(v, 3) for k, v in c.items()} for c in log.calls],
    }


def decode_ms(vlm: Any, inputs: dict, tokens: int) -> dict[str, float]:
    """ms per decoded token at batch 1, dynamic and static cache: (t(N) - t(1)) / (N - 1)."""
    import torch

    from cropper.vlm.transformers_engine import static_cache_length

    result = {}
    for name, extra in {
        "dynamic": {},
        "static": {
            "cache_implementation": "static",
            "max_cache_len": static_cache_length(inputs["input_ids"].shape[1], tokens),
        },
    }.items():

        def generate(n: int, extra: dict = extra) -> None:
            with torch.inference_mode():
                vlm.model.generate(
                    **inputs,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=vlm._pad_id,
                    **extra,
                )

        one = timeit(lambda: generate(1), vlm.device, reps=2)
        many = timeit(lambda: generate(tokens), vlm.device, reps=2)  # noqa: B023
        result[f"{name}_ms_per_token"] = round(1000 * (many - one) / (tokens - 1), 2)
        result[f"{name}_prefill_s"] = round(one, 3)
    result["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    return result


def clip_throughput(root: Path, device: Any, tiny: bool) -> dict[str, Any]:
    """open_clip embedding images/s at batch 64: the model alone, and from PIL photos."""
    import torch

    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_random_clip, build_tiny_clip
    from retrieval import ClipEmbedder

    name = "tiny" if tiny else "ViT-L-14"
    spec = build_tiny_clip(root / "tiny") if tiny else build_random_clip(root / name, name)
    clip = ClipEmbedder(spec, device=device, batch_size=64)
    side = clip.preprocess_info().get("image_size", 224) if not tiny else 32
    side = side[0] if isinstance(side, list | tuple) else side
    pixels = torch.randn(64, 3, side, side)
    model_s = timeit(lambda: clip.embed_pixels(pixels), device, reps=1 if tiny else 5)
    photos = [synthetic_photo(i) for i in range(64)]
    pil_s = timeit(lambda: clip.embed(photos), device, reps=1)
    return {
        "model": f"{name} (random weights, float32)",
        "batch": 64,
        "images_per_s_model": round(64 / model_s, 1),
        "images_per_s_from_pil_1024x768": round(64 / pil_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU: a check")
    parser.add_argument(
        "--time-limit", type=float, default=480.0, help="seconds; stages past it are skipped"
    )
    parser.add_argument("--decode-tokens", type=int, default=64, help="for ms per decoded token")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    device = torch.device("cpu" if args.tiny else "cuda")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("gpu_transformers.py: no CUDA GPU here; run it on a GPU machine, or pass --tiny")

    run = Run(args.time_limit, args.out)
    run.report |= {
        "mode": "tiny (CPU check)" if args.tiny else "Qwen2.5-VL-7B size, random weights, bf16",
        "workload": {"exemplars_S": 30, "crops_R": 6, "refine_rounds_L": 2},
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hw = run.stage("hardware", 30, lambda: hardware(device, args.tiny))
        model = run.stage("model", 120, lambda: build_model(root / "vlm", device, args.tiny))
        built = run.stage(
            "cropper",
            90,
            lambda: make_cropper(root, root / "vlm", device, args.tiny),
            report=False,
        )
        if built is not None:
            cropper, vlm, photos = built
            run.report["static_cache"] = vlm.static_cache
            log = CallLog(vlm)
            for batch in (1, 8):
                run.stage(
                    f"batch_{batch}",
                    60 if batch == 1 else 120,
                    lambda batch=batch: crop_run(cropper, log, photos, batch, model, hw),
                )
            if log.first_inputs is not None:
                inputs = {k: v for k, v in log.first_inputs.items()}
                run.stage("decode_batch_1", 90, lambda: decode_ms(vlm, inputs, args.decode_tokens))
            vlm.close()
            del cropper, vlm, log
        run.stage("clip_embedding", 60, lambda: clip_throughput(root / "clip", device, args.tiny))
    run.save()
    print(json.dumps(run.report))


if __name__ == "__main__":
    main()
