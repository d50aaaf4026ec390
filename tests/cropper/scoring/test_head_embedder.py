"""A head runs only on the embedder it was trained on: open_clip and transformers, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cropper.agent import components
from cropper.cli.main import main
from cropper.core.errors import ConfigError
from cropper.scoring.head import load_head, random_head, save_head
from cropper.scoring.scorer import Scorer
from cropper.testing.synthetic import synthetic_photo
from cropper.testing.tiny_hf_vision import build_tiny_hf_vision
from retrieval.embedder import load_embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random ViT (32-d, as the tiny open_clip) as an ``hf:/folder`` spec."""
    return build_tiny_hf_vision(tmp_path_factory.mktemp("tiny_vit") / "vit", "vit")


@pytest.mark.parametrize(("trained_on", "runs_on"), [("vit", "clip"), ("clip", "vit")])
def test_a_head_refuses_another_embedder_of_the_same_width(
    tiny_vit: str, tiny_clip: str, trained_on: str, runs_on: str
) -> None:
    specs = {"vit": tiny_vit, "clip": tiny_clip}
    trained, other = load_embedder(specs[trained_on]), load_embedder(specs[runs_on])
    assert trained.dim == other.dim == 32  # only the name tells them apart
    head = random_head(32, embedder=trained.name)
    with pytest.raises(ConfigError, match="trained on") as info:
        Scorer(other, head)
    assert specs[trained_on] in str(info.value) and specs[runs_on] in str(info.value)
    assert "\n" not in str(info.value)

    scorer = Scorer(trained, head)  # its own embedder: accepted, and it scores
    photo = synthetic_photo(0, size=(96, 72), discs=4)
    embedding = trained.embed([photo])
    assert 0.0 <= float(head.score(embedding)[0]) <= 1.0
    assert scorer.head is head


def test_the_card_keeps_an_hf_embedder_through_save_and_load(tiny_vit: str, tmp_path: Path):
    path = save_head(random_head(32, embedder=tiny_vit), tmp_path / "head.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["config"]["embedder"] == tiny_vit
    assert load_head(path).embedder == tiny_vit
    path.with_suffix(".json").unlink()  # the card in the safetensors header says the same
    assert load_head(path).embedder == tiny_vit


def test_components_make_an_hf_embedder_and_no_default_head_for_it(
    tiny_vit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cropper.core.defaults import ENV_HEAD

    monkeypatch.delenv(ENV_HEAD, raising=False)
    embedder = components.make_embedder(tiny_vit)
    assert type(embedder).__name__ == "HFVisionEmbedder" and embedder.name == tiny_vit
    # The default head reads ViT-L/14 embeddings: left out for any other embedder.
    assert components.make_head(components.DEFAULT, embedder) is None
    head = random_head(32, embedder=tiny_vit)
    assert components.make_head(head, embedder) is head


def _rated_jsonl(folder: Path, photos: int = 6) -> Path:
    lines = []
    for i in range(photos):
        synthetic_photo(i, size=(96, 72), discs=4).save(folder / f"p{i}.jpg")
        crops = [[s, s, 96 - s, 72 - s // 2] for s in (0, 4, 8, 12, 16, 20)]
        scores = [5.0 - 0.5 * k + 0.1 * i for k in range(len(crops))]
        lines.append(json.dumps({"image": f"p{i}.jpg", "crops": crops, "scores": scores}))
    path = folder / "crops.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_head_on_an_hf_embedder_records_it_and_refuses_others(
    tiny_vit: str, tiny_clip: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cropper.agent.loop import Cropper

    out = tmp_path / "heads" / "vit.safetensors"
    argv = ["train-head", "--dataset", "jsonl", "--root", str(_rated_jsonl(tmp_path))]
    argv += ["--clip", tiny_vit, "--out", str(out), "--epochs", "2", "--hidden", "8"]
    argv += ["--val-fraction", "0.34", "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(summary["srcc"]) and summary["out"] == str(out)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["config"]["embedder"] == tiny_vit and card["config"]["dims"][0] == 32

    head = load_head(out)
    Scorer(load_embedder(tiny_vit), head)
    with pytest.raises(ConfigError, match="trained on"):
        Scorer(load_embedder(tiny_clip), head)
    # Cropper(head=...) takes it with its embedder (the server URL is not contacted) ...
    cropper = Cropper(vlm="http://127.0.0.1:9/v1", clip=tiny_vit, head=str(out), index=None)
    assert cropper.scorer.head.embedder == tiny_vit
    # ... and refuses it with another.
    with pytest.raises(ConfigError, match="trained on"):
        Cropper(vlm="http://127.0.0.1:9/v1", clip=tiny_clip, head=str(out), index=None)
