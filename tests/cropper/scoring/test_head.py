from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cropper.core.errors import ConfigError
from cropper.scoring.head import (
    DEFAULT_HEAD,
    AestheticHead,
    HeadConfig,
    load_head,
    random_head,
    save_head,
)

LAION_DIMS = (768, 1024, 128, 64, 16, 1)
LAION_INDICES = (0, 2, 4, 6, 7)


def laion_state(seed: int = 0, in_dim: int = 768) -> dict[str, torch.Tensor]:
    """A plain state dict shaped like the LAION improved aesthetic predictor."""
    gen = torch.Generator().manual_seed(seed)
    dims = (in_dim, *LAION_DIMS[1:])
    state = {}
    for n, i in enumerate(LAION_INDICES):
        fan_in, fan_out = dims[n], dims[n + 1]
        state[f"layers.{i}.weight"] = torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5
        state[f"layers.{i}.bias"] = torch.randn(fan_out, generator=gen) * 0.1
    state["layers.7.bias"] = torch.tensor([5.5])  # centre the raw scores like the real head
    return state


def numpy_mlp(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The LAION forward pass by hand: linear layers, no activations (dropout off)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in LAION_INDICES:
        w = state[f"layers.{i}.weight"].double().numpy()
        b = state[f"layers.{i}.bias"].double().numpy()
        x = x @ w.T + b
    return x[:, 0]


def unit_rows(n: int, dim: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_default_head_is_the_laion_predictor_on_the_hub():
    assert DEFAULT_HEAD == "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"


@pytest.mark.slow
def test_laion_pth_matches_a_manual_forward_pass(tmp_path: Path):
    state = laion_state()
    path = tmp_path / "aesthetic-model.pth"
    torch.save(state, path)
    head = load_head(str(path))
    assert head.config == HeadConfig(LAION_DIMS, "none", (1.0, 10.0), "ViT-L-14:openai")
    assert head.dim == 768 and head.embedder == "ViT-L-14:openai"
    x = unit_rows(5, 768)
    raw = head.raw(x)
    np.testing.assert_allclose(raw, numpy_mlp(state, x.astype(np.float64)), rtol=1e-4, atol=1e-4)
    scores = head.score(x)
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores, np.clip((raw - 1) / 9, 0, 1), atol=1e-6)
    # Unnormalized inputs are normalized first, as the head was trained on unit vectors.
    np.testing.assert_allclose(head.raw(x * 3.0), raw, atol=1e-5)


def test_score_maps_output_range_and_clips():
    head = random_head(4)
    low, high = head.config.output_range
    x = unit_rows(64, 4)
    raw, scores = head.raw(x), head.score(x)
    expected = np.clip((raw - low) / (high - low), 0, 1)
    np.testing.assert_allclose(scores, expected)
    assert scores.min() >= 0 and scores.max() <= 1


def test_score_is_clipped_outside_the_range():
    config = HeadConfig(dims=(2, 1), output_range=(0.0, 1.0))
    head = AestheticHead(
        config, {"linear0.weight": torch.tensor([[10.0, 0.0]]), "linear0.bias": torch.zeros(1)}
    )
    scores = head.score(np.array([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]]))
    np.testing.assert_allclose(scores, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(head.raw(np.array([0.0, 1.0])), [0.0])  # 1-D input: one row


def test_random_head_is_deterministic():
    x = unit_rows(3, 8)
    np.testing.assert_array_equal(random_head(8, seed=3).raw(x), random_head(8, seed=3).raw(x))
    assert not np.allclose(random_head(8, seed=3).raw(x), random_head(8, seed=4).raw(x))


def test_safetensors_round_trip_with_card(tmp_path: Path):
    head = random_head(16, seed=7, embedder="toy:planted")
    path = save_head(head, tmp_path / "heads" / "x.safetensors", metadata={"srcc": 0.61})
    card_path = tmp_path / "heads" / "x.json"
    assert path == tmp_path / "heads" / "x.safetensors" and card_path.is_file()
    card = json.loads(card_path.read_text())
    assert card["config"] == head.config.to_dict()
    assert card["metadata"] == {"srcc": 0.61}
    loaded = load_head(str(path))
    assert loaded.config == head.config
    assert loaded.metadata == {"srcc": 0.61}
    x = unit_rows(4, 16)
    np.testing.assert_array_equal(loaded.raw(x), head.raw(x))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json", "x.safetensors"]


def test_card_beside_wins_and_header_is_the_fallback(tmp_path: Path):
    head = random_head(4, seed=1)
    path = save_head(head, tmp_path / "x.safetensors")
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["metadata"] = {"note": "edited"}
    card_path.write_text(json.dumps(card))
    assert load_head(path).metadata == {"note": "edited"}
    card_path.unlink()  # the copy in the safetensors header still describes the head
    assert load_head(path).metadata == {"random_seed": 1}


def test_safetensors_without_any_card_is_refused(tmp_path: Path):
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file(random_head(4).state_dict(), str(path))
    with pytest.raises(ConfigError, match=r"bare\.json"):
        load_head(path)


def test_safetensors_of_the_wrong_shape_names_expected_and_found(tmp_path: Path):
    path = save_head(random_head(8), tmp_path / "x.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    card["config"]["dims"] = [8, 16, 1]  # the weights are 8 -> 32 -> 1
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ConfigError) as info:
        load_head(path)
    message = str(info.value)
    assert str(path) in message and "(16, 8)" in message and "(32, 8)" in message


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.pop("layers.7.weight"), r"layers\.7\.weight"),
        (lambda s: s.update({"layers.2.weight": torch.zeros(64, 1024)}), r"\(128, 1024\)"),
        (lambda s: s.update({"layers.9.weight": torch.zeros(1)}), r"layers\.9\.weight"),
        (lambda s: s.update({"layers.0.bias": "not a tensor"}), "dict of tensors"),
    ],
)
def test_laion_pth_of_the_wrong_shape(tmp_path: Path, mutate, match: str):
    state = laion_state()
    mutate(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=match) as info:
        load_head(path)
    assert str(path) in str(info.value)


def test_laion_pth_of_another_width_has_no_known_embedder(tmp_path: Path):
    path = tmp_path / "b32.pth"
    torch.save(laion_state(in_dim=512), path)
    head = load_head(path)
    assert head.dim == 512 and head.embedder is None


def test_pth_with_a_pickled_object_is_refused(tmp_path: Path):
    state = dict(laion_state())
    state["args"] = argparse.Namespace(lr=1e-3)  # what old training scripts saved
    path = tmp_path / "with-args.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match="weights_only") as info:
        load_head(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pth_that_is_not_torch_is_a_config_error(tmp_path: Path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match=r"garbage\.pth"):
        load_head(path)


@pytest.mark.parametrize("name", ["head.onnx", "head"])
def test_unknown_suffix_is_refused(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="safetensors"):
        load_head(path)


def test_save_head_wants_safetensors_and_json_metadata(tmp_path: Path):
    with pytest.raises(ConfigError, match="safetensors"):
        save_head(random_head(4), tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="JSON"):
        save_head(random_head(4), tmp_path / "y.safetensors", metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dims": (8,)},
        {"dims": (8, 2)},
        {"dims": (8, 0, 1)},
        {"dims": (8, 1), "activation": "gelu"},
        {"dims": (8, 1), "output_range": (1.0, 1.0)},
    ],
)
def test_bad_head_config(kwargs):
    with pytest.raises(ConfigError):
        HeadConfig(**kwargs)


def test_head_config_from_card_dict():
    config = HeadConfig.from_dict({"dims": [4, 2, 1], "activation": "relu", "output_range": [0, 5]})
    assert config == HeadConfig((4, 2, 1), "relu", (0.0, 5.0), None)
    with pytest.raises(ConfigError, match="dims"):
        HeadConfig.from_dict({"dims": [4, 1], "depth": 3})


def test_embeddings_of_the_wrong_dim():
    with pytest.raises(ConfigError, match=r"\(N, 4\)"):
        random_head(4).score(np.zeros((2, 5)))
