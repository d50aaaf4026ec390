"""The whole loop through real tiny models: Qwen-VL (transformers), open_clip, faiss, a head.

Random models write random boxes, but constrained decoding holds them to the
boxes schema, so every task must come back with a valid box from the VLM itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cropper import Cropper, WeightsNotFoundError
from cropper.scoring.head import random_head, save_head
from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl

pytestmark = pytest.mark.slow


def _photo(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        draw.ellipse((x, y, x + 30, y + 25), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="module")
def bank(tmp_path_factory, tiny_clip) -> Path:
    root = tmp_path_factory.mktemp("bank")
    lines = []
    for i in range(5):
        _photo(i).save(root / f"ex{i}.jpg")
        lines.append(
            {
                "image": f"ex{i}.jpg",
                "crops": [[10, 10, 150, 110], [40, 20, 120, 100]],
                "scores": [4.0 + i / 10, 3.0],
                "subject": [80, 60],
            }
        )
    (root / "crops.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ExemplarIndex.build(
        read_jsonl(root / "crops.jsonl"), ClipEmbedder(tiny_clip), root / "bank", progress=False
    )
    return root / "bank"


@pytest.fixture(scope="module")
def head(tmp_path_factory, tiny_clip) -> Path:
    dim = ClipEmbedder(tiny_clip).dim
    return save_head(
        random_head(dim, embedder=tiny_clip), tmp_path_factory.mktemp("head") / "head.safetensors"
    )


CASES = [
    ("free", {}),
    ("subject", {"subject": (0.3, 0.6)}),
    ("subject", {"subject": "the red ball"}),
    ("aspect", {"ratio": "16:9"}),
]


@pytest.mark.parametrize("family", ["tiny_qwen25_vl", "tiny_qwen3_vl"])
def test_every_task_returns_a_valid_box_from_the_real_tiny_vlm(
    request, family, tiny_clip, bank, head, tmp_path
):
    folder = request.getfixturevalue(family)
    coords = "pixel" if family == "tiny_qwen25_vl" else "norm1000"
    cropper = Cropper(
        vlm=str(folder),
        clip=tiny_clip,
        head=head,
        index=bank,
        exemplars=3,
        crops=3,
        refine_rounds=1,
        coords=coords,
        seed=0,
        samples=2,
        temperature=1.0,  # a random model needs heat to vary its boxes
    )
    photo = _photo(99, size=(200, 150))
    for task, kwargs in CASES:
        result = cropper.crop(photo, task=task, **kwargs)
        left, top, right, bottom = result.pixels
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 150
        assert result.image.size == (right - left, bottom - top)
        assert 0 <= result.score <= 1
        assert set(result.candidates[0].terms) <= {"aesthetic", "area", "content"}
        crop_rounds = [r for r in result.rounds if r.stage != "ground"]
        assert len(crop_rounds) == 2
        assert any(c.source == "vlm" for c in result.candidates), [r.replies for r in crop_rounds]
        # The exemplars reached the prompt: three exemplar photos, the query, then crops.
        first = crop_rounds[0].prompt
        assert sum(len(m.images) for m in first) == 4
        if task == "aspect":
            assert abs((right - left) - (bottom - top) * 16 / 9) <= 16 / 9 * 0.5 + 1e-6
        if task == "subject" and isinstance(kwargs["subject"], str):
            assert result.rounds[0].stage == "ground"
    cropper.close()


def test_cropper_with_no_arguments_takes_the_environment(
    monkeypatch, tiny_qwen3_vl, tiny_clip, gaicd_photo
):
    monkeypatch.setenv("CROPPER_VLM", str(tiny_qwen3_vl))
    monkeypatch.setenv("CROPPER_CLIP", tiny_clip)
    cropper = Cropper(refine_rounds=0, crops=2)
    assert cropper.vlm.name.endswith(str(tiny_qwen3_vl).rstrip("/").split("/")[-1])
    assert cropper.scorer.head is None  # the default head fits ViT-L/14 only
    result = cropper.crop(gaicd_photo, task="subject")  # a real GAICD photo, subject found by VLM
    w, h = Image.open(gaicd_photo).size
    assert result.size == (w, h)
    assert [r.stage for r in result.rounds] == ["ground", "propose"]
    assert result.to_json()["image"] == str(gaicd_photo)


def test_offline_defaults_name_what_to_fetch(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("CROPPER_VLM", raising=False)
    monkeypatch.delenv("CROPPER_CLIP", raising=False)
    with pytest.raises(WeightsNotFoundError, match="local-dir:"):
        Cropper(vlm="http://127.0.0.1:9/v1")  # the default CLIP, ViT-L-14:openai
    from cropper.core import defaults

    with pytest.raises(WeightsNotFoundError, match=defaults.default_vlm()) as info:
        Cropper(clip=None, head=None)  # the default VLM for this machine
    assert "hf download" in str(info.value) and "--vlm DIR" in str(info.value)


def test_the_bank_in_the_environment_brings_its_own_clip(
    monkeypatch, bank, tiny_clip, tiny_qwen3_vl
):
    monkeypatch.setenv("CROPPER_INDEX", str(bank))
    monkeypatch.setenv("CROPPER_CLIP", "ViT-B-32:not-this-one")  # the bank's embedder wins
    cropper = Cropper(vlm=str(tiny_qwen3_vl), head=None)
    assert cropper.embedder.name == tiny_clip
    assert len(cropper.index) == 5
