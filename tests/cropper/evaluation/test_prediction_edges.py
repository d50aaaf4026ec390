"""Predictions and annotations at the edges: JSON nested too deeply, integers beyond a float.

A bad predictions line is skipped with ``file:line: why`` and the rest are measured; a
damaged annotation file is one line naming the dataset, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropper.core.errors import ExemplarIndexError
from cropper.evaluation.predictions import evaluate_boxes, evaluate_scores
from cropper.evaluation.truth import GroundTruth, TruthSet, load_truth

DEEP = "[" * 100_000
HUGE = "1" + "0" * 400  # a JSON integer no float can hold

#: Ten crops of a 200x100 photo, the first the best (rated 10, the others 9 down to 1).
CROPS = ((20.0, 10.0, 180.0, 90.0), *((10.0 * i, 0.0, 100.0 + 10 * i, 100.0) for i in range(9)))
MOS = tuple(float(10 - i) for i in range(10))


@pytest.fixture
def truths() -> TruthSet:
    return TruthSet(
        [GroundTruth(name, (), CROPS, scores=MOS) for name in ("a.jpg", "b.jpg")],
        "own crops",
        ranked=True,
    )


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD_SCORES = json.dumps({"image": "a.jpg", "scores": list(MOS)})
GOOD_BOX = json.dumps({"image": "a.jpg", "box": [20, 10, 180, 90], "size": [200, 100]})

SCORE_LINES = [
    (DEEP, "p.jsonl:2: not JSON that can be read (nested too deeply)"),
    ('{"image": "b.jpg", "scores": ' + DEEP, "p.jsonl:2: not JSON"),
    ('{"image": "b.jpg", "scores": [' + "1, " * 9 + HUGE + "]}", "p.jsonl:2: b.jpg: score 1000"),
]
BOX_LINES = [
    (DEEP, "p.jsonl:2: not JSON that can be read (nested too deeply)"),
    ('{"image": "b.jpg", "size": [200, 100], "box": [20, 10, 180, ' + HUGE + "]}",
     'p.jsonl:2: b.jpg: "box" [20, 10, 180, 1000'),
    ('{"image": "b.jpg", "size": [200, ' + HUGE + '], "box": [20, 10, 180, 90]}',
     'p.jsonl:2: b.jpg: "size" [200, 1000'),
]  # fmt: skip


@pytest.mark.parametrize(("line", "reason"), SCORE_LINES, ids=["deep", "deep-in", "huge"])
def test_a_scores_line_too_deep_or_too_large_is_skipped_and_the_rest_measured(
    truths, tmp_path, line, reason
):
    result = evaluate_scores(truths, _write(tmp_path / "p.jsonl", [GOOD_SCORES, line]))
    assert (result["photos"], result["skipped"]) == (1, 1) and result["srcc"] == pytest.approx(1.0)
    [got] = result["reasons"]
    assert got.startswith(reason) and "\n" not in got and len(got) < 300


@pytest.mark.parametrize(("line", "reason"), BOX_LINES, ids=["deep", "huge-box", "huge-size"])
def test_a_box_line_too_deep_or_too_large_is_skipped_and_the_rest_measured(
    truths, tmp_path, line, reason
):
    result = evaluate_boxes(truths, _write(tmp_path / "p.jsonl", [GOOD_BOX, line]))
    assert (result["photos"], result["skipped"]) == (1, 1) and result["iou"] == 1.0
    [got] = result["reasons"]
    assert got.startswith(reason) and "\n" not in got and len(got) < 300


# -- annotation files ----------------------------------------------------------------------

GOOD_FCDB = {"flickr_photo_id": 2, "url": "http://x/2.jpg", "crop": [1, 2, 30, 40]}
GOOD_GAICD = {"bbox": [[1, 2, 30, 40]], "score": [3.0]}


def _fcdb(root: Path, bad: str) -> None:
    root.mkdir()
    (root / "cropping_testing_set.json").write_text(f"[{bad}, {json.dumps(GOOD_FCDB)}]")


def _gaicd(root: Path, bad: str) -> None:
    root.mkdir()
    (root / "image_crop.json").write_text(f'{{"a.jpg": {bad}, "b.jpg": {json.dumps(GOOD_GAICD)}}}')


def _sacd(root: Path, bad: str) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "x_1.json").write_text(bad)
    good = {"best_box": [1, 2, 30, 40], "mask_box": "[1, 1, 2, 2]"}
    (root / "annotations" / "y_1.json").write_text(json.dumps(good))


DAMAGED_ENTRIES = [
    ("fcdb", _fcdb, f'{{"flickr_photo_id": 1, "crop": [1, 2, 3, {HUGE}]}}', "too large"),
    ("gaicd", _gaicd, f'{{"bbox": [[1, 2, 3, {HUGE}]], "score": [3]}}', "too large"),
    ("sacd", _sacd, '{"best_box": ' + DEEP, "recursion"),
    ("sacd", _sacd, f'{{"best_box": [1, 2, 3, {HUGE}], "mask_box": "[1, 1, 2, 2]"}}',
     "too large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dataset", "make", "text", "why"),
    DAMAGED_ENTRIES,
    ids=["fcdb-huge", "gaicd-huge", "sacd-deep", "sacd-huge"],
)
def test_a_damaged_annotation_is_skipped_with_its_reason_and_the_rest_load(
    tmp_path, caplog, dataset, make, text, why
):
    root = tmp_path / dataset
    make(root, text)
    truth = load_truth(dataset, root)
    assert len(truth) == 1  # the good one
    [warning] = [r.getMessage() for r in caplog.records if "skipped 1 of 2" in r.getMessage()]
    assert why in warning and "\n" not in warning


@pytest.mark.parametrize(("dataset", "name"), [("fcdb", "cropping_testing_set.json"),
                                               ("gaicd", "image_crop.json")])  # fmt: skip
def test_an_annotation_file_nested_too_deep_is_one_line_naming_it(tmp_path, dataset, name):
    root = tmp_path / dataset
    root.mkdir()
    (root / name).write_text(DEEP)
    with pytest.raises(ExemplarIndexError) as caught:
        load_truth(dataset, root)
    message = str(caught.value)
    assert name in message and "recursion" in message
    assert "\n" not in message and len(message) < 400
