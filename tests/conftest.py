"""Shared fixtures: tiny random checkpoints built once a session, and the real data.

Every checkpoint is written to disk and loaded back through the same code path a
real one takes; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """``$CROPPER_SHARED_DATA``, else ``../shared/data`` beside the checkout.

    A git worktree made elsewhere (``git worktree add /tmp/x``) has no ``../shared`` of its
    own: the main checkout's is used, found through the worktree's ``.git`` file.
    """
    if os.environ.get("CROPPER_SHARED_DATA"):
        return Path(os.environ["CROPPER_SHARED_DATA"])
    beside = REPO.parent / "shared" / "data"
    dotgit = REPO / ".git"
    if beside.is_dir() or not dotgit.is_file():
        return beside
    text = dotgit.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("gitdir:"):
        return beside
    gitdir = (REPO / text.removeprefix("gitdir:").strip()).resolve()  # .git/worktrees/<name>
    common = gitdir / "commondir"
    main_git = (gitdir / common.read_text().strip()).resolve() if common.is_file() else None
    if main_git is None:
        return beside
    found = main_git.parent.parent / "shared" / "data"
    return found if found.is_dir() else beside


SHARED_DATA = _shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the real benchmark files; tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA} (set CROPPER_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gaicd_photo(shared_data: Path) -> Path:
    """One real GAICD photo from the official layout."""
    photos = sorted((shared_data / "gaicd" / "official_layout" / "images").rglob("*.jpg"))
    if not photos:
        pytest.skip("no GAICD photo under shared/data/gaicd/official_layout/images")
    return photos[0]


@pytest.fixture
def flms_root(shared_data: Path, tmp_path: Path) -> Path:
    """FLMS as released (``500_image_dataset.mat``, ``image/``): the real format sample.

    The sample is linked, not copied, under the release's file name; ``image/`` is empty
    (the sample's photos are not at hand): tests put photos of the right size there.
    """
    sample = shared_data / "flms" / "flms_format_sample.mat"
    if not sample.is_file():
        pytest.skip(f"no FLMS format sample at {sample}")
    root = tmp_path / "FLMS"
    (root / "image").mkdir(parents=True)
    (root / "500_image_dataset.mat").symlink_to(sample)
    return root


@pytest.fixture(scope="session")
def real_gaicd_photos() -> list[Path]:
    """The real GAICD photos of ../shared/data, or none: for tests that run either way."""
    return sorted((SHARED_DATA / "gaicd" / "official_layout" / "images").rglob("*.jpg"))


@pytest.fixture(scope="session")
def tiny_qwen25_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint folder (model, tokenizer, processor)."""
    from cropper.testing.tiny_vlm import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen2_5_vl"), family="qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-VL checkpoint folder (model, tokenizer, processor)."""
    from cropper.testing.tiny_vlm import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen3_vl"), family="qwen3_vl")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random open_clip model saved to disk; returns its ``local-dir:`` spec."""
    from cropper.testing.tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
