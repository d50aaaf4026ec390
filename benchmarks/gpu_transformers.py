"""The transformers backend on a GPU: a full-size random Qwen2.5-VL-7B through the real loop.

The model is built on the GPU from ``Qwen2_5_VLConfig`` with the 7B's dimensions and
random weights (the compute of the real checkpoint; nothing downloaded); a temporary
folder gets its config and an offline processor (``cropper.testing.tiny_vlm``'s BPE
tokenizer, which overcounts text, and Qwen2.5-VL's real image settings), and the
transformers backend is made on that folder by ``cropper.vlm.load_vlm`` (the path
``vlm_options`` take), handed the built model in place of 16 GB of weights to load
back (``--save-weights`` saves and loads them, a few minutes more).
``Cropper.crop_batch`` then runs the paper's workload (S=30 exemplars from a bank of
synthetic photos, R=6, L=2: three VLM calls a photo) at batches 1 and 8, each after a
warm-up batch, twice: as the backend runs by default (prefix reuse where it has it),
and with ``prefix_cache=False`` where the backend takes that option ("not available"
where it does not), on the same photos, so the chosen boxes are compared too. Measured
on the machine itself: the bf16 matmul rate and the memory bandwidth, which give the
floor; ms per decoded token with and without the static cache; open_clip ViT-L/14
(random weights) images/s and crops/s, fp32 and fp16.

    python benchmarks/gpu_transformers.py --out gpu.json   # on a GPU: under 10 minutes
    python benchmarks/gpu_transformers.py --tiny           # every stage on the CPU: a check

``--tiny`` runs every stage with tiny models on the CPU (``cropper.testing.tiny_vlm``'s
Qwen2.5-VL, the tiny open_clip): its numbers check the plumbing only.

**The floor** of a photo counts each distinct prefix once, as a perfect prefix cache
would: each prompt's tokens are compared with every earlier prompt of the timed batch
(text tokens, and images by identity), and only the tokens past the longest shared
prefix are new. It is ``(2 N_text T_new + 2 N_vision P_new) / rate + steps x
decode_bytes / bandwidth`` over the photo's calls: ``T_new`` the new prompt tokens,
``P_new`` the vision patches of the new images, ``steps`` the longest reply of each
call (decoding is shared by the rows), ``decode_bytes`` the language model's weights
less its embedding table. Attention FLOPs and KV-cache reads are left out, so it is a
lower bound. Beside it, what the model computed: prefilled tokens and vision patches,
counted by hooks on the language model and the vision tower (so any way of reusing
the prefix is seen), against the floor's.

The last line printed is a JSON object; ``--out FILE`` also writes it after every
stage, so a run cut short keeps its results.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# This checkout's cropper is measured, whichever one the environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
#: The option that turns the backend's prefix reuse off, where it has one.
NO_PREFIX_CACHE = {"prefix_cache": False}


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
        self.report: dict[str, Any] = {"skipped": [], "stages_reached": []}

    def stage(self, name: str, needs_s: float, fn: Callable[[], Any], report: bool = True) -> Any:
        """Run ``fn`` (and report its result) unless ``needs_s`` more would pass the limit."""
        elapsed = time.perf_counter() - self.start
        if elapsed + needs_s > self.limit_s:
            self.report["skipped"].append(name)
            print(f"[{elapsed:6.1f}s] skip {name}: time limit", file=sys.stderr, flush=True)
            return None
        print(f"[{elapsed:6.1f}s] {name}", file=sys.stderr, flush=True)
        self.report["stages_reached"].append(name)
        try:
            result = fn()
        except Exception as exc:  # a stage that fails is reported; the others still run
            self.report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"  {name} failed: {exc!r}", file=sys.stderr, flush=True)
            self.save()
            return None
        if report and result is not None:
            self.report[name] = result
        self.report.setdefault("stage_s", {})[name] = round(
            time.perf_counter() - self.start - elapsed, 1
        )
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
        "matmul_tflops": round(2 * n**3 / matmul_s / 1e12, 3),
        "copy_bandwidth_gb_s": round(2 * src.numel() * src.element_size() / copy_s / 1e9, 1),
    }


def config_7b(processor: Any) -> Any:
    """``Qwen2_5_VLConfig`` with the 7B's dimensions and ``processor``'s special token ids."""
    from transformers import Qwen2_5_VLConfig

    from cropper.testing.tiny_vlm import SPECIAL_TOKENS

    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = TEXT_7B | {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=VISION_7B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def offline_processor() -> Any:
    """The tiny test BPE with Qwen2.5-VL's real image settings (real image token counts)."""
    from cropper.agent.sizing import QWEN2_5_VL
    from cropper.testing.tiny_vlm import _processor

    processor = _processor("qwen2_5_vl")
    processor.image_processor = _tokens_script().image_processor(QWEN2_5_VL)
    return processor


def param_counts(model: Any, dtype: Any) -> dict[str, Any]:
    """Parameters: all, the vision tower's, the matmul ones of the language model."""
    import torch

    vision = sum(p.numel() for p in model.model.visual.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    bits = torch.finfo(dtype).bits
    return {
        "params": total,
        "vision_params": vision,
        "text_matmul_params": total - vision - embeddings,  # lookup is no matmul
        "param_bytes": total * bits // 8,
        # What one decoding step reads: the language model less its embedding table.
        "decode_bytes": (total - vision - embeddings) * bits // 8,
    }


def build_model(
    folder: Path, device: Any, tiny: bool, save_weights: bool = False
) -> tuple[dict[str, Any], Any]:
    """A random Qwen2.5-VL checkpoint in ``folder``, its parameter counts, the model or None.

    ``tiny``: ``cropper.testing.tiny_vlm``'s (two layers of tens), saved whole and loaded
    back by the backend as a real checkpoint is; None is returned for the model. Else the
    7B's sizes, built on the device; the folder gets its config, generation config and
    processor, and the model is returned for the backend to take in place of loading 16 GB
    of weights back (``save_weights``: save them too, and load them as a checkpoint).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    from cropper.testing.tiny_vlm import _set_generation_config, build_tiny_qwen_vl

    start = time.perf_counter()
    if tiny:
        build_tiny_qwen_vl(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder)
        counts = param_counts(model, torch.float32)
    else:
        processor = offline_processor()
        dtype = torch.bfloat16
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config_7b(processor), dtype=dtype)
        _set_generation_config(model.generation_config, processor.tokenizer)
        counts = param_counts(model, dtype)
        if save_weights:
            model.save_pretrained(folder)
        else:
            model.config.save_pretrained(folder)
            model.generation_config.save_pretrained(folder)
        processor.save_pretrained(folder)
    counts["build_s"] = round(time.perf_counter() - start, 1)
    if tiny or save_weights:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return counts, None
    return counts, model


# --------------------------------------------------------------------------- what is computed


class CallLog:
    """Wraps ``model.generate``: each call's rows, prompt tokens, patches, steps, time."""

    def __init__(self, model: Any, device: Any):
        self.calls: list[dict[str, Any]] = []
        self.first_inputs: dict[str, Any] | None = None
        self._inner = model.generate
        self._device = device
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        output = self._inner(*args, **kwargs)
        sync(self._device)
        ids = kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        grid = kwargs.get("image_grid_thw")
        sequences = getattr(output, "sequences", output)
        prompt = int(ids.shape[1]) if ids is not None else 0
        self.calls.append(
            {
                "rows": int(ids.shape[0]) if ids is not None else 0,
                "prompt_tokens": int(mask.sum()) if mask is not None else 0,
                "padded_prompt": prompt,
                "patches": int(grid.prod(dim=1).sum()) if grid is not None else 0,
                "steps": int(sequences.shape[1] - prompt) if hasattr(sequences, "shape") else 0,
                "s": time.perf_counter() - start,
            }
        )
        if self.first_inputs is None and ids is not None:
            keep = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
            self.first_inputs = {k: kwargs[k] for k in keep if k in kwargs}
        return output


def _compiling() -> bool:
    """Whether torch.compile is tracing (the static cache's compiled decoding step)."""
    import torch

    return bool(getattr(torch, "compiler", None) and torch.compiler.is_compiling())


class ComputeLog:
    """Counts what the model computes, by hooks: prefilled tokens, decoding rows, patches.

    A forward of the language model over more than one position is a prefill (its rows x
    positions counted, padding included); over one position, a decoding step. The vision
    tower's input rows are its patches. Any way of reusing a prefix shows here. Decoding
    steps that torch.compile runs (the static cache on a GPU) are not counted: a hook must
    leave a compiled graph alone; prefill runs eagerly and is counted.
    """

    def __init__(self, model: Any):
        self.prefill_tokens = 0
        self.prefill_forwards = 0
        self.decode_rows = 0
        self.decode_forwards = 0
        self.patches = 0
        inner = getattr(model, "model", model)
        language = getattr(inner, "language_model", None)
        visual = getattr(inner, "visual", None)
        self.hooked = language is not None and visual is not None
        if language is not None:
            language.register_forward_pre_hook(self._language, with_kwargs=True)
        if visual is not None:
            visual.register_forward_pre_hook(self._visual, with_kwargs=True)

    def reset(self) -> None:
        self.prefill_tokens = self.prefill_forwards = self.patches = 0
        self.decode_rows = self.decode_forwards = 0

    def _language(self, module: Any, args: tuple, kwargs: dict) -> None:
        if _compiling():  # a compiled decoding step: no Python side effects in its graph
            return
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            return
        rows, positions = int(x.shape[0]), int(x.shape[1])
        if positions > 1:
            self.prefill_tokens += rows * positions
            self.prefill_forwards += 1
        else:
            self.decode_rows += rows
            self.decode_forwards += 1

    def _visual(self, module: Any, args: tuple, kwargs: dict) -> None:
        if _compiling():
            return
        x = kwargs.get("hidden_states", args[0] if args else None)
        if x is not None:
            self.patches += int(x.shape[0])


class ConversationLog:
    """Wraps ``vlm.generate``: each call's conversations and replies, for the floor."""

    def __init__(self, vlm: Any = None):
        self.calls: list[tuple[list, list[list[str]]]] = []  # (conversations, replies)
        if vlm is None:
            return
        inner = vlm.generate

        def generate(conversations, sampling):
            replies = inner(conversations, sampling)
            self.calls.append((list(conversations), replies))
            return replies

        vlm.generate = generate


def _image_id(part: Any) -> str:
    """An image's identity: its stable key and size, else a digest of its pixels."""
    image = part.image
    if part.key:
        return f"{part.key}:{image.size}"
    return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()


def token_sequence(conversation: Any, processor: Any) -> tuple[list[Any], int]:
    """The prompt as the model sees it: token ids, each image's tokens as its identity.

    Text through the chat template and the tokenizer, each image expanded to its number
    of tokens (the image processor's resize); returns the sequence and its image tokens.
    """
    from cropper.core.messages import ImagePart
    from cropper.vlm.transformers_engine import to_chat_messages

    text = processor.apply_chat_template(
        [to_chat_messages(conversation)], add_generation_prompt=True, tokenize=False
    )[0]
    pad = "<|image_pad|>"
    pieces = text.split(pad)
    images = [p for m in conversation for p in m.parts if isinstance(p, ImagePart)]
    if len(images) != len(pieces) - 1:
        raise ValueError(f"{len(images)} images for {len(pieces) - 1} image placeholders")
    merge = getattr(processor.image_processor, "merge_size", 2) ** 2
    sequence: list[Any] = []
    image_tokens = 0
    for i, piece in enumerate(pieces):
        sequence += processor.tokenizer.encode(piece, add_special_tokens=False)
        if i < len(images):
            width, height = images[i].image.size
            count = processor.image_processor.get_number_of_image_patches(height, width, {})
            count //= merge
            sequence += [("image", _image_id(images[i]), k) for k in range(count)]
            image_tokens += count
    return sequence, image_tokens


def floor_counts(log: ConversationLog, processor: Any) -> list[dict[str, int]]:
    """Each call's tokens: full prompts, and new past the longest prefix seen before."""
    import numpy as np

    codes: dict[Any, int] = {}
    seen: list[Any] = []
    merge = getattr(processor.image_processor, "merge_size", 2) ** 2
    calls = []
    for conversations, replies in log.calls:
        full = new = new_image = 0
        for conversation in conversations:
            sequence, _ = token_sequence(conversation, processor)
            array = np.array([codes.setdefault(t, len(codes)) for t in sequence], dtype=np.int64)
            shared = 0
            for earlier in seen:
                n = min(len(earlier), len(array))
                differ = np.flatnonzero(earlier[:n] != array[:n])
                shared = max(shared, int(differ[0]) if len(differ) else n)
            seen.append(array)
            full += len(sequence)
            new += len(sequence) - shared
            new_image += sum(1 for t in sequence[shared:] if isinstance(t, tuple))
        steps = max(
            (len(processor.tokenizer.encode(r, add_special_tokens=False)) + 1)
            for rows in replies
            for r in rows
        )
        calls.append(
            {
                "rows": len(conversations),
                "prompt_tokens": full,
                "new_tokens": new,
                "new_image_tokens": new_image,
                "new_patches": new_image * merge,
                "steps": steps,
            }
        )
    return calls


def floor_s(calls: list[dict], model: dict, hw: dict) -> float:
    """The floor of these VLM calls (module docstring), in seconds."""
    rate = hw["matmul_tflops"] * 1e12
    bandwidth = hw["copy_bandwidth_gb_s"] * 1e9
    total = 0.0
    for call in calls:
        flops = 2 * model["text_matmul_params"] * call["new_tokens"]
        flops += 2 * model["vision_params"] * call["new_patches"]
        total += flops / rate + call["steps"] * model["decode_bytes"] / bandwidth
    return total


# --------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def reusing(model: Any) -> Iterator[None]:
    """While on, loading a checkpoint gives ``model`` (already loaded): one copy in memory."""
    if model is None:
        yield
        return
    from unittest import mock

    from transformers import AutoModelForImageTextToText

    with mock.patch.object(AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: model):
        yield


def load_backend(folder: Path, device: Any, options: dict, model: Any = None) -> Any:
    """The transformers backend on ``folder`` with ``options``; a string saying why not.

    ``cropper.vlm.load_vlm`` is the path ``Cropper(vlm_options=...)`` takes: a backend
    that does not take an option refuses it (ConfigError) before loading anything.
    """
    from cropper.core.errors import ConfigError
    from cropper.vlm import load_vlm

    try:
        with reusing(model):
            return load_vlm(str(folder), device=str(device), batch_size=8, **options)
    except (ConfigError, TypeError) as exc:
        return f"not available: {exc}"


def make_bank(root: Path, device: Any) -> tuple[Any, str, Path]:
    """A tiny CLIP, its head and a bank of 30 synthetic exemplars (S=30 uses them all)."""
    from cropper.scoring.head import random_head, save_head
    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_tiny_clip
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
    return clip, head, root / "bank"


class Variant:
    """A Cropper on one backend (default, or prefix reuse off) with its logs."""

    def __init__(self, vlm: Any, bank: tuple, tiny: bool):
        from cropper import Cropper

        clip, head, index = bank
        self.vlm = vlm
        self.cropper = Cropper(
            vlm=vlm,
            clip=clip,
            head=head,
            index=index,
            pixel_budget=None if tiny else "qwen2.5-vl",
            seed=0,
        )  # paper defaults: S=30, R=6, L=2
        self.conversations = ConversationLog(vlm)


def crop_run(
    variant: Variant,
    log: CallLog,
    compute: ComputeLog,
    photos: list,
    batch: int,
    model: dict,
    hw: dict,
) -> dict:
    """One warm-up batch, then one timed ``crop_batch`` of ``batch`` photos."""
    variant.cropper.crop_batch(photos[:batch])  # compiles the static cache's graph
    log.calls.clear()
    compute.reset()
    variant.conversations.calls.clear()
    start = time.perf_counter()
    results = variant.cropper.crop_batch(photos[batch : 2 * batch])
    wall = time.perf_counter() - start
    failed = [str(r) for r in results if isinstance(r, Exception)]
    boxes = [
        None
        if isinstance(r, Exception)
        else [round(v, 6) for v in (r.box.x0, r.box.y0, r.box.x1, r.box.y1)]
        for r in results
    ]
    floor_calls = floor_counts(variant.conversations, variant.vlm.processor)
    floor = floor_s(floor_calls, model, hw) / batch
    per_photo = wall / batch  # the inverse of photos/s
    floor_tokens = sum(c["new_tokens"] for c in floor_calls) / batch
    floor_patches = sum(c["new_patches"] for c in floor_calls) / batch
    return {
        "photos": batch,
        "failed": failed,
        # The rounds of a batch move together: each photo's result comes at the batch's end.
        "latency_s_per_photo": round(wall, 3),
        "s_per_photo": round(per_photo, 3),
        "photos_per_s": round(batch / wall, 3),
        "vlm_s_per_photo": round(sum(c["s"] for c in log.calls) / batch, 3),
        "floor_s_per_photo": round(floor, 3),
        "ratio_to_floor": round(per_photo / floor, 2) if floor else None,
        "prompt_tokens_per_photo": sum(c["prompt_tokens"] for c in floor_calls) // batch,
        "floor_tokens_per_photo": round(floor_tokens),
        "prefilled_tokens_per_photo": round(compute.prefill_tokens / batch)
        if compute.hooked
        else None,
        "prefilled_over_floor": round(compute.prefill_tokens / batch / floor_tokens, 3)
        if compute.hooked and floor_tokens
        else None,
        "floor_patches_per_photo": round(floor_patches),
        "vision_patches_per_photo": round(compute.patches / batch) if compute.hooked else None,
        "prefill_forwards": compute.prefill_forwards,
        # Compiled decoding steps (the static cache) are not seen by the hooks.
        "decode_forwards": None if variant.vlm.static_cache else compute.decode_forwards,
        "boxes": boxes,
        "generate_calls": [{k: round(v, 3) for k, v in c.items()} for c in log.calls],
        "floor_calls": floor_calls,
    }


def compare(default: dict | None, other: dict | str | None) -> dict | str | None:
    """Whether the two runs chose the same boxes, and the speed-up of the default."""
    if not isinstance(default, dict) or not isinstance(other, dict):
        return other if isinstance(other, str) else None
    same = sum(a == b for a, b in zip(default["boxes"], other["boxes"], strict=True))
    return {
        "same_boxes": f"{same} of {len(default['boxes'])}",
        "default_speedup": round(other["s_per_photo"] / default["s_per_photo"], 3),
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
    """open_clip at batch 64: images/s of the model (fp32, fp16) and crops/s from a photo.

    Crops/s is the scorer's work: 64 crops of a 1024x768 photo, cut, preprocessed on the
    CPU and embedded; once through the embedder as it runs (its own precision), once in
    fp16 (the embedder's preprocessing, the model cast to half).
    """
    import torch

    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_random_clip, build_tiny_clip
    from retrieval import ClipEmbedder

    name = "tiny" if tiny else "ViT-L-14"
    spec = build_tiny_clip(root / "tiny") if tiny else build_random_clip(root / name, name)
    clip = ClipEmbedder(spec, device=device, batch_size=64)
    side = clip.preprocess_info.get("image_size") or 224  # a property
    side = side[0] if isinstance(side, list | tuple) else side
    reps = 1 if tiny else 5
    model = clip._model  # a benchmark looks inside
    out: dict[str, Any] = {
        "model": f"{name} (random weights)",
        "batch": 64,
        "input_side": side,
        "embedder_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    pixels = torch.randn(64, 3, side, side)
    out["images_per_s_model"] = round(64 / timeit(lambda: clip.embed_pixels(pixels), device, reps))
    photo = synthetic_photo(0)
    boxes = [(8 * i, 6 * i, 8 * i + 400 + 4 * i, 6 * i + 300 + 3 * i) for i in range(64)]
    crops_s = timeit(lambda: clip.embed([photo.crop(b) for b in boxes]), device, reps=1)
    out["crops_per_s_embedder"] = round(64 / crops_s, 1)
    photos = [synthetic_photo(i) for i in range(64)]
    out["images_per_s_from_pil_1024x768"] = round(
        64 / timeit(lambda: clip.embed(photos), device, 1)
    )

    # fp16: on a GPU the tensor cores' rate; on the CPU (the tiny check) the same steps.
    half = model.half()
    pixels_half = pixels.to(device=device, dtype=torch.float16)

    def encode_half() -> None:
        with torch.inference_mode():
            half.encode_image(pixels_half)

    out["images_per_s_model_fp16"] = round(64 / timeit(encode_half, device, reps))

    def crops_half() -> None:
        batch = torch.stack([clip.transform(photo.crop(b)) for b in boxes])
        with torch.inference_mode():
            half.encode_image(batch.to(device=device, dtype=torch.float16)).float().cpu()

    out["crops_per_s_fp16"] = round(64 / timeit(crops_half, device, reps=1), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a check")
    parser.add_argument(
        "--time-limit", type=float, default=500.0, help="seconds; stages past it are skipped"
    )
    parser.add_argument(
        "--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)"
    )
    parser.add_argument("--decode-tokens", type=int, help="for ms per token (64; --tiny 8)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--save-weights",
        action="store_true",
        help="save the 7B's weights and load them back as a checkpoint (+16 GB, +1-3 min)",
    )
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    decode_tokens = args.decode_tokens or (8 if args.tiny else 64)

    import torch

    device = torch.device("cpu" if args.tiny else "cuda")
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("gpu_transformers.py: no CUDA GPU here; run it on a GPU machine, or pass --tiny")

    run = Run(args.time_limit, args.out)
    run.report |= {
        "mode": "tiny (CPU check)" if args.tiny else "Qwen2.5-VL-7B size, random weights, bf16",
        "command": "python benchmarks/gpu_transformers.py " + " ".join(sys.argv[1:]),
        "workload": {"exemplars_S": 30, "crops_R": 6, "refine_rounds_L": 2, "batches": batches},
        "cropper_package": str(Path(__import__("cropper").__file__).parent),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "vlm"
        hw = run.stage("hardware", 30, lambda: hardware(device, args.tiny))
        built = run.stage(
            "model",
            150 if args.save_weights else 60,
            lambda: build_model(folder, device, args.tiny, args.save_weights),
            report=False,
        )
        model, weights = built if built is not None else (None, None)
        run.report["model"] = model
        bank = run.stage("bank", 30, lambda: make_bank(root, device), report=False)
        default = run.stage(
            "load", 90, lambda: load_backend(folder, device, {}, model=weights), report=False
        )
        weights = None  # the backend holds the model now
        if hw and model and bank and not isinstance(default, (str, type(None))):
            from cropper.testing.synthetic import synthetic_photo

            photos = [synthetic_photo(i, (1536, 1024)) for i in range(2 * max(batches))]
            run.report["static_cache"] = default.static_cache
            log = CallLog(default.model, device)  # the model is shared by both backends
            compute = ComputeLog(default.model)
            variants = {"": Variant(default, bank, args.tiny)}
            plain = run.stage(
                "load_no_prefix_cache",
                60,
                lambda: load_backend(folder, device, NO_PREFIX_CACHE, model=default.model),
                report=False,
            )
            if isinstance(plain, str):
                run.report["no_prefix_cache"] = plain
            elif plain is not None:
                variants["_no_prefix_cache"] = Variant(plain, bank, args.tiny)
            for batch in batches:
                for suffix, variant in variants.items():
                    run.stage(
                        f"batch_{batch}{suffix}",
                        60 if batch == 1 else 120,
                        lambda v=variant, b=batch: crop_run(v, log, compute, photos, b, model, hw),
                    )
                name = f"batch_{batch}_no_prefix_cache"
                versus = run.report.get(name, run.report.get("no_prefix_cache"))
                if versus is not None:
                    run.report[f"batch_{batch}_prefix_reuse"] = compare(
                        run.report.get(f"batch_{batch}"), versus
                    )
            run.stage(
                "clip_embedding", 60, lambda: clip_throughput(root / "clip", device, args.tiny)
            )
            if log.first_inputs is not None:
                inputs = dict(log.first_inputs)
                run.stage("decode_batch_1", 90, lambda: decode_ms(default, inputs, decode_tokens))
            for variant in variants.values():
                variant.vlm.close()
        else:
            run.stage(
                "clip_embedding", 60, lambda: clip_throughput(root / "clip", device, args.tiny)
            )
    run.save()
    print(json.dumps(run.report))


if __name__ == "__main__":
    main()
