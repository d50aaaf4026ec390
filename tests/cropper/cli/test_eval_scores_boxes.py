"""``cropper eval scores`` and ``cropper eval boxes`` as users run them, on the real annotations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropper.cli.main import main
from cropper.data.metrics import score_keys
from cropper.evaluation.predictions import COUNT_KEYS


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mos_lines(shared_data: Path) -> list[dict]:
    """A perfect prediction for every GAICD test photo: its MOS."""
    crops = json.loads((shared_data / "gaicd" / "image_crop.json").read_text())
    names = json.loads((shared_data / "gaicd" / "split.json").read_text())["test"]
    return [{"image": name, "scores": crops[name]["score"]} for name in names]


def _scores(shared_data: Path, predictions: Path, *extra: str) -> int:
    root = shared_data / "gaicd"
    return main(
        ["eval", "scores", "--dataset", "gaicd", "--root", str(root), "--split", "test"]
        + ["--predictions", str(predictions), *extra]
    )


def test_eval_scores_prints_the_issue_keys_last(shared_data, mos_lines, tmp_path, capsys):
    assert _scores(shared_data, _jsonl(tmp_path / "scores.jsonl", mos_lines)) == 0
    out, err = capsys.readouterr()
    result = _last_json(out)
    assert list(result) == score_keys() + list(COUNT_KEYS)
    expected = {f"{p}{k}_{n}" for p in ("acc", "wacc") for n in (5, 10) for k in (1, 2, 3, 4)}
    assert expected | {"acc5", "acc10", "wacc5", "wacc10", "srcc", "pcc"} <= set(result)
    assert all(result[key] == pytest.approx(1.0) for key in score_keys())
    assert (result["photos"], result["missing"], result["skipped"]) == (200, 0, 0)
    assert "200 photos measured" in err and "Acc@5" in err and "SRCC 1.000" in err


def test_eval_scores_skips_bad_lines_measures_the_rest(shared_data, mos_lines, tmp_path, capsys):
    lines = ["{broken", {"image": "nope.jpg", "scores": [1]}, *mos_lines[:10]]
    assert _scores(shared_data, _jsonl(tmp_path / "scores.jsonl", lines)) == 0
    out, err = capsys.readouterr()
    result = _last_json(out)
    assert (result["photos"], result["skipped"], result["missing"]) == (10, 2, 190)
    assert "cropper: skipped scores.jsonl:1: not JSON" in err
    assert "cropper: skipped scores.jsonl:2: 'nope.jpg' names no photo" in err
    assert "190 photos have no prediction" in err and "and 180 more" in err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "no such predictions file"),
        ([], "the file has no predictions"),
        (["{broken"], "scores.jsonl:1: not JSON"),
    ],
)
def test_eval_scores_errors_exit_2_with_one_line(shared_data, tmp_path, capsys, lines, message):
    path = tmp_path / "scores.jsonl"
    if lines is not None:
        _jsonl(path, lines)
    assert _scores(shared_data, path) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("cropper: error: ") and message in err
    assert err.count("\n") == 1


def test_eval_scores_refuses_fcdb(shared_data, tmp_path, capsys):
    path = _jsonl(tmp_path / "scores.jsonl", [{"image": "6931423716", "scores": [1]}])
    code = main(
        ["eval", "scores", "--dataset", "fcdb", "--root", str(shared_data / "fcdb")]
        + ["--predictions", str(path)]
    )
    assert code == 2 and "eval boxes" in capsys.readouterr().err


def test_eval_boxes_fcdb_with_sizes_in_the_lines(shared_data, tmp_path, capsys):
    entries = json.loads((shared_data / "fcdb" / "cropping_testing_set.json").read_text())
    lines = []
    for number, entry in enumerate(entries):
        x, y, w, h = entry["crop"]
        photo_id = entry["flickr_photo_id"]  # a number, or as a string, or the url's file name
        image = [photo_id, str(photo_id), Path(entry["url"]).name][number % 3]
        lines.append({"image": image, "box": [x, y, x + w, y + h], "size": [x + w, y + h]})
    path = _jsonl(tmp_path / "boxes.jsonl", lines)
    code = main(
        ["eval", "boxes", "--dataset", "fcdb", "--root", str(shared_data / "fcdb")]
        + ["--split", "test", "--predictions", str(path)]
    )
    assert code == 0
    out, err = capsys.readouterr()
    result = _last_json(out)
    assert list(result) == ["iou", "bde", *COUNT_KEYS]
    assert result["iou"] == pytest.approx(1.0) and result["bde"] == pytest.approx(0.0)
    assert (result["photos"], result["missing"], result["duplicates"]) == (345, 0, 0)
    assert "IoU 1.0000" in err


def test_eval_boxes_on_the_official_layout_photos(shared_data, tmp_path, capsys):
    layout = shared_data / "gaicd" / "official_layout"
    line = {"image": "test/265813.jpg", "box": [53, 39, 821, 900]}  # 10 px right of the best
    path = _jsonl(tmp_path / "boxes.jsonl", [line])
    code = main(
        ["eval", "boxes", "--dataset", "gaicd", "--root", str(layout), "--split", "test"]
        + ["--predictions", str(path)]
    )
    assert code == 0
    result = _last_json(capsys.readouterr().out)
    assert result["iou"] == pytest.approx(758 / 778) and result["missing"] == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["eval"],
        ["eval", "scores", "--dataset", "coco", "--root", ".", "--predictions", "p.jsonl"],
        ["eval", "boxes", "--dataset", "fcdb", "--root", "."],
    ],
)
def test_bad_command_lines_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err
