"""The CLIP embedder through open_clip, on a tiny random checkpoint loaded via local-dir:."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.errors import ConfigError, WeightsNotFoundError
from retrieval.embedder import ClipEmbedder, Embedder, split_spec


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    return [*noise, Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("L", (30, 50), 128)]


@pytest.mark.slow
def test_tiny_clip_gives_unit_vectors_of_its_dim(tiny_clip: str) -> None:
    embedder = ClipEmbedder(tiny_clip, batch_size=2)
    assert isinstance(embedder, Embedder)
    assert embedder.name == tiny_clip and embedder.dim == 32
    vectors = embedder.embed(_photos())
    assert vectors.dtype == np.float32 and vectors.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Distinct photos are not collapsed onto one vector.
    assert np.max(np.abs(vectors[0] - vectors[3])) > 1e-3
    assert embedder.embed([]).shape == (0, 32)


@pytest.mark.slow
def test_embeddings_are_deterministic_and_batch_independent(tiny_clip: str) -> None:
    photos = _photos()
    one_by_one = ClipEmbedder(tiny_clip, batch_size=1).embed(photos)
    all_at_once = ClipEmbedder(tiny_clip, batch_size=8).embed(photos)
    np.testing.assert_allclose(one_by_one, all_at_once, atol=1e-5)


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path: Path) -> None:
    from cropper.testing.tiny_clip import build_tiny_clip

    a = ClipEmbedder(build_tiny_clip(tmp_path / "a", seed=3, embed_dim=16))
    b = ClipEmbedder(build_tiny_clip(tmp_path / "b", seed=3, embed_dim=16))
    c = ClipEmbedder(build_tiny_clip(tmp_path / "c", seed=4, embed_dim=16))
    photo = _photos()[:1]
    assert a.dim == 16
    np.testing.assert_array_equal(a.embed(photo), b.embed(photo))
    assert not np.allclose(a.embed(photo), c.embed(photo))


@pytest.mark.slow
def test_preprocess_info_comes_from_the_checkpoint(tiny_clip: str) -> None:
    info = ClipEmbedder(tiny_clip).preprocess_info
    assert info["image_size"] == [32, 32]
    assert info["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert info["interpolation"] == "bicubic"
    json.dumps(info)  # it goes into the manifest


@pytest.mark.slow
def test_text_embeddings(tiny_clip: str) -> None:
    embedder = ClipEmbedder(tiny_clip)
    vectors = embedder.embed_text(["a dog on a beach", "a red square", "a dog on a beach"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


@pytest.mark.slow
def test_embed_refuses_non_images(tiny_clip: str) -> None:
    with pytest.raises(ConfigError, match="PIL images"):
        ClipEmbedder(tiny_clip).embed(["photo.jpg"])


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("ViT-Q-99:openai", ConfigError, "not an open_clip model"),
        ("ViT-B-32", ConfigError, "names no pretrained weights"),
        ("ViT-B-32:no_such_tag", ConfigError, "neither a pretrained tag"),
        ("local-dir:/no/such/folder", WeightsNotFoundError, "local-dir:/path"),
        ("", ConfigError, "empty"),
    ],
)
def test_bad_specs_say_what_to_do(spec: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        ClipEmbedder(spec)


def test_uncached_weights_offline_name_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # An empty cache and offline mode: nothing can be found, nothing is fetched.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError) as info:
        ClipEmbedder("RN50:openai")
    message = str(info.value)
    assert "\n" not in message
    assert "RN50:openai" in message and "timm/resnet50_clip.openai" in message
    assert "local-dir:/path" in message


def test_local_dir_without_weights_is_refused(tmp_path: Path) -> None:
    from cropper.testing.tiny_clip import tiny_clip_config

    (tmp_path / "open_clip_config.json").write_text(json.dumps(tiny_clip_config()))
    with pytest.raises(WeightsNotFoundError, match="weights"):
        ClipEmbedder(f"local-dir:{tmp_path}")


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("ViT-L-14:openai", ("ViT-L-14", "openai")),
        ("ViT-L/14:openai", ("ViT-L-14", "openai")),
        (" ViT-B-32:laion2b_s34b_b79k ", ("ViT-B-32", "laion2b_s34b_b79k")),
        ("ViT-B-32:/weights/clip.safetensors", ("ViT-B-32", "/weights/clip.safetensors")),
        ("hf-hub:timm/ViT-B-16-SigLIP", ("hf-hub:timm/ViT-B-16-SigLIP", None)),
        ("local-dir:/models/clip", ("local-dir:/models/clip", None)),
        ("ViT-B-32", ("ViT-B-32", None)),
        ("toy-2x2", ("toy-2x2", None)),
    ],
)
def test_split_spec(spec: str, parts: tuple) -> None:
    assert split_spec(spec) == parts


@pytest.mark.slow
def test_transform_then_embed_pixels_equals_embed(tiny_clip: str) -> None:
    import torch

    embedder = ClipEmbedder(tiny_clip, batch_size=2)
    assert (embedder.model_name, embedder.pretrained) == (tiny_clip, None)
    photos = [p.convert("RGB") for p in _photos()]
    pixels = torch.stack([embedder.transform(p) for p in photos])
    assert pixels.shape == (5, 3, 32, 32)
    np.testing.assert_allclose(embedder.embed_pixels(pixels), embedder.embed(photos), atol=1e-6)
    assert embedder.embed_pixels(pixels[:0]).shape == (0, 32)
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        embedder.embed_pixels(pixels[0])


# -- precision and forward passes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        ("cpu", "float32"),
        ("cuda", "float16"),
        ("cuda:1", "float16"),
        ("mps", "float32"),
        ("torch-cpu", "float32"),
        ("torch-cuda:0", "float16"),
    ],
)
def test_half_precision_follows_the_device(device: str, dtype: str) -> None:
    import torch

    from retrieval.embedder import compute_dtype

    if device.startswith("torch-"):
        device = torch.device(device.removeprefix("torch-"))
    assert compute_dtype(device) == dtype


class _StubTorch:
    """Records the contexts a forward pass enters, in place of torch."""

    float16 = "float16"

    def __init__(self) -> None:
        self.entered: list[tuple] = []

    def no_grad(self):
        return self._context(("no_grad",))

    def autocast(self, device_type: str, dtype: str):
        return self._context(("autocast", device_type, dtype))

    def _context(self, name: tuple):
        import contextlib

        @contextlib.contextmanager
        def context():
            self.entered.append(name)
            yield

        return context()


@pytest.mark.parametrize(
    ("device", "entered"),
    [("cpu", [("no_grad",)]), ("cuda:0", [("no_grad",), ("autocast", "cuda", "float16")])],
)
def test_a_forward_pass_autocasts_to_float16_only_on_cuda(device: str, entered: list) -> None:
    from types import SimpleNamespace

    from retrieval.embedder import forward_context

    stub = _StubTorch()
    with forward_context(SimpleNamespace(_torch=stub, device=device)):
        pass
    assert stub.entered == entered


@pytest.mark.slow
def test_on_the_cpu_the_embedder_computes_in_float32(tiny_clip: str) -> None:
    embedder = ClipEmbedder(tiny_clip, device="cpu")
    assert embedder.dtype == "float32" and "float32" in repr(embedder)
    assert next(embedder._model.parameters()).dtype.is_floating_point
    assert str(next(embedder._model.parameters()).dtype) == "torch.float32"


@pytest.mark.slow
def test_two_threads_never_run_forward_passes_at_once(tiny_clip: str) -> None:
    """The batch lanes take turns: one forward pass at a time, each with every core."""
    import threading
    import time

    import torch

    a, b = ClipEmbedder(tiny_clip, batch_size=1), ClipEmbedder(tiny_clip, batch_size=1)
    photos = [p.convert("RGB") for p in _photos()]
    alone = a.embed(photos)
    threads_before = torch.get_num_threads()
    running, most = [0], [0]
    count = threading.Lock()

    def watched(encode):
        def encode_image(pixels):
            with count:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.02)  # long enough for the other thread to try
            try:
                return encode(pixels)
            finally:
                with count:
                    running[0] -= 1

        return encode_image

    for embedder in (a, b):  # two embedders: the turn is the process's, not one model's
        embedder._model.encode_image = watched(embedder._model.encode_image)
    results: dict[str, np.ndarray] = {}
    lanes = [
        threading.Thread(target=lambda e=e, k=k: results.__setitem__(k, e.embed(photos)))
        for k, e in (("a", a), ("b", b))
    ]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()
    assert most[0] == 1  # 10 passes, never two at once
    np.testing.assert_allclose(results["a"], alone, atol=1e-6)
    np.testing.assert_allclose(results["b"], alone, atol=1e-6)
    assert torch.get_num_threads() == threads_before  # the process's pool is left alone
