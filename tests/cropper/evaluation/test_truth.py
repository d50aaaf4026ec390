"""Ground truth for eval: the real GAICD and FCDB annotations, found by the names users give."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.evaluation.truth import GroundTruth, load_truth


def _photo(path: Path, size: tuple[int, int] = (200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path)
    return path


def _same(a, b) -> bool:
    """Two lists of boxes agree to float precision."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b))


def _official_lines(path: Path) -> tuple[list[tuple[float, ...]], list[float]]:
    """The official annotation lines read independently: ``y1 x1 y2 x2 MOS``."""
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines() if line]
    rows = [row for row in rows if row[4] != -2]
    return [(x1, y1, x2, y2) for y1, x1, y2, x2, _ in rows], [row[4] for row in rows]


# -- GAICD ---------------------------------------------------------------------------------


def test_gaicd_json_test_split_is_200_ranked_photos_without_photo_files(gaicd_test) -> None:
    assert len(gaicd_test) == 200 and gaicd_test.ranked
    assert "gaicd at" in gaicd_test.label and "(split test)" in gaicd_test.label
    for truth in gaicd_test:
        assert truth.long_side == 1024 and truth.photo is None and truth.size is None
        assert len(truth.scores) == len(truth.crops) >= 54


@pytest.mark.parametrize(
    "image",
    [
        "265813.jpg",
        "test/265813.jpg",
        "265813",
        "/home/someone/data/GAICD/images/test/265813.jpg",
        "./265813.jpg",
        "images\\test\\265813.jpg",
    ],
)
def test_a_photo_is_found_by_full_name_file_name_or_stem(gaicd_test, image: str) -> None:
    truth = gaicd_test.find(image)
    assert truth is not None and truth.name == "265813.jpg"


@pytest.mark.parametrize("image", ["nope.jpg", "211958.jpg", "", "265813.png.txt"])
def test_an_unknown_photo_is_not_found_and_the_reason_names_it(gaicd_test, image) -> None:
    assert gaicd_test.find(image) is None
    reason = gaicd_test.why_not_found(image)
    assert repr(image) in reason and "names no photo" in reason


def test_official_layout_crops_are_the_txt_lines_in_photo_pixels(layout: Path) -> None:
    truths = load_truth("gaicd", layout)
    assert sorted(t.name for t in truths) == [
        "test/265813.jpg",
        "test/297406.jpg",
        "train/211958.jpg",
    ]
    for truth in truths:
        photo = truths.photo_of(truth)
        assert photo == layout / "images" / truth.name
        size = Image.open(photo).size
        boxes, scores = _official_lines(
            layout / "annotations" / Path(truth.name).with_suffix(".txt")
        )
        assert _same(truth.crops_at(size), boxes) and list(truth.scores) == scores
        top = max(scores)
        best = [b for b, s in zip(boxes, scores, strict=True) if s == top]
        assert _same(truth.crops_at(size, best=True), best)
    assert [t.name for t in load_truth("gaicd", layout, "train")] == ["train/211958.jpg"]


def test_json_form_crops_are_scaled_from_the_1024_frame_to_the_original(gaicd_test) -> None:
    truth = gaicd_test.find("265813")
    on_1024 = truth.crops_at((1024, 939))
    assert _same(on_1024, [tuple(map(float, c)) for c in truth.crops])
    doubled = truth.crops_at((2048, 1878))
    assert _same(doubled, [tuple(2 * v for v in c) for c in on_1024])


def test_json_form_finds_its_photos_under_images_and_agrees_with_the_layout(
    shared_data: Path, layout: Path
) -> None:
    truths = load_truth("gaicd", shared_data / "gaicd", "test", images=layout / "images")
    official = load_truth("gaicd", layout, "test")
    for name in ("265813.jpg", "297406.jpg"):
        truth, other = truths.find(name), official.find(name)
        photo = truths.photo_of(truth)
        assert photo == layout / "images" / "test" / name
        size = Image.open(photo).size
        assert _same(truth.crops_at(size), other.crops_at(size))
    assert truths.photo_of(truths.find("252647.jpg")) is None  # a test photo not at hand


def test_crops_that_do_not_fit_a_wrong_size_raise_value_error(gaicd_test) -> None:
    truth = gaicd_test.find("265813")  # 1024x939 in the dataset: crops reach y = 900
    with pytest.raises(ValueError, match="1024x100"):
        truth.crops_at((2048, 200))
    made = GroundTruth("x.jpg", (), ((0.0, 0.0, 500.0, 400.0),))
    assert made.crops_at((500, 400)) == [(0.0, 0.0, 500.0, 400.0)]
    assert made.crops_at((501, 401)) == [(0.0, 0.0, 500.0, 400.0)]
    with pytest.raises(ValueError, match="300x300"):
        made.crops_at((300, 300))


# -- FCDB ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fcdb_test(shared_data: Path):
    return load_truth("fcdb", shared_data / "fcdb", "test")


@pytest.mark.parametrize(
    "image",
    [
        "6931423716",
        "6931423716_4fb31feac6_c.jpg",
        "https://farm8.staticflickr.com/7218/6931423716_4fb31feac6_c.jpg",
        "photos/6931423716.jpg",
        "6931423716_4fb31feac6_b.jpg",  # another size of the same Flickr photo
    ],
)
def test_fcdb_photos_are_found_by_flickr_id_or_url_file_name(fcdb_test, image: str) -> None:
    truth = fcdb_test.find(image)
    assert truth is not None and truth.name == "6931423716_4fb31feac6_c.jpg"


def test_fcdb_is_one_unscored_xywh_crop_a_photo(fcdb_test, shared_data: Path) -> None:
    entries = json.loads((shared_data / "fcdb" / "cropping_testing_set.json").read_text())
    assert len(fcdb_test) == len(entries) == 345 and not fcdb_test.ranked
    for entry, truth in zip(entries, fcdb_test, strict=True):
        x, y, w, h = entry["crop"]
        size = (x + w + 5, y + h + 5)
        assert truth.scores is None
        assert _same(truth.crops_at(size, best=True), [(x, y, x + w, y + h)])


def test_fcdb_crop_larger_than_the_given_size_raises(fcdb_test) -> None:
    truth = fcdb_test.find("6931423716")  # crop [3, 130, 797, 279]: right edge 800
    with pytest.raises(ValueError, match="700x300 photo"):
        truth.crops_at((700, 300))


# -- SACD, jsonl, problems (synthetic) -----------------------------------------------------


def _sacd(root: Path) -> Path:
    _photo(root / "images" / "cat.jpg")
    for k in (1, 2):
        annotation = {
            "mask_box": json.dumps([10 * k, 10, 20, 20]),
            "best_box": [[0, 0, 100 + k, 80]],
            "crop_box": [[0, 0, 100 + k, 80], [10, 10, 120, 90]],
        }
        path = root / "annotations" / f"cat_{k}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(annotation))
    (root / "test.json").write_text(json.dumps({"jsons": ["annotations/cat_2.json"]}))
    return root


def test_sacd_annotations_of_one_photo_are_told_apart_by_annotation_name(tmp_path) -> None:
    truths = load_truth("sacd", _sacd(tmp_path))
    assert len(truths) == 2 and not truths.ranked
    assert truths.find("cat.jpg") is None
    assert "names 2 photos" in truths.why_not_found("cat.jpg")
    one = truths.find("cat_1")
    assert one is truths.find("annotations/cat_1.json") and one.name == "annotations/cat_1.json"
    assert truths.photo_of(one) == tmp_path / "images" / "cat.jpg"
    assert one.crops_at((200, 100), best=True) == [(0.0, 0.0, 101.0, 80.0)]
    [test] = load_truth("sacd", tmp_path, "test")
    assert test.name == "annotations/cat_2.json"


def test_jsonl_truths_come_from_the_photos_with_their_sizes(tmp_path) -> None:
    _photo(tmp_path / "own" / "a.jpg", (300, 200))
    _photo(tmp_path / "own" / "b.jpg", (120, 90))
    lines = [
        {"image": "own/a.jpg", "crops": [[0, 0, 150, 100], [10, 10, 300, 200]], "scores": [1, 2]},
        {"image": "own/b.jpg", "crops": [[5, 5, 60, 45]]},
    ]
    path = tmp_path / "crops.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    truths = load_truth("jsonl", path)
    assert truths.ranked and len(truths) == 2
    a = truths.find("own/a.jpg")
    assert a is truths.find("a.jpg") and a is truths.find(str(tmp_path / "own" / "a.jpg"))
    assert a.size == (300, 200) and truths.photo_of(a) == (tmp_path / "own" / "a.jpg").resolve()
    assert _same(a.crops_at(a.size, best=True), [(10, 10, 300, 200)])
    assert _same(a.crops_at((600, 400), best=True), [(20, 20, 600, 400)])
    with pytest.raises(ConfigError, match="no splits"):
        load_truth("jsonl", path, "test")


def test_a_malformed_annotation_is_one_warning_and_the_rest_load(tmp_path, caplog) -> None:
    annotations = tmp_path / "annotations" / "test"
    annotations.mkdir(parents=True)
    (annotations / "1.txt").write_text("0 0 50 80 4.0\n10 10 60 90 3.0\n")
    (annotations / "2.txt").write_text("this is not an annotation\n")
    with caplog.at_level(logging.WARNING, logger="cropper.data.datasets"):
        truths = load_truth("gaicd", tmp_path, "test")
    assert [t.name for t in truths] == ["test/1.jpg"]
    [record] = [r for r in caplog.records if r.name == "cropper.data.datasets"]
    assert "skipped 1 of 2 photos" in record.getMessage() and "2.txt" in record.getMessage()
    assert truths.find("1.jpg").crops == ((0.0, 0.0, 80.0, 50.0), (10.0, 10.0, 90.0, 60.0))


def test_no_usable_annotation_is_an_error_naming_them(tmp_path) -> None:
    annotations = tmp_path / "annotations" / "test"
    annotations.mkdir(parents=True)
    (annotations / "2.txt").write_text("nonsense\n")
    with pytest.raises(ExemplarIndexError, match=r"no usable annotations.*2\.txt"):
        load_truth("gaicd", tmp_path)


@pytest.mark.parametrize(
    ("dataset", "root", "error", "match"),
    [
        ("coco", ".", ConfigError, "unknown dataset 'coco'"),
        ("gaicd", "no/such/folder", ExemplarIndexError, "is not a folder"),
        ("fcdb", ".", ExemplarIndexError, "cropping_training_set.json"),
    ],
)
def test_bad_dataset_arguments_are_one_line_errors(tmp_path, dataset, root, error, match) -> None:
    with pytest.raises(error, match=match) as caught:
        load_truth(dataset, tmp_path / root)
    assert "\n" not in str(caught.value)
