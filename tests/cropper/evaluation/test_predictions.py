"""Measuring predictions against the real GAICD and FCDB annotations, and bad prediction files."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from cropper.core.errors import ConfigError
from cropper.data.metrics import score_keys
from cropper.evaluation.predictions import evaluate_boxes, evaluate_scores
from cropper.evaluation.truth import GroundTruth, TruthSet, load_truth


def _jsonl(path: Path, lines: list) -> Path:
    """Objects as JSON lines; strings are written as they are (malformed lines)."""
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


# -- scores on the real GAICD test split --------------------------------------------------


def test_predicting_the_mos_scores_every_metric_1_over_all_200_photos(gaicd_test, tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"image": t.name, "scores": t.scores} for t in gaicd_test])
    result = evaluate_scores(gaicd_test, path)
    assert list(result)[: len(score_keys())] == score_keys()
    assert all(result[key] == pytest.approx(1.0) for key in score_keys())
    assert (result["photos"], result["missing"], result["skipped"]) == (200, 0, 0)
    assert result["reasons"] == [] and result["missing_names"] == []


def test_reversed_mos_is_srcc_minus_1_and_ranks_worst_first(gaicd_test, tmp_path):
    lines = [{"image": t.name, "scores": [-s for s in t.scores]} for t in gaicd_test]
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert result["srcc"] == pytest.approx(-1.0) and result["pcc"] == pytest.approx(-1.0)
    assert result["acc5"] < 0.05 and result["photos"] == 200


def test_random_scores_land_between(gaicd_test, tmp_path):
    rng = random.Random(0)
    lines = [
        {"image": f"test/{t.name}", "scores": [rng.random() for _ in t.scores]} for t in gaicd_test
    ]
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert -0.2 < result["srcc"] < 0.2 and -0.2 < result["pcc"] < 0.2
    assert 0.0 < result["acc5"] < 0.5 and 0.0 < result["wacc10"] < result["acc10"] < 1.0
    assert result["photos"] == 200


def test_photos_without_a_prediction_are_counted_and_named(gaicd_test, tmp_path):
    lines = [{"image": t.name, "scores": t.scores} for t in gaicd_test.truths[:150]]
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert (result["photos"], result["missing"]) == (150, 50)
    assert result["missing_names"][0] == gaicd_test.truths[150].name
    assert len(result["missing_names"]) == 10 and result["acc5"] == 1.0


# -- scores: bad lines are skipped, each with its reason -----------------------------------


@pytest.fixture(scope="module")
def one(gaicd_test):
    """A photo of the test split and its MOS, as a valid first line."""
    truth = gaicd_test.find("265813.jpg")
    return truth, {"image": truth.name, "scores": list(truth.scores)}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "p.jsonl:2: not JSON"),
        ('["a list"]', 'p.jsonl:2: not an object with an "image" name'),
        ('{"scores": [1, 2]}', 'p.jsonl:2: not an object with an "image" name'),
        ('{"image": true, "scores": [1]}', 'p.jsonl:2: not an object with an "image" name'),
        ('{"image": 7, "scores": [1]}', "p.jsonl:2: '7' names no photo"),
        ('{"image": "nope.jpg", "scores": [1]}', "p.jsonl:2: 'nope.jpg' names no photo"),
        ('{"image": "297406.jpg", "scores": [1, 2, 3]}', "3 scores for its"),
        ('{"image": "297406.jpg"}', 'no "scores" list'),
        ('{"image": "297406.jpg", "scores": "high"}', 'no "scores" list'),
    ],
)
def test_a_bad_line_is_skipped_with_file_line_and_the_rest_measured(
    gaicd_test, one, tmp_path, line, reason
):
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", [one[1], line]))
    assert (result["photos"], result["skipped"]) == (1, 1) and result["acc5"] == 1.0
    [got] = result["reasons"]
    assert reason in got and "\n" not in got


@pytest.mark.parametrize("bad", [math.nan, math.inf, "4.0", True, None])
def test_a_score_that_is_not_a_finite_number_skips_the_photo(gaicd_test, one, tmp_path, bad):
    truth = gaicd_test.find("297406")
    scores = [*truth.scores[:-1], bad]
    lines = [one[1], json.dumps({"image": truth.name, "scores": scores})]  # NaN as JSON's NaN
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert (result["photos"], result["skipped"]) == (1, 1)
    assert "p.jsonl:2: 297406.jpg: score" in result["reasons"][0]
    assert "is not a finite number" in result["reasons"][0]


def test_a_photo_predicted_twice_is_measured_by_its_last_line(gaicd_test, one, tmp_path):
    truth, good = one
    worst = {"image": "test/265813.jpg", "scores": [-s for s in truth.scores]}
    lines = [worst, {"image": "297406", "scores": gaicd_test.find("297406").scores}, good]
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert (result["photos"], result["duplicates"], result["skipped"]) == (2, 1, 0)
    assert result["srcc"] == pytest.approx(1.0)
    assert result["reasons"] == [
        "p.jsonl:1: 265813.jpg is predicted again on line 3; the last line counts"
    ]


def test_blank_and_non_utf8_lines(gaicd_test, one, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(one[1]).encode() + b"\n\n   \n\xff\xfe{}\n")
    result = evaluate_scores(gaicd_test, path)
    assert (result["photos"], result["skipped"]) == (1, 1)
    assert result["reasons"] == ["p.jsonl:4: not UTF-8 text"]


def test_many_problems_are_counted_and_the_first_ten_named(gaicd_test, one, tmp_path):
    lines = [one[1]] + [{"image": f"gone{i}.jpg", "scores": [1]} for i in range(25)]
    result = evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert result["skipped"] == 25 and len(result["reasons"]) == 10


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([], "no photo of gaicd .* could be measured .*the file has no predictions"),
        (["{oops", "{}"], r"\(2 lines skipped\): p\.jsonl:1: not JSON"),
        ([{"image": "x.jpg", "scores": [1]}], "'x.jpg' names no photo of the split"),
        ([{"image": "265813.jpg", "scores": [1, 2]}], "2 scores for its 90 annotated crops"),
    ],
)
def test_nothing_measurable_is_a_one_line_config_error(gaicd_test, tmp_path, lines, match):
    with pytest.raises(ConfigError, match=match) as caught:
        evaluate_scores(gaicd_test, _jsonl(tmp_path / "p.jsonl", lines))
    assert "\n" not in str(caught.value) and "p.jsonl" in str(caught.value)


def test_a_missing_or_unreadable_predictions_file_is_a_one_line_error(gaicd_test, tmp_path):
    with pytest.raises(ConfigError, match="gone.jsonl: no such predictions file") as caught:
        evaluate_scores(gaicd_test, tmp_path / "gone.jsonl")
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read the predictions"):
        evaluate_scores(gaicd_test, tmp_path)  # a folder


def test_datasets_without_ratings_refuse_scores(shared_data, tmp_path):
    fcdb = load_truth("fcdb", shared_data / "fcdb", "test")
    with pytest.raises(ConfigError, match="no ratings to rank.*eval boxes"):
        evaluate_scores(fcdb, _jsonl(tmp_path / "p.jsonl", []))


# -- boxes ---------------------------------------------------------------------------------


def _top_crop(txt: Path) -> list[float]:
    """The highest-MOS crop of an official annotation file, read independently."""
    rows = [[float(v) for v in line.split()] for line in txt.read_text().splitlines() if line]
    y1, x1, y2, x2, _ = max(rows, key=lambda row: row[4])
    return [x1, y1, x2, y2]


def test_official_layout_top_crops_score_iou_1_and_bde_0(layout, tmp_path):
    truths = load_truth("gaicd", layout)
    lines = [
        {
            "image": t.name,
            "box": _top_crop(layout / "annotations" / Path(t.name).with_suffix(".txt")),
        }
        for t in truths
    ]
    result = evaluate_boxes(truths, _jsonl(tmp_path / "b.jsonl", lines))
    assert result["iou"] == pytest.approx(1.0) and result["bde"] == pytest.approx(0.0)
    assert (result["photos"], result["missing"], result["skipped"]) == (3, 0, 0)


# 265813.jpg is 1024x939; its one top-MOS crop is (43, 39, 811, 900): 768 x 861.
@pytest.mark.parametrize(
    ("box", "iou", "bde"),
    [
        ([53, 39, 821, 900], 758 / 778, (10 / 1024 + 10 / 1024) / 4),
        ([43, 39, 811, 800], 761 / 861, (100 / 939) / 4),
        # past the left and bottom edges: clipped to (0, 39, 811, 939) first
        ([-50, 39, 811, 1039], (768 * 861) / (811 * 900), (43 / 1024 + 39 / 939) / 4),
        ([0, 0, 1024, 939], (768 * 861) / (1024 * 939), ((43 + 213) / 1024 + 78 / 939) / 4),
    ],
)
def test_a_moved_box_scores_the_hand_computed_iou_and_bde(layout, tmp_path, box, iou, bde):
    truths = load_truth("gaicd", layout, "test")
    lines = [{"image": "265813.jpg", "box": box}]
    result = evaluate_boxes(truths, _jsonl(tmp_path / "b.jsonl", lines))
    assert result["iou"] == pytest.approx(iou) and result["bde"] == pytest.approx(bde)
    assert (result["photos"], result["missing"]) == (1, 1)


def test_json_form_boxes_use_the_size_when_the_photo_is_absent(gaicd_test, layout, tmp_path):
    top = _top_crop(layout / "annotations" / "test" / "265813.txt")
    doubled = [2 * v for v in top]  # the original photo at twice the dataset's 1024x939
    lines = [
        {"image": "265813.jpg", "box": doubled, "size": [2048, 1878]},
        {"image": "297406.jpg", "box": [0, 0, 100, 100]},  # no photo here, no size
    ]
    result = evaluate_boxes(gaicd_test, _jsonl(tmp_path / "b.jsonl", lines))
    assert result["iou"] == pytest.approx(1.0) and result["bde"] == pytest.approx(0.0)
    # a photo whose line is skipped is not missing: it is counted among the skipped
    assert (result["photos"], result["skipped"], result["missing"]) == (1, 1, 198)
    [reason] = result["reasons"]
    assert reason.startswith("b.jsonl:2: 297406.jpg: no photo found under")
    assert 'no "size": [w, h] in the line' in reason


def test_photos_found_under_images_give_the_size(gaicd_test, layout, tmp_path):
    top = _top_crop(layout / "annotations" / "test" / "297406.txt")
    path = _jsonl(tmp_path / "b.jsonl", [{"image": "297406.jpg", "box": top}])
    result = evaluate_boxes(gaicd_test, path, images=layout / "images")
    assert result["iou"] == pytest.approx(1.0) and result["photos"] == 1
    wrong = _jsonl(tmp_path / "w.jsonl", [{"image": "297406.jpg", "box": top, "size": [10, 10]}])
    with pytest.raises(ConfigError, match=r"differs from its photo's 1024x744"):
        evaluate_boxes(gaicd_test, wrong, images=layout / "images")


def test_fcdb_ground_truth_with_sizes_scores_iou_1(shared_data, tmp_path):
    truths = load_truth("fcdb", shared_data / "fcdb", "test")
    entries = json.loads((shared_data / "fcdb" / "cropping_testing_set.json").read_text())
    lines = []
    for entry in entries:
        x, y, w, h = entry["crop"]
        size = [x + w + 7, y + h + 3]
        lines.append(
            {"image": entry["url"].rsplit("/", 1)[-1], "box": [x, y, x + w, y + h], "size": size}
        )
    lines[5] = {"image": str(entries[5]["flickr_photo_id"]), "box": lines[5]["box"]}
    result = evaluate_boxes(truths, _jsonl(tmp_path / "b.jsonl", lines))
    assert result["iou"] == pytest.approx(1.0) and result["bde"] == pytest.approx(0.0)
    assert (result["photos"], result["skipped"], result["missing"]) == (344, 1, 0)
    assert 'no "size": [w, h] in the line' in result["reasons"][0]
    assert result["reasons"][0].startswith("b.jsonl:6: ")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"box": [10, 10, 50]}, "is not [left, top, right, bottom]"),
        ({"box": [10, 10, 50, "60"]}, "is not [left, top, right, bottom]"),
        ({"box": [10, 10, 50, math.nan]}, "is not [left, top, right, bottom]"),
        ({"box": [10, 10, 50, True]}, "is not [left, top, right, bottom]"),
        ({"size": [200, 100]}, '"box" None is not'),
        ({"box": [50, 10, 10, 60]}, "empty or inverted"),
        ({"box": [10, 60, 50, 60]}, "empty or inverted"),
        ({"box": [300, 10, 400, 60]}, "lies outside the 200x100 photo"),
        ({"box": [-90, -50, 0, 60]}, "lies outside the 200x100 photo"),
        ({"box": [10, 10, 50, 60], "size": [200]}, "is not [width, height]"),
        ({"box": [10, 10, 50, 60], "size": [200.5, 100]}, "is not [width, height]"),
        ({"box": [10, 10, 50, 60], "size": [0, 100]}, "is not [width, height]"),
        ({"box": [10, 10, 50, 60], "size": [100, 50]}, "is the photo's size right?"),
    ],
)
def test_a_bad_box_line_is_skipped_with_its_reason(tmp_path, line, reason):
    truths = TruthSet(
        [GroundTruth(name, (), ((20.0, 10.0, 180.0, 90.0),)) for name in ("a.jpg", "b.jpg")],
        "own crops",
        ranked=False,
    )
    lines = [
        {"image": "a.jpg", "box": [20, 10, 180, 90], "size": [200, 100]},
        {"image": "b.jpg", "size": [200, 100], **line},
    ]
    result = evaluate_boxes(truths, _jsonl(tmp_path / "b.jsonl", lines))
    assert (result["photos"], result["skipped"]) == (1, 1) and result["iou"] == 1.0
    assert result["reasons"][0].startswith("b.jsonl:2: b.jpg: ")
    assert reason in result["reasons"][0]
