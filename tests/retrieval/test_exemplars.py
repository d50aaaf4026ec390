"""Exemplars and the user's JSONL of crops."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from retrieval.exemplars import Exemplar, photo_size, read_jsonl


def _photo(path: Path, size: tuple[int, int] = (200, 100), orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (90, 140, 200))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())
    return path


def _jsonl(path: Path, rows: list) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_crops_scores_and_subject(tmp_path: Path) -> None:
    _photo(tmp_path / "photos" / "a.jpg")
    _jsonl(
        tmp_path / "crops.jsonl",
        [
            {
                "image": "photos/a.jpg",
                "crops": [[0, 0, 100, 50], [50, 25, 200, 100]],
                "scores": [4.5, 3.0],
                "subject": [100, 50],
            }
        ],
    )
    [ex] = read_jsonl(tmp_path / "crops.jsonl")
    assert ex.image == str((tmp_path / "photos" / "a.jpg").resolve())
    assert ex.size == (200, 100)
    assert ex.crops == (Box(0, 0, 0.5, 0.5), Box(0.25, 0.25, 1, 1))
    assert ex.scores == (4.5, 3.0)
    assert ex.subjects == ((0.5, 0.5), (0.5, 0.5))


def test_subject_box_becomes_its_centre_and_absolute_paths_work(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "elsewhere" / "b.png", (100, 100))
    (tmp_path / "lists").mkdir()
    _jsonl(
        tmp_path / "lists" / "c.jsonl",
        [{"image": str(photo), "crops": [[10, 10, 90, 90]], "subject": [20, 40, 60, 80]}],
    )
    [ex] = read_jsonl(tmp_path / "lists" / "c.jsonl")
    assert ex.subjects == ((0.4, 0.6),)
    assert ex.scores is None


@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (200, 100)), (3, (200, 100)), (6, (100, 200)), (8, (100, 200))]
)
def test_size_is_the_photo_as_displayed(tmp_path: Path, orientation: int, size: tuple) -> None:
    photo = _photo(tmp_path / "r.jpg", (200, 100), orientation)
    assert photo_size(photo) == size
    # Crops are in pixels of the displayed photo: the full displayed frame is valid.
    _jsonl(tmp_path / "c.jsonl", [{"image": "r.jpg", "crops": [[0, 0, *size]]}])
    [ex] = read_jsonl(tmp_path / "c.jsonl")
    assert ex.size == size and ex.crops == (Box.whole(),)


def test_missing_photo_and_malformed_line_are_reported_once_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a.jpg", "c.jpg"):
        _photo(tmp_path / name)
    _jsonl(
        tmp_path / "c.jsonl",
        [
            {"image": "a.jpg", "crops": [[0, 0, 10, 10]]},
            {"image": "gone.jpg", "crops": [[0, 0, 10, 10]]},
            '{"image": "c.jpg", "crops": [[0, 0, 10',
            "",
            {"image": "c.jpg", "crops": [[0, 0, 10, 10]]},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="retrieval.exemplars"):
        exemplars = read_jsonl(tmp_path / "c.jsonl")
    assert [Path(e.image).name for e in exemplars] == ["a.jpg", "c.jpg"]
    [record] = caplog.records
    message = record.getMessage()
    assert "skipped 2 of 4 lines" in message
    assert "line 2 (gone.jpg): no such photo" in message
    assert "line 3: not JSON" in message


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("[1, 2, 3]", 'an "image" path'),
        ({"crops": [[0, 0, 5, 5]]}, 'an "image" path'),
        ({"image": "a.jpg"}, "non-empty list"),
        ({"image": "a.jpg", "crops": []}, "non-empty list"),
        ({"image": "a.jpg", "crops": [[0, 0, 5]]}, "not \\[left, top, right, bottom\\]"),
        ({"image": "a.jpg", "crops": [[0, 0, 500, 50]]}, "does not fit the 200x100 photo"),
        ({"image": "a.jpg", "crops": [[50, 0, 10, 50]]}, "does not fit"),
        ({"image": "a.jpg", "crops": [[0, 0, 5, 5]], "scores": [1, 2]}, "2 scores for 1 crops"),
        ({"image": "a.jpg", "crops": [[0, 0, 5, 5]], "scores": 3}, '"scores" must be a list'),
        (
            {"image": "a.jpg", "crops": [[0, 0, 5, 5]], "subject": [1, 2, 3]},
            "neither a pixel point",
        ),
        ({"image": "a.jpg", "crops": [[0, 0, 5, 5]], "subject": [300, 5]}, "outside the 200x100"),
        ({"image": "not_a_photo.txt", "crops": [[0, 0, 5, 5]]}, "unreadable photo"),
    ],
)
def test_bad_lines_are_named_with_the_reason(tmp_path: Path, row: object, reason: str) -> None:
    _photo(tmp_path / "a.jpg")
    (tmp_path / "not_a_photo.txt").write_text("hello")
    _jsonl(tmp_path / "c.jsonl", [row])
    with pytest.raises(ExemplarIndexError, match=rf"line 1.*{reason}.*no usable exemplar"):
        read_jsonl(tmp_path / "c.jsonl")


def test_many_problems_are_summarised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _photo(tmp_path / "a.jpg")
    rows = [{"image": f"missing{i}.jpg", "crops": [[0, 0, 5, 5]]} for i in range(8)]
    _jsonl(tmp_path / "c.jsonl", [*rows, {"image": "a.jpg", "crops": [[0, 0, 5, 5]]}])
    with caplog.at_level(logging.WARNING, logger="retrieval.exemplars"):
        assert len(read_jsonl(tmp_path / "c.jsonl")) == 1
    message = caplog.records[0].getMessage()
    assert "skipped 8 of 9 lines" in message and "and 3 more" in message
    assert "missing4.jpg" in message and "missing5.jpg" not in message


def test_empty_or_missing_jsonl(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ExemplarIndexError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(ExemplarIndexError, match="cannot read"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_json_round_trip() -> None:
    ex = Exemplar(
        "/p/a.jpg",
        (640, 480),
        (Box(0.1, 0.2, 0.9, 0.8), Box(0, 0, 1, 1)),
        scores=(3.25, 1.0),
        subjects=((0.5, 0.5), None),
    )
    data = json.loads(json.dumps(ex.to_json()))
    assert data["crops"][0] == [0.1, 0.2, 0.9, 0.8]
    assert Exemplar.from_json(data) == ex
    plain = Exemplar("a.jpg", [10, 20], [Box.whole()])
    assert plain.size == (10, 20) and plain.crops == (Box.whole(),)
    assert "scores" not in plain.to_json()
    assert Exemplar.from_json(plain.to_json()) == plain


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crops": ()},
        {"size": (0, 10)},
        {"scores": (1.0, 2.0)},
        {"scores": (float("nan"),)},
        {"subjects": ((0.5, 0.5), (0.1, 0.1))},
        {"subjects": ((1.5, 0.5),)},
    ],
)
def test_exemplar_validates(kwargs: dict) -> None:
    args = {"image": "a.jpg", "size": (10, 10), "crops": (Box.whole(),), **kwargs}
    with pytest.raises(ConfigError):
        Exemplar(**args)
