"""FLMS: the official .mat format, read from the real format sample in ../shared/data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.data.datasets import load_dataset, read_annotations, read_flms
from cropper.data.flms import MAT_FILE, read_flms_mat

#: What ../shared/data/README.md says the sample holds, read back as x1 y1 x2 y2.
SAMPLE = {
    "sample_a.jpg": [(60, 40, 620, 400), (80, 50, 600, 390)],
    "sample_b.jpg": [(10, 0, 410, 300)],
}


def _mat(path: Path, records: list[tuple[object, object]]) -> Path:
    """A .mat in FLMS's structure: img_gt, a (n, 1) struct array of (name, crops)."""
    table = np.empty((len(records), 1), dtype=[("name", "O"), ("gt", "O")])
    for i, (name, crops) in enumerate(records):
        table[i, 0] = (np.array([name]) if isinstance(name, str) else name, np.asarray(crops))
    savemat(path, {"img_gt": table})
    return path


def test_the_real_sample_reads_back_as_its_readme_says(flms_root: Path) -> None:
    annotations = read_flms(flms_root)
    assert {r.name: list(r.crops) for r in annotations.records} == SAMPLE
    assert annotations.skipped == []
    # The unused row of -1 is dropped; the photos are where the release keeps them.
    assert [r.photo for r in annotations.records] == [flms_root / "image" / n for n in SAMPLE]
    assert all(r.scores is None for r in annotations.records)  # every expert crop counts
    assert read_annotations("flms", flms_root, "test") == annotations


def test_the_sample_with_photos_loads_as_exemplars(flms_root: Path) -> None:
    for name, size in (("sample_a.jpg", (640, 480)), ("sample_b.jpg", (420, 300))):
        Image.new("RGB", size, (90, 120, 60)).save(flms_root / "image" / name)
    exemplars = load_dataset("flms", flms_root)
    by_name = {Path(e.image).name: e for e in exemplars}
    assert by_name["sample_a.jpg"].crops == (
        Box(60 / 640, 40 / 480, 620 / 640, 400 / 480),
        Box(80 / 640, 50 / 480, 600 / 640, 390 / 480),
    )
    assert by_name["sample_b.jpg"].crops == (Box(10 / 420, 0.0, 410 / 420, 1.0),)


def test_flms_is_one_split(flms_root: Path) -> None:
    assert read_flms(flms_root, None) == read_flms(flms_root, "test")
    with pytest.raises(ConfigError, match="flms at .* has no split 'train': use one of test"):
        read_flms(flms_root, "train")


def test_damaged_records_are_skipped_with_their_reason_and_the_rest_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _mat(tmp_path / MAT_FILE, [
        ("good.jpg", [[10, 20, 110, 220], [-1, -1, -1, -1]]),  # y1 x1 y2 x2
        ("unused.jpg", [[-1, -1, -1, -1]]),
        ("flat.jpg", [[10, 20, 10, 220]]),  # y1 == y2: no height
        ("three.jpg", [[1, 2, 3]]),
        ("nan.jpg", [[np.nan, 0, 10, 10]]),
    ])  # fmt: skip
    annotations = read_flms(tmp_path)
    assert [(r.name, r.crops) for r in annotations.records] == [("good.jpg", ((20, 10, 220, 110),))]
    text = " | ".join(why for _, why in annotations.skipped)
    assert "record 1 (unused.jpg): every crop row is unused" in text
    assert "record 2 (flat.jpg): box [20.0, 10.0, 220.0, 10.0] is empty" in text
    assert "record 3 (three.jpg): crops of shape (1, 3)" in text
    assert "record 4 (nan.jpg)" in text
    with caplog.at_level(logging.WARNING):
        from cropper.evaluation.truth import load_truth

        truths = load_truth("flms", tmp_path)
    assert len(truths) == 1 and "skipped 4 of 5 photos" in caplog.text


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a mat file at all" * 8, "cannot read .*500_image_dataset.mat"),
        (None, "holds no img_gt struct array \\(it holds other\\)"),
    ],
)
def test_a_file_that_is_no_flms_mat_is_one_line(tmp_path: Path, content, match) -> None:
    path = tmp_path / MAT_FILE
    if content is None:
        savemat(path, {"other": np.zeros((2, 2))})
    else:
        path.write_bytes(content)
    with pytest.raises(ExemplarIndexError, match=match) as caught:
        read_flms_mat(path)
    assert "\n" not in str(caught.value)


def test_a_folder_without_the_mat_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ExemplarIndexError, match="no .*500_image_dataset.mat: point root at"):
        read_flms(tmp_path)
