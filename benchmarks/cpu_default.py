"""What a crop costs with the CPU defaults: a 2B Qwen3-VL and CLIP ViT-B/32, on this CPU.

The weights cannot be had here, so the models are the real architectures with random
weights, which cost what the real ones cost: a Qwen3-VL of Qwen3-VL-2B-Instruct's sizes
(text: 28 layers of 2048, 16 heads, 8 key-value heads, MLP 6144, a 151,936-token head;
vision: 24 blocks of 1024, patch 16, merge 2) and open_clip's ViT-B/32. One photo of
1024x768 is cropped with the default settings (zero-shot: no bank; R=6 crops a round, one
propose and two refine rounds, replies of up to 512 tokens held to the JSON schema).

    python benchmarks/cpu_default.py                 # one crop, about ten minutes on 2 cores
    python benchmarks/cpu_default.py --rounds 0      # the first round alone

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

#: Qwen3-VL-2B-Instruct's sizes (its config.json), for a model of the same cost.
QWEN3_VL_2B = {
    "text": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
    },
    "vision": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "deepstack_visual_indexes": [5, 11, 17],
        "num_position_embeddings": 2304,
    },
}


def build_random_qwen3_vl_2b(folder: Path) -> Path:
    """The tiny test checkpoint's tokenizer and processor, with a 2B model of random weights."""
    import torch
    import transformers

    from cropper.testing.tiny_vlm import build_tiny_qwen_vl

    tiny = build_tiny_qwen_vl(folder / "tiny", family="qwen3_vl")
    config = transformers.AutoConfig.from_pretrained(tiny)
    for key, value in QWEN3_VL_2B["text"].items():
        setattr(config.text_config, key, value)
    for key, value in QWEN3_VL_2B["vision"].items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    model = transformers.AutoModelForImageTextToText.from_config(config)
    out = folder / "qwen3-vl-2b-random"
    model.save_pretrained(out)
    for name in os.listdir(tiny):  # tokenizer, processor, chat template, generation config
        if not (out / name).exists():
            (out / name).write_bytes((tiny / name).read_bytes())
    params = sum(p.numel() for p in model.parameters())
    print(f"built a random Qwen3-VL of {params / 1e9:.2f} B parameters")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="refinement rounds (default 2)")
    args = parser.parse_args()

    from cropper import Cropper
    from cropper.scoring.head import random_head
    from cropper.testing.synthetic import synthetic_photo
    from cropper.testing.tiny_clip import build_random_clip

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        vlm = build_random_qwen3_vl_2b(root)
        clip = build_random_clip(root / "clip", "ViT-B-32")
        built = time.perf_counter() - start
        start = time.perf_counter()
        cropper = Cropper(
            vlm=str(vlm), clip=clip, head=random_head(512, embedder=clip), index=None, seed=0
        )
        loaded = time.perf_counter() - start
        photo = synthetic_photo(0, size=(1024, 768))
        start = time.perf_counter()
        result = cropper.crop(photo, task="free", refine_rounds=args.rounds)
        crop_s = time.perf_counter() - start
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "vlm": "random Qwen3-VL of Qwen3-VL-2B-Instruct's sizes, float32, CPU",
        "clip": "random open_clip ViT-B-32",
        "rounds": 1 + args.rounds,
        "build_s": round(built, 1),
        "load_s": round(loaded, 1),
        "crop_s": round(crop_s, 1),
        "replies_chars": [len(r) for rd in result.rounds for r in rd.replies],
    }
    for key, value in out.items():
        print(f"{key:>14}: {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
