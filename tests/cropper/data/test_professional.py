"""The ``pro`` dataset: uncropped professional photos, each whole photo its own top crop."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.data.datasets import (
    PRO_SUBCROP_SCORE,
    PRO_WHOLE_SCORE,
    load_dataset,
    load_pro,
    read_annotations,
)
from retrieval.selection import select_crops

LOGGER = "cropper.data.datasets"


def _photo(path: Path, size: tuple[int, int] = (200, 100), shade: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 140, 255 - shade)).save(path)
    return path


def _sidecar(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))


def _warning(caplog: pytest.LogCaptureFixture) -> str:
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1, messages
    return messages[0]


def test_each_photo_is_its_own_top_crop_and_sidecars_add_sub_crops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _photo(tmp_path / "a.jpg")
    _photo(tmp_path / "b" / "in" / "b.png", (100, 100))  # subfolders too
    _photo(tmp_path / "c.jpg")
    _sidecar(tmp_path / "c.json", {"crops": [[0, 0, 100, 50], [0, 0, 200, 100]]})
    _photo(tmp_path / "d.jpg")
    _sidecar(
        tmp_path / "d.json", {"crops": [[50, 0, 150, 100]], "scores": [4.6], "subject": [100, 50]}
    )
    _photo(tmp_path / "e.jpg")
    _sidecar(tmp_path / "e.json", {"subject": [20, 40, 60, 80]})  # a subject, no sub-crops
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        a, b, c, d, e = load_pro(tmp_path)
    assert not caplog.records
    rows = [(Path(x.image).name, x.crops, x.scores, x.subjects) for x in (a, b, c, d, e)]
    assert rows == [
        ("a.jpg", (Box.whole(),), (PRO_WHOLE_SCORE,), None),
        ("b.png", (Box.whole(),), (PRO_WHOLE_SCORE,), None),
        # The sidecar's copy of the whole photo is not repeated; unscored sub-crops score 4.
        ("c.jpg", (Box.whole(), Box(0, 0, 0.5, 0.5)), (PRO_WHOLE_SCORE, PRO_SUBCROP_SCORE), None),
        ("d.jpg", (Box.whole(), Box(0.25, 0, 0.75, 1)), (5.0, 4.6), ((0.5, 0.5),) * 2),
        ("e.jpg", (Box.whole(),), (5.0,), ((0.2, 0.6),)),
    ]
    assert (a.size, b.size) == ((200, 100), (100, 100))
    assert Path(b.image).is_absolute() and Path(b.image).is_file()
    assert load_dataset("pro", tmp_path) == [a, b, c, d, e]


def test_unreadable_photos_and_malformed_sidecars_are_skipped_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _photo(tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_text("not a photo")
    bad = {
        "json": "{not json",
        "list": "[1, 2]",
        "crops": json.dumps({"crops": {"a": 1}}),
        "scores": json.dumps({"crops": [[0, 0, 9, 9]], "scores": [1, 2]}),
        "outside": json.dumps({"crops": [[0, 0, 900, 50]]}),
        "subject": json.dumps({"subject": [999, 5]}),
    }
    for name, text in bad.items():
        _photo(tmp_path / f"{name}.jpg")
        (tmp_path / f"{name}.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (good,) = load_pro(tmp_path)
    assert Path(good.image).name == "good.jpg" and good.crops == (Box.whole(),)
    message = _warning(caplog)
    assert f"pro at {tmp_path}: skipped 7 of 8 photos" in message
    assert "unreadable photo (1): broken.jpg (" in message
    assert "malformed annotation (6): " in message
    assert 'scores.json ("scores" must be a list of one number per crop (1 crops))' in message
    assert "outside.json (crop [0, 0, 900, 50] does not fit the 200x100 photo" in message


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        ("empty", ExemplarIndexError, "pro at .*: no photos found; expected uncropped photos"),
        ("missing", ExemplarIndexError, "pro: .* is not a folder"),
        ("unusable", ExemplarIndexError, "none of the 1 photos could be used; .*unreadable"),
        ("split", ConfigError, "pro has no splits, so no 'train'"),
        ("images", ConfigError, "pro takes no images folder"),
        ("annotations", ConfigError, "pro has no annotations apart from its photos"),
    ],
)
def test_refusals(tmp_path: Path, setup: str, error: type, match: str) -> None:
    root = tmp_path / "missing" if setup == "missing" else tmp_path
    if setup == "unusable":
        (tmp_path / "x.jpg").write_text("no")
    elif setup in ("split", "images", "annotations"):
        _photo(tmp_path / "a.jpg")
    with pytest.raises(error, match=match):
        if setup == "annotations":
            read_annotations("pro", root)
        else:
            load_dataset(
                "pro",
                root,
                "train" if setup == "split" else None,
                images=tmp_path if setup == "images" else None,
            )


# -- what the prompt shows of a professional exemplar, by task ---------------------------------

_WIDE = (300, 100)  # a 3:1 photo


@pytest.mark.parametrize(
    ("sub_crops", "task", "options", "first"),
    [
        # Free-form: the whole photo leads, by its top score; then the sub-crops.
        ([], "free", {}, Box.whole()),
        ([[0, 0, 100, 100]], "free", {}, Box.whole()),
        # Subject-aware, with or without a subject in the sidecar: the whole photo.
        ([], "subject", {"subject": (0.9, 0.9)}, Box.whole()),
        ([[0, 0, 100, 100]], "subject", {"subject": (0.1, 0.1)}, Box.whole()),
        # Aspect: the crop nearest the requested ratio; the whole photo stands for its own 3:1.
        ([], "aspect", {"ratio": 1.0}, Box.whole()),
        ([[0, 0, 100, 100]], "aspect", {"ratio": 3.0}, Box.whole()),
        ([[0, 0, 100, 100]], "aspect", {"ratio": 1.2}, Box(0, 0, 1 / 3, 1)),
    ],
)
def test_crops_chosen_for_each_task(
    tmp_path: Path, sub_crops: list, task: str, options: dict, first: Box
) -> None:
    _photo(tmp_path / "p.jpg", _WIDE)
    if sub_crops:
        _sidecar(tmp_path / "p.json", {"crops": sub_crops, "subject": [50, 50]})
    (exemplar,) = load_pro(tmp_path)
    chosen = select_crops(exemplar, task, **options)
    assert chosen[0].box == first
    if task == "aspect" and first == Box.whole():
        assert first.aspect(exemplar.size) == pytest.approx(3.0)
    if task == "free":
        assert [c.score for c in chosen] == [5.0, 4.0][: len(chosen)]


# -- a professional bank, built from the command line and retrieved from as the loop does ---------


@pytest.mark.slow
def test_cropper_index_build_pro_and_the_loop_retrieves_whole_photos(
    tiny_clip: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cropper.agent.exemplars import ExemplarSource
    from cropper.cli.main import main
    from cropper.core.tasks import Ratio, Subject
    from retrieval.embedder import ClipEmbedder
    from retrieval.index import ExemplarIndex

    photos = tmp_path / "pro"
    for i, size in enumerate([(160, 90), (90, 160), (120, 120)]):
        _photo(photos / f"p{i}.jpg", size, shade=60 * i)
    _sidecar(photos / "p2.json", {"crops": [[10, 10, 110, 110]]})
    bank = tmp_path / "bank"
    argv = ["index", "build", "--dataset", "pro", "--root", str(photos), "--out", str(bank)]
    assert main([*argv, "--clip", tiny_clip, "--no-progress", "--workers", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == 3 and summary["skipped"] == 0

    embedder = ClipEmbedder(tiny_clip)
    index = ExemplarIndex.load(bank, embedder=embedder)
    assert index.manifest["dataset"] == "pro"
    query = np.asarray(embedder.embed([Image.new("RGB", (100, 80), (60, 140, 195))]))[0]
    source = ExemplarSource(index)
    requests = {
        "free": {},
        "subject": {"subject": Subject((0.2, 0.8))},
        "aspect": {"ratio": Ratio(16 / 9, "16:9")},
    }
    for task, extra in requests.items():
        shown, _ = source.retrieve(query, task, count=3, crops_per_exemplar=5, side=64, **extra)
        assert len(shown) == 3, task
        # Each exemplar photo leads with its whole frame; subject-aware shows that one only.
        assert all(ex.crops[0].box == Box.whole() for ex in shown), task
        crops = sorted(len(ex.crops) for ex in shown)
        assert crops == ([1, 1, 1] if task == "subject" else [1, 1, 2]), task


def test_eval_reads_a_pro_folder_as_ground_truth(tmp_path: Path) -> None:
    from cropper.evaluation.truth import load_truth

    _photo(tmp_path / "a.jpg", (200, 100))
    _photo(tmp_path / "b.jpg", (120, 160))
    truths = load_truth("pro", tmp_path)
    assert len(truths) == 2 and truths.ranked
    for truth in truths:
        assert truth.crops[0] == (0, 0, *truth.size)
