"""The head trainer on planted embeddings, and ``cropper train-head`` end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cropper.agent.loop import Cropper
from cropper.cli.main import main
from cropper.core.errors import ConfigError
from cropper.data.crop_embeddings import RatedCrops
from cropper.data.metrics import score_keys
from cropper.data.training import (
    Normalisation,
    TrainConfig,
    evaluate,
    holdout,
    score_metrics,
    train_head,
)
from cropper.scoring.head import load_head, random_head, save_head
from cropper.scoring.scorer import Scorer
from cropper.testing.synthetic import synthetic_photo

DIM = 32
DIRECTION = np.random.default_rng(123).normal(size=DIM)
DIRECTION /= np.linalg.norm(DIRECTION)


def planted(photos: int, seed: int, crops: int = 16, noise: float = 0.3) -> RatedCrops:
    """Random unit embeddings whose MOS is their projection on DIRECTION, plus noise."""
    rng = np.random.default_rng(seed)
    vectors, mos = [], []
    for _ in range(photos):
        v = rng.normal(size=(crops, DIM))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vectors.append(v)
        mos.append(3 + 0.5 * np.sqrt(DIM) * (v @ DIRECTION) + noise * rng.normal(size=crops))
    return RatedCrops.from_groups(vectors, mos, [f"p{seed}-{i}.jpg" for i in range(photos)])


FAST = TrainConfig(epochs=6, lr=1e-2, hidden=32, photos_per_step=4, seed=0)


@pytest.fixture(scope="module")
def trained():
    train, val = planted(60, seed=1), planted(20, seed=2)
    return train, val, train_head(train, val, FAST, embedder="toy-clip")


class NamedEmbedder:
    """Only what Scorer checks: a name and a dimension."""

    def __init__(self, name: str, dim: int = DIM):
        self.name, self.dim = name, dim

    def embed(self, images):
        raise AssertionError("not called")


# -- the trainer --------------------------------------------------------------------------------


def test_trained_head_learns_the_planted_signal_a_random_head_does_not(trained):
    _, val, result = trained
    random_srcc = evaluate(random_head(DIM, seed=0), val)["srcc"]
    assert result.metrics["srcc"] > 0.7
    assert result.metrics["srcc"] > abs(random_srcc) + 0.4
    assert result.metrics["srcc"] > result.untrained["srcc"] + 0.4
    # The kept head is the best epoch's, and evaluating it again gives its numbers.
    assert evaluate(result.head, val) == pytest.approx(result.metrics)
    assert result.best_epoch == max(result.history, key=lambda h: h["srcc"])["epoch"]
    assert list(result.metrics) == score_keys()


def test_training_is_seeded():
    train, val = planted(12, seed=6), planted(4, seed=7)
    settings = {**FAST.__dict__, "epochs": 2}
    first, again = (train_head(train, val, TrainConfig(**settings)) for _ in range(2))
    other = train_head(train, val, TrainConfig(**{**settings, "seed": 1}))
    weights = [r.head.state_dict()["linear0.weight"].numpy() for r in (first, again, other)]
    np.testing.assert_array_equal(weights[0], weights[1])
    assert first.metrics == again.metrics
    assert not np.allclose(weights[0], weights[2])


def test_scores_map_the_training_mos_range_onto_0_1(trained):
    train, val, result = trained
    norm = result.normalisation
    assert norm.mos_min == pytest.approx(train.mos.min())
    assert norm.mos_max == pytest.approx(train.mos.max())
    raw = result.head.raw(val.vectors)
    expected = np.clip((norm.to_mos(raw) - norm.mos_min) / (norm.mos_max - norm.mos_min), 0, 1)
    np.testing.assert_allclose(result.head.score(val.vectors), expected, atol=1e-6)


def test_card_round_trips_and_scorer_checks_the_embedder(trained, tmp_path: Path):
    _, val, result = trained
    out = save_head(result.head, tmp_path / "h.safetensors", metadata=result.card({"x": 1}))
    card = json.loads(out.with_suffix(".json").read_text())
    meta = card["metadata"]
    assert meta["clip"] == "toy-clip" and card["config"]["embedder"] == "toy-clip"
    assert meta["normalisation"]["method"] == "zscore"
    assert meta["metrics"]["srcc"] == pytest.approx(result.metrics["srcc"], abs=1e-6)
    assert meta["data"]["x"] == 1 and meta["data"]["train_photos"] == 60
    assert meta["training"]["hidden"] == 32 and meta["training"]["best_epoch"] >= 1
    head = load_head(out)
    np.testing.assert_allclose(head.score(val.vectors), result.head.score(val.vectors))
    assert Scorer(NamedEmbedder("toy-clip"), head).head is head
    with pytest.raises(ConfigError, match="trained on 'toy-clip'"):
        Scorer(NamedEmbedder("other-clip"), head)


@pytest.mark.parametrize(
    ("photos", "fraction", "held"),
    [(10, 0.1, 1), (10, 0.25, 2), (3, 0.01, 1), (3, 0.99, 2), (1036, 0.1, 104)],
)
def test_holdout_splits_whole_photos(photos, fraction, held):
    keep, val = holdout(photos, fraction, seed=3)
    assert len(val) == held and len(keep) == photos - held
    assert sorted([*keep, *val]) == list(range(photos))
    np.testing.assert_array_equal(holdout(photos, fraction, seed=3)[1], val)


@pytest.mark.parametrize(("photos", "fraction"), [(1, 0.5), (10, 0.0), (10, 1.0), (10, -0.1)])
def test_holdout_refuses(photos, fraction):
    with pytest.raises(ConfigError):
        holdout(photos, fraction)


def test_subset_keeps_each_photos_rows():
    crops = RatedCrops.from_groups(
        [np.eye(4)[:2], np.eye(4)[2:3], np.eye(4)[3:]], [[1, 2], [3], [4]], ["a", "b", "c"]
    )
    part = crops.subset([2, 0])
    assert part.names == ("c", "a") and part.counts.tolist() == [1, 2]
    np.testing.assert_array_equal(part.mos, [4, 1, 2])
    np.testing.assert_array_equal(part.vectors[0], np.eye(4)[3])


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"hidden": 0},
        {"photos_per_step": 0},
        {"rank_weight": -1.0},
        {"patience": 0},
        {"seed": -1},
        {"epochs": 2.5},
    ],
)
def test_bad_training_settings_are_refused(change):
    with pytest.raises(ConfigError, match="bad training settings"):
        TrainConfig(**change)


def test_equal_mos_is_refused():
    with pytest.raises(ConfigError, match="nothing to learn"):
        Normalisation.fit(np.full(10, 3.0))


def test_validation_needs_photos_with_four_crops():
    crops = RatedCrops.from_groups([np.eye(3)], [[1, 2, 3]], ["a"])
    with pytest.raises(ConfigError, match="4 or more rated crops"):
        score_metrics(np.zeros(3), crops)


def test_squared_error_alone_also_learns():
    train, val = planted(30, seed=4), planted(10, seed=5)
    mse_only = train_head(train, val, TrainConfig(**{**FAST.__dict__, "rank_weight": 0.0}))
    assert mse_only.metrics["srcc"] > 0.6


# -- cropper train-head -------------------------------------------------------------------------


def rated_jsonl(folder: Path, photos: int = 6, scores: bool = True) -> Path:
    """Small synthetic photos with 6 crops each; the MOS favours larger crops."""
    lines = []
    for i in range(photos):
        synthetic_photo(i, size=(96, 72), discs=4).save(folder / f"p{i}.jpg")
        crops = [[s, s, 96 - s, 72 - s // 2] for s in (0, 4, 8, 12, 16, 20)]
        line = {"image": f"p{i}.jpg", "crops": crops}
        if scores:
            line["scores"] = [5.0 - 0.5 * k + 0.1 * i for k in range(len(crops))]
        lines.append(json.dumps(line))
    path = folder / "crops.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_cli(jsonl: Path, out: Path, clip: str, *extra: str) -> int:
    return main(
        [
            "train-head",
            "--dataset",
            "jsonl",
            "--root",
            str(jsonl),
            "--clip",
            clip,
            "--out",
            str(out),
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--val-fraction",
            "0.34",
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


@pytest.mark.slow
def test_train_head_command_end_to_end(tmp_path, tiny_clip, capsys, monkeypatch):
    from retrieval.embedder import ClipEmbedder

    calls = []
    embed_pixels = ClipEmbedder.embed_pixels

    def counting(self, pixels):
        calls.append(len(pixels))
        return embed_pixels(self, pixels)

    monkeypatch.setattr(ClipEmbedder, "embed_pixels", counting)
    jsonl = rated_jsonl(tmp_path)
    out = tmp_path / "heads" / "mine.safetensors"
    assert train_cli(jsonl, out, tiny_clip) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["card"] == str(out.with_suffix(".json"))
    assert {"srcc", "pcc", "acc5"} <= set(summary) and set(summary["metrics"]) == set(score_keys())
    assert summary["train_photos"] == 4 and summary["val_photos"] == 2
    assert "validation SRCC" in captured.err
    assert sum(calls) == 36  # 6 photos x 6 crops, each embedded once

    card = json.loads(out.with_suffix(".json").read_text())["metadata"]
    assert card["clip"] == tiny_clip and card["data"]["dataset"] == "jsonl"
    assert card["data"]["train_crops"] == 24 and card["training"]["epochs"] == 2
    assert set(card["metrics"]) == set(score_keys()) and "mean" in card["normalisation"]
    head = load_head(out)
    embedder = ClipEmbedder(tiny_clip)
    Scorer(embedder, head)  # the embedder it was trained on: accepted
    with pytest.raises(ConfigError, match="trained on"):
        Scorer(NamedEmbedder("ViT-B-32:openai", dim=head.dim), head)
    assert list((tmp_path / "heads" / "mine.cache").glob("jsonl-all-*.npy"))
    # Cropper(head=...) loads it too (the server URL is not contacted to build one).
    cropper = Cropper(vlm="http://127.0.0.1:9/v1", clip=tiny_clip, head=str(out), index=None)
    assert cropper.scorer.head.embedder == tiny_clip

    calls.clear()
    assert train_cli(jsonl, out, tiny_clip) == 0  # the same inputs: the cache, no embedding
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls == [] and again["embedded_crops"] == {"train": 0}
    assert again["srcc"] == pytest.approx(summary["srcc"])


@pytest.mark.slow
def test_unreadable_photo_is_skipped_and_the_rest_train(tmp_path, tiny_clip, capsys, caplog):
    jsonl = rated_jsonl(tmp_path, photos=7)
    data = (tmp_path / "p3.jpg").read_bytes()
    (tmp_path / "p3.jpg").write_bytes(data[: len(data) // 2])  # the header reads, the rest not
    out = tmp_path / "h.safetensors"
    with caplog.at_level(logging.WARNING):
        assert train_cli(jsonl, out, tiny_clip) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_photos"] + summary["val_photos"] == 6
    named = [r.getMessage() for r in caplog.records if "p3.jpg" in r.getMessage()]
    assert len(named) == 1 and "truncated" in named[0]
    card = json.loads(out.with_suffix(".json").read_text())["metadata"]
    assert card["data"]["skipped_photos"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/x.pt"], "name a .safetensors"),
        (["--dataset", "fcdb"], "needs each crop's MOS"),
        (["--dataset", "gaicd", "--split", "test"], "both 'test'"),
        (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
        (["--epochs", "0"], "bad training settings epochs=0"),
        (["--batch-size", "0"], "--batch-size must be 1 or more"),
        (["--device", "bogus"], "not a torch device"),
        (["--device", "cuda:99"], "CUDA devices"),
    ],
)
def test_bad_arguments_get_one_line(tmp_path, capsys, args, message):
    base = {"--dataset": "jsonl", "--root": str(tmp_path), "--out": f"{tmp_path}/h.safetensors"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value.format(tmp=tmp_path)
    argv = ["train-head", *[x for pair in base.items() for x in pair]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cropper: error:") and message in err[0]


@pytest.mark.slow
def test_dataset_without_scores_says_mos_is_needed(tmp_path, tiny_clip, capsys):
    jsonl = rated_jsonl(tmp_path, photos=3, scores=False)
    assert train_cli(jsonl, tmp_path / "h.safetensors", tiny_clip) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MOS" in err[0] and not (tmp_path / "h.safetensors").exists()
