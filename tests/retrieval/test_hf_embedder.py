"""Any transformers vision model as the embedder (``hf:``), on tiny random checkpoints on disk."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.errors import ConfigError, ExemplarIndexError, WeightsNotFoundError
from cropper.testing.synthetic import synthetic_photo
from cropper.testing.tiny_hf_vision import build_tiny_hf_vision
from retrieval.embedder import EMBEDDERS, ClipEmbedder, Embedder, load_embedder

pytestmark = pytest.mark.slow

KINDS = {"vit": (32, "pooler"), "dinov2": (32, "pooler"), "clip": (16, "image_features")}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """kind -> ``hf:/folder`` spec of a tiny random checkpoint of that kind."""
    root = tmp_path_factory.mktemp("tiny_hf")
    return {kind: build_tiny_hf_vision(root / kind, kind) for kind in KINDS}


def _photos() -> list[Image.Image]:
    return [
        synthetic_photo(0, size=(64, 48), discs=4),
        synthetic_photo(1, size=(40, 60), discs=4),
        Image.new("RGB", (40, 40), (255, 0, 0)),
        Image.new("L", (30, 50), 128),  # grey: converted to RGB
    ]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_gives_unit_vectors_of_its_dim(tiny_hf: dict[str, str], kind: str) -> None:
    dim, pooling = KINDS[kind]
    embedder = load_embedder(tiny_hf[kind], batch_size=3)
    assert type(embedder).__name__ == "HFVisionEmbedder" and isinstance(embedder, Embedder)
    assert embedder.name == tiny_hf[kind] and embedder.dim == dim
    assert embedder.pooling == pooling and repr(embedder).startswith("HFVisionEmbedder(")
    assert embedder.dtype == "float32"  # on the CPU; float16 autocast only on CUDA
    vectors = embedder.embed(_photos())
    assert vectors.dtype == np.float32 and vectors.shape == (4, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(vectors[0] - vectors[2])) > 1e-3  # photos are not collapsed
    assert embedder.embed([]).shape == (0, dim)
    # Batches of 3 and of 1 give the same vectors.
    one = load_embedder(tiny_hf[kind], batch_size=1).embed(_photos())
    np.testing.assert_allclose(one, vectors, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_transform_pickles_and_feeds_embed_pixels(tiny_hf: dict[str, str], kind: str) -> None:
    import torch

    embedder = load_embedder(tiny_hf[kind])
    transform = pickle.loads(pickle.dumps(embedder.transform))  # as a worker process gets it
    pixels = torch.stack([transform(photo) for photo in _photos()])
    assert tuple(pixels.shape) == (4, 3, 32, 32)
    np.testing.assert_allclose(embedder.embed_pixels(pixels), embedder.embed(_photos()), atol=1e-5)
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        embedder.embed_pixels(np.zeros((1, 3, 32, 32)))
    with pytest.raises(ConfigError, match="PIL images"):
        embedder.embed(["photo.jpg"])


@pytest.mark.parametrize(
    ("kind", "size", "mode"),
    [("vit", [32, 32], "squash"), ("dinov2", [32, 32], "shortest"), ("clip", [32, 32], "shortest")],
)
def test_preprocess_info_comes_from_the_image_processor(
    tiny_hf: dict[str, str], kind: str, size: list[int], mode: str
) -> None:
    info = load_embedder(tiny_hf[kind]).preprocess_info
    assert info["image_size"] == size and info["resize_mode"] == mode
    assert len(info["mean"]) == 3 and len(info["std"]) == 3
    assert info["pooling"] == KINDS[kind][1]
    assert json.loads(json.dumps(info)) == info  # manifests and cache keys hold it


def test_same_seed_same_weights(tmp_path: Path) -> None:
    photo = _photos()[:1]
    a = load_embedder(build_tiny_hf_vision(tmp_path / "a", "vit", seed=3)).embed(photo)
    b = load_embedder(build_tiny_hf_vision(tmp_path / "b", "vit", seed=3)).embed(photo)
    c = load_embedder(build_tiny_hf_vision(tmp_path / "c", "vit", seed=4)).embed(photo)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_a_vit_without_pooler_weights_reads_the_cls_token(tmp_path: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    # Saved without a pooler, as from a classifier: AutoModel would add a random one.
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    embedder = load_embedder(f"hf:{tmp_path}")
    assert embedder.pooling == "cls" and embedder.dim == 32
    pixels = torch.stack([embedder.transform(photo) for photo in _photos()])
    with torch.no_grad():
        cls = embedder._model(pixel_values=pixels).last_hidden_state[:, 0].numpy()
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(_photos()), cls, atol=1e-5)


def test_only_a_text_tower_gives_embed_text(tiny_hf: dict[str, str]) -> None:
    from cropper.scoring.knowledge import KnowledgePrompts, KnowledgeTerm

    clip = load_embedder(tiny_hf["clip"], batch_size=2)
    texts = clip.embed_text(["a well composed photo", "a badly cropped photo", "a dog"])
    assert texts.dtype == np.float32 and texts.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert clip.embed_text([]).shape == (0, 16)
    prompts = KnowledgePrompts(good=("a well composed photo",), bad=("a badly cropped photo",))
    scores = KnowledgeTerm(clip, prompts).score(clip.embed(_photos()))
    assert scores.shape == (4,) and ((scores >= 0) & (scores <= 1)).all()

    for kind in ("vit", "dinov2"):
        vision_only = load_embedder(tiny_hf[kind])
        assert getattr(vision_only, "embed_text", None) is None
        with pytest.raises(ConfigError, match="needs a text encoder"):
            KnowledgeTerm(vision_only, prompts)


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("hf:", ConfigError, "names no model"),
        ("hf:  ", ConfigError, "names no model"),
        ("", ConfigError, "empty"),
        ("hf:/no/such/folder", WeightsNotFoundError, "no folder"),
        ("hf:./no/such/folder", WeightsNotFoundError, "no folder"),
    ],
)
def test_bad_specs_say_what_to_do(spec: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        load_embedder(spec)


def test_a_folder_without_its_image_processor_is_refused(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path
    )
    with pytest.raises(WeightsNotFoundError, match="preprocessor_config.json") as info:
        load_embedder(f"hf:{tmp_path}")
    assert "\n" not in str(info.value)


def test_uncached_hub_model_offline_names_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_embedder("hf:facebook/dinov2-small")
    message = str(info.value)
    assert "\n" not in message and "hf:facebook/dinov2-small" in message
    assert "hf download facebook/dinov2-small" in message and "hf:DIR" in message


def test_the_factory_picks_by_prefix(tiny_hf: dict[str, str], tiny_clip: str) -> None:
    assert set(EMBEDDERS) == {"hf:"}
    assert isinstance(load_embedder(f"  {tiny_clip} "), ClipEmbedder)
    assert load_embedder(f" {tiny_hf['vit']} ").name == tiny_hf["vit"]
    with pytest.raises(ConfigError, match="hf:ORG/NAME"):
        load_embedder("facebook/dinov2-small")  # a transformers id without hf: is open_clip's


# -- banks ------------------------------------------------------------------------------------


@pytest.fixture
def own_crops(tmp_path: Path) -> Path:
    lines = []
    for i in range(4):
        synthetic_photo(i, size=(96, 72), discs=4).save(tmp_path / f"p{i}.png")
        lines.append({"image": f"p{i}.png", "crops": [[8, 4, 88, 68]], "scores": [4.0]})
    path = tmp_path / "crops.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.mark.parametrize("workers", ["0", "1"])  # 1: the transform runs in a worker process
def test_index_build_with_an_hf_embedder_then_load_and_search(
    tiny_hf: dict[str, str], tiny_clip: str, own_crops: Path, tmp_path: Path, capsys, workers
) -> None:
    from cropper.cli.main import main
    from retrieval.index import ExemplarIndex

    spec, bank = tiny_hf["dinov2"], tmp_path / "bank"
    argv = ["index", "build", "--dataset", "jsonl", "--root", str(own_crops), "--out", str(bank)]
    assert main([*argv, "--clip", spec, "--workers", workers, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 4
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["embedder"] == spec and manifest["dim"] == 32
    assert manifest["preprocess"]["processor"] == "BitImageProcessor"

    loaded = ExemplarIndex.load(bank)  # no embedder given: the manifest's is rebuilt
    hits = loaded.search(own_crops.parent / "p2.png", k=2)
    assert loaded.embedder.name == spec and type(loaded.embedder).__name__ == "HFVisionEmbedder"
    assert hits[0].index == 2 and hits[0].similarity == pytest.approx(1.0, abs=1e-4)

    for other in (tiny_hf["vit"], tiny_clip):  # both 32-d: refused by name
        with pytest.raises(ExemplarIndexError, match="built with embedder"):
            ExemplarIndex.load(bank, embedder=load_embedder(other))
