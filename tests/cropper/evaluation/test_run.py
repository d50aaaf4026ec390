"""evaluate_crops end to end on the real GAICD layout, with a scripted method."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.core.tasks import Subject
from cropper.data import metrics
from cropper.evaluation.harness import eval_photos
from cropper.evaluation.run import evaluate_crops


def test_a_run_on_gaicd_reports_box_and_ranking_metrics(
    scripted, shared_data: Path, tmp_path
) -> None:
    root = shared_data / "gaicd" / "official_layout"
    method = scripted(lambda _: Box(0.05, 0.05, 0.95, 0.95))
    report = evaluate_crops(method, "gaicd", root, "test", tmp_path, progress=False,
                            settings={"method": "scripted"})  # fmt: skip
    assert report["photos"] == report["measured"] == 2
    assert report["task"] == "free" and report["method"] == "scripted"
    assert set(metrics.score_keys()) | {"iou", "bde"} == set(report["metrics"])
    assert 0 < report["metrics"]["iou"] < 1
    assert all(task == "free" for _, task, _ in method.calls)
    again = evaluate_crops(scripted(lambda _: Box.whole()), "gaicd", root, "test", tmp_path,
                           progress=False)  # fmt: skip
    assert (again["resumed"], again["cropped_now"]) == (2, 0)
    assert again["metrics"] == report["metrics"]  # the first run's crops, not redone
    assert json.loads((tmp_path / "metrics.json").read_text()) == again


def test_limit_takes_the_first_photos(scripted, shared_data: Path, tmp_path) -> None:
    root = shared_data / "gaicd" / "official_layout"
    report = evaluate_crops(scripted(lambda _: Box.whole()), "gaicd", root, None, tmp_path,
                            limit=1, progress=False)  # fmt: skip
    assert report["photos"] == 1


def test_a_bank_holding_the_measured_photos_is_warned_about(
    scripted, shared_data: Path, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    root = shared_data / "gaicd" / "official_layout"
    method = scripted(lambda _: Box.whole())
    method.index = SimpleNamespace(exemplars=[SimpleNamespace(image="/x/265813.jpg")])
    with caplog.at_level(logging.WARNING):
        evaluate_crops(method, "gaicd", root, "test", tmp_path, progress=False)
    assert "holds 1 of the photos being measured (e.g. 265813.jpg)" in caplog.text


def test_the_subject_task_without_annotated_subjects_is_refused_without_a_vlm(
    scripted, shared_data: Path, tmp_path
) -> None:
    root = shared_data / "gaicd" / "official_layout"  # GAICD annotates no subject
    method = scripted(lambda _: Box.whole())
    with pytest.raises(ConfigError) as caught:
        evaluate_crops(method, "gaicd", root, "test", tmp_path, task="subject", progress=False)
    message = str(caught.value)
    assert "2 of 2 photos have no annotated subject" in message and "--vlm" in message
    assert "\n" not in message and method.calls == []  # refused before any crop


def test_the_subject_task_without_annotated_subjects_lets_the_vlm_find_them(
    scripted, shared_data: Path, tmp_path
) -> None:
    root = shared_data / "gaicd" / "official_layout"
    method = scripted(lambda _: Box(0.1, 0.1, 0.9, 0.9))
    method.vlm = object()  # a cropper with a VLM, which grounds the subject itself
    method.found = Subject((0.5, 0.5), None, None, "fallback")  # ... and found none
    report = evaluate_crops(method, "gaicd", root, "test", tmp_path, task="subject",
                            progress=False)  # fmt: skip
    assert [call[2]["subject"] for call in method.calls] == [None, None]
    assert (report["subjects_found_by_vlm"], report["subjects_not_found"]) == (2, 2)
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").open()]
    assert [x["subject_found"] for x in lines] == ["fallback", "fallback"]


def test_gaicd_ranked_by_the_methods_scorer_and_again_by_iou_from_the_same_run(
    scripted, shared_data: Path, tmp_path
) -> None:
    root = shared_data / "gaicd" / "official_layout"
    photos = eval_photos("gaicd", root, "test")
    mos_of = {box: mos for p in photos for box, mos in zip(p.crops, p.scores, strict=True)}
    # A scorer that knows the MOS ranks every photo's crops perfectly.
    method = scripted(lambda _: Box(0.05, 0.05, 0.95, 0.95), score=lambda box: mos_of[box])
    report = evaluate_crops(method, "gaicd", root, "test", tmp_path, progress=False)
    assert report["protocol"] == {"task": "free", "box_metrics": "reference", "ranking": "scorer"}
    assert method.scored == [len(p.crops) for p in photos]  # every annotated crop, once
    assert report["ranked"] == 2
    for key in ("acc1_5", "acc5", "acc10", "srcc", "pcc"):
        assert report["metrics"][key] == pytest.approx(1.0), key
    # The same predictions by IoU rank: nothing cropped again, other figures.
    again = evaluate_crops(scripted(lambda _: Box.whole()), "gaicd", root, "test", tmp_path,
                           progress=False, ranking="iou")  # fmt: skip
    assert (again["cropped_now"], again["protocol"]["ranking"]) == (0, "iou")
    assert again["metrics"]["iou"] == report["metrics"]["iou"]
    assert again["metrics"]["srcc"] < 0.99


def test_an_unknown_ranking_is_refused(scripted, shared_data: Path, tmp_path) -> None:
    root = shared_data / "gaicd" / "official_layout"
    with pytest.raises(ConfigError, match="unknown ranking 'mos': use one of scorer, iou"):
        evaluate_crops(scripted(lambda _: Box.whole()), "gaicd", root, "test", tmp_path,
                       progress=False, ranking="mos")  # fmt: skip
