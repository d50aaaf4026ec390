"""The eval-crop report folder: metrics JSON, a table beside the paper, histogram, galleries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.evaluation.harness import EvalPhoto, PhotoScore
from cropper.evaluation.report import (
    PUBLISHED,
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


def test_the_table_puts_the_run_beside_the_published_numbers() -> None:
    summary = {"iou": 0.5, "bde": 0.0612, "acc5": 0.843, "srcc": 0.9}
    table = markdown_table(summary, {"dataset": "gaicd", "split": "test", "method": "x"})
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "|" in line}
    paper = "Cropper, Gemini 1.5 Pro (paper)"
    assert paper in rows["metric"]
    # Acc in percent in both columns, correlations as they are.
    assert "| 84.3 | 84.3 |" in rows["acc5"]
    assert "| 0.900 | 0.904 |" in rows["srcc"]
    assert "| 0.0612 |" in rows["bde"]
    assert set(PUBLISHED) == {"gaicd", "fcdb", "sacd", "flms"}


@pytest.mark.parametrize("values", [[0.0, 0.05, 0.97, 1.0], [0.5] * 10, []])
def test_the_histogram_draws_one_bar_per_occupied_bin(values: list[float]) -> None:
    chart = np.asarray(iou_histogram(values, bins=20))
    bar = np.all(chart == (70, 120, 200), axis=-1)
    columns = np.flatnonzero(bar.any(axis=0))
    runs = 0 if columns.size == 0 else 1 + int(np.sum(np.diff(columns) > 1))
    assert runs == len({min(int(v * 20), 19) for v in values})
