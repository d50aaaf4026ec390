"""The eval-crop report folder: metrics JSON, a table beside the paper, histogram, galleries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.evaluation.harness import EvalPhoto, PhotoScore
from cropper.evaluation.protocol import run_protocol
from cropper.evaluation.report import (
    PUBLISHED,
    PUBLISHED_PROTOCOLS,
    iou_histogram,
    markdown_table,
    write_report,
)
from cropper.testing.synthetic import synthetic_photo


def _scored(tmp_path: Path, ious: list[float]) -> list[PhotoScore]:
    out = []
    for i, value in enumerate(ious):
        path = tmp_path / f"p{i}.jpg"
        synthetic_photo(i, size=(300, 200)).save(path)
        photo = EvalPhoto(path.name, str(path), (300, 200), (Box(0.1, 0.1, 0.9, 0.9),), None)
        out.append(PhotoScore(photo, (0.0, 0.0, 150.0, 100.0), {"iou": value, "bde": 0.1}))
    return out


def test_the_report_folder_holds_every_file(tmp_path: Path) -> None:
    scored = _scored(tmp_path, [0.9, 0.2, 0.6, 0.4])
    summary = {"iou": 0.525, "bde": 0.1}
    settings = {"dataset": "fcdb", "split": "test", "method": "baseline:centre", "photos": 4}
    report = write_report(tmp_path / "run", summary, scored, settings=settings, gallery=2)
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored == report and stored["metrics"] == summary and stored["photos"] == 4
    for name in ("report.md", "iou_hist.png", "gallery_best.png", "gallery_worst.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    with Image.open(tmp_path / "run" / "gallery_best.png") as sheet:
        assert sheet.width > 300  # two thumbnails side by side


def _rows(table: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in table.splitlines() if "|" in line}


def test_the_table_puts_the_run_beside_the_published_numbers_of_its_protocol() -> None:
    summary = {"iou": 0.5, "bde": 0.0612, "acc5": 0.843, "srcc": 0.9}
    settings = {"dataset": "gaicd", "split": "test", "method": "x",
                "protocol": run_protocol("free", "scorer")}  # fmt: skip
    table = markdown_table(summary, settings)
    rows = _rows(table)
    paper = "Cropper, Gemini 1.5 Pro (paper)"
    assert paper in rows["metric"] and "protocol" in rows["metric"]
    # Acc in percent in both columns, correlations as they are; each row names its protocol.
    assert "| acc5 | free · scorer | 84.3 | 84.3 |" in rows["acc5"]
    assert "| 0.900 | 0.904 |" in rows["srcc"]
    assert "| iou | free · reference | 0.500 |  |" in rows["iou"] and "| 0.0612 |" in rows["bde"]
    assert "Not set beside" not in table  # nothing published was measured otherwise
    assert "- `scorer`: every annotated crop scored by the method's own scorer" in table
    assert "not recorded" not in table
    assert set(PUBLISHED) == set(PUBLISHED_PROTOCOLS) == {"gaicd", "fcdb", "sacd", "flms"}


def test_figures_of_another_protocol_are_not_set_beside_the_published_ones() -> None:
    summary = {"iou": 0.5, "acc5": 0.9, "srcc": 0.8}
    settings = {"dataset": "gaicd", "split": "test", "protocol": run_protocol("free", "iou")}
    table = markdown_table(summary, settings)
    rows = _rows(table)
    # IoU rank is cropper's own protocol: no published column gets a figure.
    assert rows["acc5"].split("|")[2:4] == [" free · iou ", " 90.0 "]
    assert all(cell.strip() == "" for cell in rows["acc5"].split("|")[4:-1])
    assert "Not set beside this run, as measured by another protocol: Cropper, Gemini 1.5 " \
        "Pro (paper) acc5 (free · scorer)" in table  # fmt: skip
    assert "- `iou`: annotated crops ranked by their IoU with the predicted crop" in table


def test_flms_runs_sit_beside_cacnet_only_when_free_form() -> None:
    summary = {"iou": 0.8, "bde": 0.04}
    free = _rows(
        markdown_table(summary, {"dataset": "flms", "protocol": run_protocol("free", None)})
    )
    assert "| 0.800 | 0.854 | 0.871 |" in free["iou"] and "| 0.0400 | 0.0330 |" in free["bde"]
    aspect = markdown_table(summary, {"dataset": "flms", "protocol": run_protocol("aspect", None)})
    assert "| 0.800 |  |  |" in _rows(aspect)["iou"]
    assert "CACNet (trained) iou (free · reference)" in aspect


@pytest.mark.parametrize("values", [[0.0, 0.05, 0.97, 1.0], [0.5] * 10, []])
def test_the_histogram_draws_one_bar_per_occupied_bin(values: list[float]) -> None:
    chart = np.asarray(iou_histogram(values, bins=20))
    bar = np.all(chart == (70, 120, 200), axis=-1)
    columns = np.flatnonzero(bar.any(axis=0))
    runs = 0 if columns.size == 0 else 1 + int(np.sum(np.diff(columns) > 1))
    assert runs == len({min(int(v * 20), 19) for v in values})


def test_a_run_that_recorded_no_protocol_is_set_beside_nothing() -> None:
    table = markdown_table({"acc5": 0.9}, {"dataset": "gaicd"})  # a metrics.json of before
    assert "| acc5 | not recorded · not recorded | 90.0 |  |" in table
    assert "- `not recorded`: a run made before cropper recorded its protocol" in table


def test_a_run_over_fewer_photos_than_the_published_split_says_so() -> None:
    settings = {"dataset": "gaicd", "split": None, "measured": 3,
                "protocol": run_protocol("free", "scorer")}  # fmt: skip
    table = markdown_table({"acc5": 0.5}, settings)
    assert "over gaicd's test photos (200); this run measured 3 (all photos)" in table
    whole = markdown_table({"acc5": 0.5}, {**settings, "split": "test", "measured": 200})
    assert "this run measured" not in whole
