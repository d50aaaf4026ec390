"""The real LAION aesthetic heads on real CLIP embeddings: predictor v1 and the improved one.

``shared/data/laion_aesthetic`` holds the published head files and, for ViT-B/32 and
ViT-L/14, one real CLIP image embedding per LAION rating level 0-9. A head read right scores
the ten levels of its own CLIP in increasing order; the raw values below were measured with
plain torch. Nothing is downloaded: the default-head tests stub the fetchers with the files.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cropper.agent import components
from cropper.core import defaults
from cropper.core import weights as weights_module
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.scoring import head as head_module
from cropper.scoring.head import load_head
from cropper.scoring.scorer import Scorer, Weights

B32, B16, L14 = "ViT-B-32:openai", "ViT-B-16:openai", "ViT-L-14:openai"
IMPROVED = "sac+logos+ava1-l14-linearMSE.pth"
V1_URL = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/"

# file, the CLIP it reads, its width, the rating embeddings of that CLIP (B/16 has none).
HEADS = [
    ("sa_0_4_vit_b_32_linear.pth", B32, 512, "vit_b_32_embeddings"),
    ("sa_0_4_vit_b_16_linear.pth", B16, 512, None),
    ("sa_0_4_vit_l_14_linear.pth", L14, 768, "vit_l_14_embeddings"),
    (IMPROVED, L14, 768, "vit_l_14_embeddings"),
]
RATED = [h for h in HEADS if h[3] is not None]
# Raw outputs on rating levels 0 and 9, measured with plain torch.
RAW_ENDS = {
    "sa_0_4_vit_b_32_linear.pth": (-1.47, 11.01),
    "sa_0_4_vit_l_14_linear.pth": (-2.46, 11.30),
    IMPROVED: (1.66, 5.75),
}
SHA256 = {
    "sa_0_4_vit_b_32_linear.pth": (
        "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f"
    ),
    "sa_0_4_vit_b_16_linear.pth": (
        "8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0"
    ),
    "sa_0_4_vit_l_14_linear.pth": (
        "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba"
    ),
}
HF_SPELLING = {
    B32: "hf:openai/clip-vit-base-patch32",
    B16: "hf:openai/clip-vit-base-patch16",
    L14: "hf:openai/clip-vit-large-patch14",
}


@pytest.fixture(scope="module")
def laion(shared_data: Path) -> Path:
    """shared/data/laion_aesthetic, the real head files and embeddings; skip without it."""
    folder = shared_data / "laion_aesthetic"
    missing = [n for n in [*SHA256, IMPROVED] if not (folder / n).is_file()]
    if missing:
        pytest.skip(f"LAION aesthetic heads not found in {folder}: {', '.join(missing)}")
    return folder


def rating_embeddings(folder: Path) -> np.ndarray:
    """``(10, dim)``: the real CLIP embedding of rating level 0, 1, ..., 9."""
    return np.concatenate([np.load(folder / f"rating{i}.npy") for i in range(10)]).astype(
        np.float32
    )


def laion_range(raw: np.ndarray) -> np.ndarray:
    """LAION's 1-10 rating scale onto [0, 1]: how both kinds of head score."""
    return np.clip((raw - 1.0) / 9.0, 0.0, 1.0)


class StandInClip:
    """A CLIP by name: embeds stripe ``i`` of :func:`striped_photo` as the given ``rows[i]``."""

    def __init__(self, name: str, rows: np.ndarray):
        self.name, self.rows, self.dim = name, rows, rows.shape[1]

    def embed(self, images) -> np.ndarray:
        levels = [round((np.asarray(im, dtype=np.float64).mean() - 10) / 20) for im in images]
        return self.rows[levels]


def striped_photo() -> Image.Image:
    """Ten vertical stripes, 8 px each, of grey 10, 30, ..., 190: stripe ``i`` is level ``i``."""
    pixels = np.repeat(np.repeat(10 + 20 * np.arange(10, dtype=np.uint8), 8)[None], 8, axis=0)
    return Image.fromarray(pixels).convert("RGB")


def stripe(i: int) -> Box:
    return Box(i / 10, 0.0, (i + 1) / 10, 1.0)


# -- loading ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "clip", "dim", "_"), HEADS)
def test_each_head_loads_knowing_its_clip(laion: Path, name: str, clip: str, dim: int, _):
    head = load_head(laion / name)
    assert (head.dim, head.embedder) == (dim, clip)
    # One scale for every LAION head: a rating of 1 scores 0, a rating of 10 scores 1.
    assert head.config.output_range == (1.0, 10.0)


@pytest.mark.parametrize(("name", "clip", "dim", "folder"), RATED)
def test_each_head_ranks_its_own_clips_rating_levels(
    laion: Path, name: str, clip: str, dim: int, folder: str
):
    raw = load_head(laion / name).raw(rating_embeddings(laion / folder))
    assert np.all(np.diff(raw) > 0), raw  # strictly increasing: Spearman 1.0
    assert raw[[0, -1]] == pytest.approx(RAW_ENDS[name], abs=0.01)


@pytest.mark.parametrize("name", ["sa_0_4_vit_b_32_linear.pth", "sa_0_4_vit_l_14_linear.pth"])
def test_a_v1_head_is_the_plain_torch_linear_layer(laion: Path, name: str):
    folder = {512: "vit_b_32_embeddings", 768: "vit_l_14_embeddings"}
    state = torch.load(laion / name, map_location="cpu", weights_only=True)
    x = torch.from_numpy(rating_embeddings(laion / folder[state["weight"].shape[1]]))
    expected = torch.nn.functional.linear(x, state["weight"], state["bias"])[:, 0].numpy()
    head = load_head(laion / name)
    assert head.raw(x.numpy()) == pytest.approx(expected, abs=1e-5)
    assert head.score(x.numpy()) == pytest.approx(laion_range(expected), abs=1e-6)


def test_the_sha256_pins_are_the_published_files(laion: Path):
    pins = {name: (digest, clip) for digest, (name, clip) in head_module.LAION_V1_HEADS.items()}
    assert {name: digest for name, (digest, _) in pins.items()} == SHA256
    for name, digest in SHA256.items():
        assert hashlib.sha256((laion / name).read_bytes()).hexdigest() == digest
    for clip in (B32, B16):  # the default URLs pin the same files
        url, _, fragment = defaults.DEFAULT_HEADS[clip].partition("#sha256=")
        assert pins[url.rsplit("/", 1)[1]] == (fragment, clip)


@pytest.mark.parametrize(
    ("file_name", "dim", "expected"),
    [
        ("my_head.pth", 512, None),  # B/32 or B/16? cannot tell
        ("retrained-vit-b-16.pth", 512, B16),
        ("sa_0_4_vit_b_32_linear.pth", 512, B32),  # re-saved: another hash, the same name
        ("vit_b_32_but_wider.pth", 768, L14),  # the name lies; 768-d is ViT-L/14
        ("my_head.pth", 768, L14),
    ],
)
def test_an_unpublished_v1_head_goes_by_its_name_then_its_width(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, file_name: str, dim: int, expected
):
    path = tmp_path / file_name
    torch.save({"weight": torch.randn(1, dim), "bias": torch.zeros(1)}, path)
    with caplog.at_level(logging.WARNING, logger="cropper.scoring.head"):
        head = load_head(path)
    assert (head.dim, head.embedder) == (dim, expected)
    unchecked = [r.getMessage() for r in caplog.records if "cannot be checked" in r.getMessage()]
    assert len(unchecked) == (expected is None)


def test_a_misshapen_v1_head_is_refused(tmp_path: Path):
    path = tmp_path / "two_outputs.pth"
    torch.save({"weight": torch.zeros(2, 512), "bias": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match=r"v1 .*weight \(2, 512\)") as info:
        load_head(path)
    assert str(path) in str(info.value)


# -- through the scorer ----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["open_clip", "transformers"])
@pytest.mark.parametrize(("name", "clip", "dim", "folder"), RATED)
def test_the_scorer_ranks_crops_as_the_ratings(
    laion: Path, name: str, clip: str, dim: int, folder: str, spelling: str
):
    rows = rating_embeddings(laion / folder)
    embedder = StandInClip(clip if spelling == "open_clip" else HF_SPELLING[clip], rows)
    head = load_head(laion / name)
    scorer = Scorer(embedder, head, {"free": Weights(aesthetic=1)})
    order = [3, 9, 0, 6, 1, 8, 4, 2, 7, 5]  # the crops are not given in rating order
    scores = scorer.score(striped_photo(), [stripe(i) for i in order], "free")
    by_level = np.empty(10)
    by_level[order] = [s.total for s in scores]
    raw = head.raw(rows)
    assert by_level == pytest.approx(laion_range(raw), abs=1e-6)
    # Increasing with the rating; strictly wherever the raw rating lies inside LAION's 1-10.
    steps = np.diff(by_level)
    inside = (raw[:-1] > 1) & (raw[1:] < 10)
    assert np.all(steps >= 0) and np.all(steps[inside] > 0), by_level
    best = {order[j] for j, s in enumerate(scores) if s.total == max(x.total for x in scores)}
    assert 9 in best and all(raw[level] >= 10 for level in best - {9})


@pytest.mark.parametrize(
    ("name", "other", "dim"),
    [
        ("sa_0_4_vit_b_32_linear.pth", L14, 768),
        (IMPROVED, B32, 512),
        ("sa_0_4_vit_b_32_linear.pth", B16, 512),  # same width: only the file tells them apart
        ("sa_0_4_vit_b_16_linear.pth", HF_SPELLING[B32], 512),
    ],
)
def test_a_head_on_another_clip_is_refused_naming_both(
    laion: Path, name: str, other: str, dim: int
):
    head = load_head(laion / name)
    with pytest.raises(ConfigError, match="trained on") as info:
        Scorer(StandInClip(other, np.eye(10, dim, dtype=np.float32)), head)
    message = str(info.value)
    assert head.embedder in message and other in message and "\n" not in message
    assert f"--clip {head.embedder}" in message and "--head" in message


# -- the default head follows the CLIP ---------------------------------------------------------


@pytest.fixture
def fetches(laion: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stub the URL and Hub fetchers with the shared files; record what was asked for."""
    asked: list[str] = []

    def fetch_url(url: str, sha256: str, **_) -> Path:
        asked.append(f"{url}#sha256={sha256}")
        path = laion / url.rsplit("/", 1)[1]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
        return path

    def resolve_hf_hub(spec: str) -> Path:
        asked.append(spec)
        return laion / IMPROVED  # what trl-lib/ddpo-aesthetic-predictor publishes

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(weights_module, "fetch_url", fetch_url)
    monkeypatch.setattr(weights_module, "_resolve_hf_hub", resolve_hf_hub)
    monkeypatch.setattr(weights_module, "_download", no_network)
    monkeypatch.delenv(defaults.ENV_HEAD, raising=False)
    return asked


@pytest.mark.parametrize(
    ("clip", "spec", "dims"),
    [
        (B32, f"{V1_URL}sa_0_4_vit_b_32_linear.pth#sha256={SHA256['sa_0_4_vit_b_32_linear.pth']}",
         (512, 1)),
        (B16, f"{V1_URL}sa_0_4_vit_b_16_linear.pth#sha256={SHA256['sa_0_4_vit_b_16_linear.pth']}",
         (512, 1)),
        (L14, "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
         (768, 1024, 128, 64, 16, 1)),
    ],
)  # fmt: skip
@pytest.mark.parametrize("spelling", ["open_clip", "transformers"])
def test_the_default_head_follows_the_clip(
    fetches: list[str], clip: str, spec: str, dims: tuple[int, ...], spelling: str
):
    assert defaults.DEFAULT_HEADS[clip] == spec
    name = clip if spelling == "open_clip" else HF_SPELLING[clip]
    embedder = StandInClip(name, np.eye(10, dims[0], dtype=np.float32))
    head = components.make_head(components.DEFAULT, embedder)
    assert fetches == [spec]
    assert head is not None and head.config.dims == dims and head.embedder == clip
    assert Scorer(embedder, head).head is head  # and the scorer takes it


def test_the_l14_default_is_still_the_improved_head():
    assert defaults.DEFAULT_HEAD == "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
    assert defaults.DEFAULT_HEADS[defaults.DEFAULT_CLIP] == defaults.DEFAULT_HEAD


def test_another_clip_gets_no_default_head_and_fetches_nothing(fetches: list[str]):
    embedder = StandInClip("ViT-B-32:laion2b_s34b_b79k", np.eye(10, 512, dtype=np.float32))
    assert components.make_head(components.DEFAULT, embedder) is None
    assert fetches == []
