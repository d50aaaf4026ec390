"""FLMS through eval boxes and eval crop, on the real format sample, worked out by hand.

The sample (../shared/data/flms) holds two records: ``sample_a.jpg`` with expert crops
A = (60, 40, 620, 400) and B = (80, 50, 600, 390), ``sample_b.jpg`` with C = (10, 0, 410,
300). Its photos are not at hand: the tests draw photos of 640x480 and 420x300.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cropper.cli.main import main
from cropper.core.boxes import Box
from cropper.evaluation.run import evaluate_crops

SIZES = {"sample_a.jpg": (640, 480), "sample_b.jpg": (420, 300)}
A, B, C = (60, 40, 620, 400), (80, 50, 600, 390), (10, 0, 410, 300)


def _photos(root: Path) -> None:
    for name, size in SIZES.items():
        Image.new("RGB", size, (90, 120, 60)).save(root / "image" / name)


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_eval_boxes_measures_flms_predictions_by_hand(
    flms_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    lines = [
        {"image": "sample_a.jpg", "box": list(B), "size": [640, 480]},  # B exactly
        {"image": "sample_b.jpg", "box": [10, 0, 210, 300], "size": [420, 300]},  # C's left half
    ]
    predictions = tmp_path / "boxes.jsonl"
    predictions.write_text("".join(json.dumps(x) + "\n" for x in lines))
    argv = ["eval", "boxes", "--dataset", "flms", "--root", str(flms_root), "--predictions",
            str(predictions)]  # fmt: skip
    assert main(argv) == 0
    result = _last_json(capsys.readouterr().out)
    # sample_a: IoU 1 with B (the second expert's crop), displacement 0. sample_b: IoU
    # 200*300 / 400*300 = 0.5; the right edge moved 200 of 420 px: BDE 200/420/4.
    assert result["iou"] == pytest.approx((1 + 0.5) / 2)
    assert result["bde"] == pytest.approx((0 + 200 / 420 / 4) / 2)
    assert (result["photos"], result["missing"], result["skipped"]) == (2, 0, 0)


def test_eval_crop_on_flms_is_free_form_against_every_expert_crop(
    scripted, flms_root: Path, tmp_path: Path
) -> None:
    _photos(flms_root)
    # Halfway between A and B on sample_a; C itself on sample_b.
    half = Box(70 / 640, 45 / 480, 610 / 640, 395 / 480)
    method = scripted(
        lambda path: half if path.endswith("sample_a.jpg") else Box(10 / 420, 0, 410 / 420, 1)
    )
    report = evaluate_crops(method, "flms", flms_root, None, tmp_path / "run", progress=False)
    assert [(Path(c[0]).name, c[1]) for c in method.calls] == [
        ("sample_a.jpg", "free"), ("sample_b.jpg", "free")]  # fmt: skip
    # sample_a: 540x350 inside A (560x360): IoU 189000/201600; B (520x340) inside it:
    # 176800/189000, lower. Every edge 10 px (x) or 5 px (y) from both: 20/640 + 10/480.
    iou_a = 540 * 350 / (560 * 360)
    bde_a = (20 / 640 + 10 / 480) / 4
    assert report["metrics"]["iou"] == pytest.approx((iou_a + 1) / 2)
    assert report["metrics"]["bde"] == pytest.approx((bde_a + 0) / 2)
    assert report["task"] == "free" and "acc5" not in report["metrics"]  # nothing to rank


def test_aspect_on_flms_asks_each_expert_crops_ratio_and_measures_against_it(
    scripted, flms_root: Path, tmp_path: Path
) -> None:
    _photos(flms_root)
    # A fixed crop a photo, whatever the ratio asked: A on sample_a, the whole photo on b.
    method = scripted(lambda path: Box(60 / 640, 40 / 480, 620 / 640, 400 / 480)
                      if path.endswith("sample_a.jpg") else Box.whole())  # fmt: skip
    report = evaluate_crops(
        method, "flms", flms_root, "test", tmp_path / "run", task="aspect", progress=False
    )
    ratios = [call[2]["ratio"] for call in method.calls]
    assert ratios == pytest.approx([560 / 360, 520 / 340, 400 / 300])  # A, B, C
    lines = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").open()]
    assert [x["image"] for x in lines] == ["sample_a.jpg", "sample_a.jpg#2", "sample_b.jpg"]
    # Each measured against its own truth: A against A (1), A against B (B inside A:
    # 176800/201600), the whole 420x300 photo against C (120000/126000).
    ious = [1.0, (520 * 340) / (560 * 360), (400 * 300) / (420 * 300)]
    bdes = [0.0, (20 / 640 + 20 / 640 + 10 / 480 + 10 / 480) / 4, (10 / 420 + 10 / 420) / 4]
    assert report["metrics"]["iou"] == pytest.approx(sum(ious) / 3)
    assert report["metrics"]["bde"] == pytest.approx(sum(bdes) / 3)
    assert (report["photos"], report["measured"]) == (3, 3)
