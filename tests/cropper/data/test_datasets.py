"""Dataset loaders: the real GAICD and FCDB annotations, and synthetic fixtures in each layout."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.data.datasets import (
    DATASETS,
    GAICD_LONG_SIDE,
    PhotoFinder,
    load_dataset,
    load_fcdb,
    load_folder,
    load_gaicd,
    load_sacd,
    photo_folder,
    read_annotations,
    read_fcdb,
    read_gaicd,
    read_sacd,
)
from retrieval.exemplars import read_jsonl
from retrieval.selection import select_crops

LOGGER = "cropper.data.datasets"


def _photo(path: Path, size: tuple[int, int] = (200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path)
    return path


def _json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _one_warning(caplog: pytest.LogCaptureFixture) -> str:
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    return record.getMessage()


# -- GAICD, the real annotation files ----------------------------------------------------


@pytest.fixture(scope="module")
def gaicd_root(shared_data: Path) -> Path:
    return shared_data / "gaicd"


@pytest.fixture(scope="module")
def gaicd_all(gaicd_root: Path):
    return read_gaicd(gaicd_root)


def test_gaicd_json_has_1236_photos_of_54_to_90_rated_crops(gaicd_all) -> None:
    records = gaicd_all.records
    assert len(records) == 1236 and gaicd_all.skipped == []
    assert min(len(r.crops) for r in records) == 54
    assert max(len(r.crops) for r in records) == 90
    for r in records:
        assert len(r.scores) == len(r.crops) and all(1.0 <= s <= 5.0 for s in r.scores)
        assert r.long_side == GAICD_LONG_SIDE and r.name.endswith(".jpg")
        assert all(0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 1024 for x0, y0, x1, y1 in r.crops)


def test_gaicd_json_split_is_1036_train_and_200_test(gaicd_root: Path, gaicd_all) -> None:
    test = {r.name for r in read_gaicd(gaicd_root, "test").records}
    train = {r.name for r in read_gaicd(gaicd_root, "train").records}
    assert (len(train), len(test)) == (1036, 200)
    assert train.isdisjoint(test) and train | test == {r.name for r in gaicd_all.records}


def _txt_boxes(path: Path, size: tuple[int, int]) -> tuple[list[Box], list[float]]:
    """The official annotation lines, read independently of the loader: y1 x1 y2 x2 MOS."""
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines() if line]
    rows = [row for row in rows if row[4] != -2]
    return [Box.from_yxyx(row[:4], "pixel", size) for row in rows], [row[4] for row in rows]


def test_gaicd_official_layout_with_its_real_photos(gaicd_root: Path) -> None:
    layout = gaicd_root / "official_layout"
    exemplars = load_gaicd(layout)
    assert sorted(Path(e.image).stem for e in exemplars) == ["211958", "265813", "297406"]
    for ex in exemplars:
        photo = Path(ex.image)
        with Image.open(photo) as image:
            assert ex.size == image.size
        txt = layout / "annotations" / photo.parent.name / f"{photo.stem}.txt"
        boxes, scores = _txt_boxes(txt, ex.size)
        assert len(ex.crops) in (87, 90)
        assert list(ex.crops) == pytest.approx(boxes) and list(ex.scores) == scores
        assert ex.subjects is None
    [train] = load_gaicd(layout, "train")
    assert Path(train.image).name == "211958.jpg"


def test_gaicd_json_form_finds_photos_in_subfolders_and_agrees_with_the_official_layout(
    gaicd_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = gaicd_root / "official_layout"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        from_json = load_gaicd(gaicd_root, images=layout / "images")
    message = _one_warning(caplog)
    assert "skipped 1233 of 1236 photos" in message and "no photo found (1233)" in message
    assert "and 1228 more" in message
    official = {e.image: e for e in load_gaicd(layout)}
    assert {e.image: e for e in from_json} == official


# -- GAICD, synthetic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "crops", "scores"),
    [
        # y first: y1 x1 y2 x2 MOS
        ("10 20 50 80 4.5\n", [(20, 10, 80, 50)], [4.5]),
        (
            "10 20 50 80 4.5\n0 0 100 200 -2\n\n30 40 90 200 3\n",
            [(20, 10, 80, 50), (40, 30, 200, 90)],
            [4.5, 3.0],
        ),
        ("10,20,50,80,4.5\n", [(20, 10, 80, 50)], [4.5]),
    ],
)
def test_gaicd_official_lines(tmp_path: Path, text: str, crops: list, scores: list) -> None:
    _json(tmp_path / "annotations" / "train" / "1.txt", None).write_text(text)
    [record] = read_gaicd(tmp_path).records
    assert list(record.crops) == crops and list(record.scores) == scores
    assert record.photo == tmp_path / "images" / "train" / "1.jpg"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10 20 50 4.5\n", "line 1: 4 fields"),
        ("10 20 50 80 good\n", "line 1: could not convert"),
        ("1 1 9 9 4\n50 20 10 80 3\n", "line 2: box .* is empty"),
        ("1 1 9 9 nan\n", "line 1: nan is not a finite number"),
        ("1 1 9 9 -2\n", "no rated crop"),
    ],
)
def test_gaicd_malformed_files_are_collected(tmp_path: Path, text: str, reason: str) -> None:
    _json(tmp_path / "annotations" / "test" / "1.txt", None).write_text(text)
    _json(tmp_path / "annotations" / "test" / "2.txt", None).write_text("0 0 10 10 4\n")
    read = read_gaicd(tmp_path)
    assert [r.name for r in read.records] == ["test/2.jpg"]
    [(kind, name)] = read.skipped
    assert kind == "malformed annotation" and name.startswith("annotations/test/1.txt (")
    assert re.search(reason, name)


def test_gaicd_json_boxes_are_on_the_1024_long_side_photo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The same box on the dataset's own photo and on a photo twice its size.
    half = {"bbox": [[0, 0, 512, 250]], "score": [3.5]}
    _json(
        tmp_path / "image_crop.json",
        {
            "own.jpg": {"bbox": [[0, 0, 512, 250], [10, 10, 20, 20]], "score": [4.0, -2]},
            "big.jpg": half,
            "edge.jpg": {"bbox": [[0, 0, 1025, 500]], "score": [3.0]},  # a pixel over: clamped
            "off.jpg": {"bbox": [[0, 0, 1100, 250]], "score": [3.5]},
            "bad.jpg": half,
        },
    )
    _json(
        tmp_path / "split.json",
        {"train": ["own.jpg", "big.jpg", "edge.jpg", "off.jpg", "bad.jpg"], "test": []},
    )
    _photo(tmp_path / "images" / "a" / "own.jpg", (1024, 500))
    _photo(tmp_path / "images" / "b" / "big.png", (2048, 1000))  # found by stem
    for name in ("edge.jpg", "off.jpg"):
        _photo(tmp_path / "images" / name, (1024, 500))
    (tmp_path / "images" / "bad.jpg").write_text("not a photo")
    with pytest.raises(ExemplarIndexError, match="no annotations found"):
        load_gaicd(tmp_path, "test")  # an empty split
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        own, big, edge = load_gaicd(tmp_path, "train")
    assert (Path(own.image).name, own.size, own.scores) == ("own.jpg", (1024, 500), (4.0,))
    assert (Path(big.image).name, big.size, big.scores) == ("big.png", (2048, 1000), (3.5,))
    assert own.crops == big.crops == (Box(0, 0, 0.5, 0.5),) and edge.crops == (Box.whole(),)
    message = _one_warning(caplog)
    assert "skipped 2 of 5 photos" in message
    assert (
        "annotation outside the photo (1): "
        "off.jpg (crop [0.0, 0.0, 1100.0, 250.0] on the 1024x500 photo)" in message
    )
    assert "unreadable photo (1): bad.jpg (cannot identify image file" in message


# -- FCDB ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 1369), ("test", 345), (None, 1714)])
def test_fcdb_real_entries(shared_data: Path, split: str | None, count: int) -> None:
    read = read_fcdb(shared_data / "fcdb", split)
    assert len(read.records) == count and read.skipped == []
    assert all(len(r.crops) == 1 and r.scores is None for r in read.records)


def test_fcdb_crop_is_x_y_w_h_and_keys_are_id_and_url_name(shared_data: Path) -> None:
    entry = json.loads((shared_data / "fcdb" / "cropping_testing_set.json").read_text())[0]
    record = read_fcdb(shared_data / "fcdb", "test").records[0]
    x, y, w, h = entry["crop"]
    assert record.crops == ((x, y, x + w, y + h),)
    assert record.keys == (str(entry["flickr_photo_id"]), entry["url"].rsplit("/", 1)[-1])


def _fcdb_entry(photo_id: int, url_name: str, crop: list) -> dict:
    return {"url": f"https://farm1.example/1/{url_name}", "flickr_photo_id": photo_id, "crop": crop}


@pytest.fixture
def fcdb_root(tmp_path: Path) -> Path:
    _json(
        tmp_path / "cropping_training_set.json",
        [
            _fcdb_entry(111, "111_aa_b.jpg", [0, 0, 100, 50]),  # photo named <id>.jpg
            _fcdb_entry(222, "222_bb_b.jpg", [50, 25, 150, 75]),  # <id>_... under a subfolder
            _fcdb_entry(333, "x_cc_b.jpg", [0, 0, 200, 100]),  # by the url's file name only
            _fcdb_entry(22, "22_dd_b.jpg", [0, 0, 10, 10]),  # 222_... must not match 22
            _fcdb_entry(444, "444_ee_b.jpg", [0, 0, 10, 10]),  # missing
            {"url": "u", "crop": [0, 0, 10]},  # malformed
        ],
    )
    _json(tmp_path / "cropping_testing_set.json", [_fcdb_entry(555, "555_b.jpg", [0, 0, 10, 10])])
    _photo(tmp_path / "images" / "111.jpg")
    _photo(tmp_path / "images" / "sub" / "222_zz_o.png")
    _photo(tmp_path / "images" / "x_cc_b.jpg")
    return tmp_path


def test_fcdb_finds_photos_by_id_or_url_name(
    fcdb_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exemplars = load_fcdb(fcdb_root, "train")
    assert [Path(e.image).name for e in exemplars] == ["111.jpg", "222_zz_o.png", "x_cc_b.jpg"]
    assert [e.crops for e in exemplars] == [
        (Box(0, 0, 0.5, 0.5),),
        (Box(0.25, 0.25, 1, 1),),
        (Box.whole(),),
    ]
    message = _one_warning(caplog)
    assert "skipped 3 of 6 photos" in message
    assert "no photo found (2): 22_dd_b.jpg; 444_ee_b.jpg" in message
    assert "malformed annotation (1): cropping_training_set.json entry 5" in message
    with pytest.raises(ExemplarIndexError, match=r"none of the 1 photos.*555_b\.jpg"):
        load_fcdb(fcdb_root, "test")


def test_fcdb_photos_folder_may_be_given_or_be_the_root(fcdb_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _photo(elsewhere / "555.jpg", (20, 20))
    [ex] = load_fcdb(fcdb_root, "test", images=elsewhere)
    assert ex.crops == (Box(0, 0, 0.5, 0.5),)
    flat = tmp_path / "flat"
    _json(flat / "cropping_testing_set.json", [_fcdb_entry(555, "555_b.jpg", [0, 0, 10, 10])])
    _photo(flat / "555_b.jpg", (40, 20))
    [ex] = load_fcdb(flat)
    assert ex.crops == (Box(0, 0, 0.25, 0.5),)


# -- SACD (synthetic, in the dataset's layout) ------------------------------------------------


def _sacd_annotation(mask_xywh: list, best: list, crops: list) -> dict:
    return {"mask_box": json.dumps(mask_xywh), "best_box": [best], "crop_box": crops}


@pytest.fixture
def sacd_root(tmp_path: Path) -> Path:
    _photo(tmp_path / "images" / "cat.jpg", (200, 100))
    _photo(tmp_path / "images" / "dog.jpg", (100, 200))
    for mask in ("cat_0", "cat_1", "dog_0"):
        _photo(tmp_path / "masks" / f"{mask}.jpg", (20, 20))
    notes = tmp_path / "annotations"
    _json(
        notes / "cat_0.json",
        _sacd_annotation([10, 20, 40, 20], [0, 0, 100, 100], [[0, 0, 100, 100], [50, 0, 200, 100]]),
    )
    _json(notes / "cat_1.json", _sacd_annotation([100, 50, 20, 10], [100, 0, 200, 100], []))
    _json(notes / "dog_0.json", _sacd_annotation([0, 0, 100, 100], [0, 0, 100, 200], []))
    _json(tmp_path / "test.json", {"jsons": ["annotations/dog_0.json"]})
    return tmp_path


def test_sacd_one_exemplar_an_annotation_best_crop_first(sacd_root: Path) -> None:
    cat0, cat1, dog0 = load_sacd(sacd_root)
    assert Path(cat0.image).name == Path(cat1.image).name == "cat.jpg"
    assert Path(dog0.image).name == "dog.jpg" and dog0.size == (100, 200)
    # crop_box repeats the best box: kept once, the best first and scored higher.
    assert cat0.crops == (Box(0, 0, 0.5, 1), Box(0.25, 0, 1, 1))
    assert cat0.scores == (1.0, 0.5)
    assert cat0.subjects == ((0.15, 0.3),) * 2  # the centre of [10, 20, 40, 20] on 200x100
    assert cat1.subjects == ((0.55, 0.55),) and dog0.subjects == ((0.5, 0.25),)
    assert select_crops(cat0, "free", top=1)[0].box == Box(0, 0, 0.5, 1)
    assert select_crops(cat0, "subject", subject=(0.2, 0.3))[0].box == Box(0, 0, 0.5, 1)


@pytest.mark.parametrize(
    ("split", "names"),
    [(None, ["cat_0", "cat_1", "dog_0"]), ("test", ["dog_0"]), ("train", ["cat_0", "cat_1"])],
)
def test_sacd_splits(sacd_root: Path, split: str | None, names: list) -> None:
    read = read_sacd(sacd_root, split)
    assert [Path(r.name).stem for r in read.records] == names


def test_sacd_train_json_wins_over_the_rest(sacd_root: Path) -> None:
    _json(sacd_root / "train.json", {"jsons": ["annotations/cat_1.json", "annotations/gone.json"]})
    read = read_sacd(sacd_root, "train")
    assert [r.name for r in read.records] == ["annotations/cat_1.json"]
    assert read.skipped == [
        ("malformed annotation", "annotations/gone.json (listed in train.json, no such file)")
    ]


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ("{not json", "Expecting property name"),
        ({"best_box": [[0, 0, 10, 10]]}, "mask_box None is not"),
        ({"mask_box": "[1, 2, 3]", "best_box": [[0, 0, 10, 10]]}, "mask_box '\\[1, 2, 3\\]'"),
        ({"mask_box": "[1, 2", "best_box": [[0, 0, 10, 10]]}, "mask_box '\\[1, 2' is not"),
        ({"mask_box": "[1, 2, 3, 4]"}, "no best_box or crop_box"),
        ({"mask_box": "[1, 2, 3, 4]", "crop_box": [[10, 0, 5, 5]]}, "is empty"),
    ],
)
def test_sacd_malformed_annotations_are_collected(
    sacd_root: Path, caplog: pytest.LogCaptureFixture, annotation: object, reason: str
) -> None:
    path = sacd_root / "annotations" / "cat_2.json"
    path.write_text(annotation if isinstance(annotation, str) else json.dumps(annotation))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert len(load_sacd(sacd_root, "train")) == 2
    message = _one_warning(caplog)
    assert "skipped 1 of 3 annotations" in message
    assert "malformed annotation (1): annotations/cat_2.json (" in message
    assert re.search(reason, message)


# -- a folder of photos with sidecars, and the JSONL --------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [("[" * 100_000, "recursion"), ('{"crops": [[0, 0, 1' + "0" * 400 + ', 50]]}', "too large")],
    ids=["nested-too-deep", "huge-number"],
)
def test_a_damaged_sidecar_is_skipped_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, why: str
) -> None:
    _photo(tmp_path / "a.jpg")
    _json(tmp_path / "a.json", {"crops": [[0, 0, 100, 50]]})
    _photo(tmp_path / "b.jpg")
    (tmp_path / "b.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        [a] = load_folder(tmp_path)
    assert Path(a.image).name == "a.jpg"
    [warning] = [r.getMessage() for r in caplog.records if "b.json" in r.getMessage()]
    assert why in warning and len(warning) < 600


def test_folder_with_sidecars(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _photo(tmp_path / "a.jpg")
    _json(tmp_path / "a.json", {"crops": [[0, 0, 100, 50]], "scores": [4], "subject": [50, 25]})
    _photo(tmp_path / "sub" / "b.png", (100, 100))
    _json(tmp_path / "sub" / "b.json", {"crops": [[10, 10, 90, 90]], "subject": [20, 40, 60, 80]})
    _photo(tmp_path / "c.jpg")  # no sidecar
    _photo(tmp_path / "d.jpg")
    (tmp_path / "d.json").write_text("{not json")
    _photo(tmp_path / "e.jpg")
    _json(tmp_path / "e.json", {"crops": [[0, 0, 500, 50]]})
    (tmp_path / "f.jpg").write_text("not a photo")
    _json(tmp_path / "f.json", {"crops": [[0, 0, 5, 5]]})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        a, b = load_folder(tmp_path)
    assert (Path(a.image).name, a.crops, a.scores, a.subjects) == (
        "a.jpg",
        (Box(0, 0, 0.5, 0.5),),
        (4.0,),
        ((0.25, 0.25),),
    )
    assert (Path(b.image).name, b.crops, b.scores, b.subjects) == (
        "b.png",
        (Box(0.1, 0.1, 0.9, 0.9),),
        None,
        ((0.4, 0.6),),
    )
    message = _one_warning(caplog)
    assert "skipped 4 of 6 photos" in message
    assert "no sidecar JSON (1): c.jpg" in message
    assert "malformed annotation (2): d.json (" in message and "; e.json (crop" in message
    assert "unreadable photo (1): f.jpg" in message


def test_jsonl_is_read_jsonl(tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.jpg", "crops": [[0, 0, 10, 10]]}))
    assert load_dataset("jsonl", tmp_path / "c.jsonl") == read_jsonl(tmp_path / "c.jsonl")


# -- errors that stop the load ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "images", "message"),
    [
        (
            "nope",
            None,
            None,
            "unknown dataset 'nope': use one of gaicd, fcdb, sacd, flms, jsonl, folder, pro",
        ),
        ("gaicd", "val", None, "has no split 'val': use one of test, train"),
        ("fcdb", "val", None, "has no split 'val': use one of train, test"),
        ("sacd", "val", None, "has no split 'val': use one of test, train"),
        ("jsonl", "train", None, "jsonl has no splits"),
        ("folder", "train", None, "folder has no splits"),
        ("folder", None, "x", "folder takes no images folder"),
    ],
)
def test_bad_names_and_splits(
    tmp_path: Path, fcdb_root: Path, sacd_root: Path, name: str, split, images, message: str
) -> None:
    gaicd = tmp_path / "gaicd"
    _json(gaicd / "image_crop.json", {"1.jpg": {"bbox": [[0, 0, 9, 9]], "score": [3]}})
    _json(gaicd / "split.json", {"train": [], "test": ["1.jpg"]})
    root = {"gaicd": gaicd, "fcdb": fcdb_root}.get(name, sacd_root)
    with pytest.raises(ConfigError, match=message):
        load_dataset(name, root, split, images=images)


def test_the_registry_names_every_loader() -> None:
    assert sorted(DATASETS) == ["fcdb", "flms", "folder", "gaicd", "jsonl", "pro", "sacd"]


@pytest.mark.parametrize("name", ["gaicd", "fcdb", "sacd", "folder"])
def test_no_photo_present_fails_naming_the_root_and_what_was_expected(
    tmp_path: Path, name: str
) -> None:
    if name == "gaicd":
        _json(tmp_path / "image_crop.json", {"1.jpg": {"bbox": [[0, 0, 9, 9]], "score": [3]}})
        expected = "<id>.jpg photos under"
    elif name == "fcdb":
        _json(tmp_path / "cropping_testing_set.json", [_fcdb_entry(5, "5_b.jpg", [0, 0, 9, 9])])
        expected = "named by Flickr id"
    elif name == "sacd":
        _json(
            tmp_path / "annotations" / "x_0.json", _sacd_annotation([0, 0, 5, 5], [0, 0, 9, 9], [])
        )
        expected = "<name>.jpg photos under"
    else:
        _photo(tmp_path / "lonely.jpg")
        expected = "sidecar JSON each"
    with pytest.raises(
        ExemplarIndexError, match=f"{name} at {tmp_path}: none of the 1 .*{expected}"
    ):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gaicd", "found neither annotations/"),
        ("fcdb", "no cropping_training_set.json or cropping_testing_set.json"),
        ("sacd", "no annotations/ folder"),
        ("folder", "no photos found"),
    ],
)
def test_a_folder_without_the_dataset(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ExemplarIndexError, match=message):
        load_dataset(name, tmp_path)
    with pytest.raises(ExemplarIndexError, match="is not a folder"):
        load_dataset(name, tmp_path / "missing")


# -- annotations without photos, for eval ------------------------------------------------------


def test_read_annotations_is_the_dataset_reader(gaicd_root: Path, shared_data: Path) -> None:
    assert read_annotations("gaicd", gaicd_root, "test") == read_gaicd(gaicd_root, "test")
    assert read_annotations("fcdb", shared_data / "fcdb") == read_fcdb(shared_data / "fcdb")


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("jsonl", ConfigError, "no annotations apart from its photos: read it with load_dataset"),
        ("folder", ConfigError, "read it with load_dataset"),
        ("coco", ConfigError, "unknown dataset 'coco'"),
    ],
)
def test_read_annotations_refuses_what_it_cannot_read(tmp_path, name, error, match) -> None:
    with pytest.raises(error, match=match):
        read_annotations(name, tmp_path)


def test_read_annotations_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ExemplarIndexError, match="is not a folder"):
        read_annotations("gaicd", tmp_path / "gone")


def test_photo_folder_is_where_the_loaders_look(tmp_path: Path) -> None:
    assert photo_folder("gaicd", tmp_path) == tmp_path / "images"
    assert photo_folder("sacd", tmp_path) == tmp_path / "images"
    assert photo_folder("flms", tmp_path) == tmp_path / "image"  # the official release's name
    assert photo_folder("fcdb", tmp_path) == tmp_path  # FCDB's photos may lie beside its JSON
    (tmp_path / "images").mkdir()
    assert photo_folder("fcdb", tmp_path) == tmp_path / "images"
    assert photo_folder("gaicd", tmp_path, tmp_path / "mine") == tmp_path / "mine"


def test_photo_finder_by_name_stem_or_photo_id(tmp_path: Path) -> None:
    _photo(tmp_path / "a" / "4910188666_04cf9f487d_b.jpg")
    _photo(tmp_path / "b" / "265813.png")
    finder = PhotoFinder(tmp_path)
    flickr = tmp_path / "a" / "4910188666_04cf9f487d_b.jpg"
    assert finder.find("4910188666") == flickr == finder.find("4910188666_04cf9f487d_b.jpg")
    assert finder.find("265813.jpg") == tmp_path / "b" / "265813.png"  # by stem
    assert finder.find("nope.jpg") is None and PhotoFinder(tmp_path / "gone").find("a") is None
