"""The eval-crop harness: photos of a split, resumable runs, metrics by the documented protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropper.core.boxes import Box
from cropper.core.errors import ImageError, VLMError
from cropper.data import metrics
from cropper.evaluation.harness import (
    PREDICTIONS,
    EvalPhoto,
    dataset_task,
    eval_photos,
    read_predictions,
    run_split,
    score_predictions,
    summarize,
)
from cropper.testing.synthetic import synthetic_photo


def _photo(name: str, crops, scores=None, size=(400, 300), subject=None) -> EvalPhoto:
    return EvalPhoto(name, f"/photos/{name}", size, tuple(crops), scores, subject)


# -- photos of a split ----------------------------------------------------------------------


def test_eval_photos_reads_the_real_gaicd_layout(shared_data: Path) -> None:
    photos = eval_photos("gaicd", shared_data / "gaicd" / "official_layout", "test")
    assert sorted(p.name for p in photos) == ["265813.jpg", "297406.jpg"]
    for photo in photos:
        assert len(photo.crops) == len(photo.scores) >= 54
        best = max(photo.scores)
        assert len(photo.truths) == photo.scores.count(best)


def test_eval_photos_names_repeated_photos_apart(tmp_path: Path) -> None:
    synthetic_photo(0).save(tmp_path / "a.jpg")
    lines = [
        {"image": "a.jpg", "crops": [[0, 0, 100, 100]], "subject": [50, 50]},
        {"image": "a.jpg", "crops": [[10, 10, 200, 200]], "subject": [90, 90]},
    ]
    (tmp_path / "crops.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    photos = eval_photos("jsonl", tmp_path / "crops.jsonl", None)
    assert [p.name for p in photos] == ["a.jpg", "a.jpg#2"]


@pytest.mark.parametrize(
    ("dataset", "task", "expected"),
    [("gaicd", None, "free"), ("fcdb", None, "aspect"), ("sacd", None, "subject"),
     ("jsonl", None, "free"), ("gaicd", "aspect", "aspect")],
)  # fmt: skip
def test_each_benchmark_is_cropped_with_its_own_task(dataset, task, expected) -> None:
    assert dataset_task(dataset, task) == expected


def test_requests_carry_the_truths_ratio_and_the_subject() -> None:
    photo = _photo("a.jpg", [Box(0.1, 0.2, 0.6, 0.8)], size=(400, 300), subject=(0.3, 0.4))
    ratio = photo.request("aspect")["ratio"]
    assert ratio == pytest.approx((0.5 * 400) / (0.6 * 300))
    assert photo.request("subject") == {"subject": (0.3, 0.4), "ratio": None}
    assert photo.request("free") == {"subject": None, "ratio": None}


def test_a_photo_without_an_annotated_subject_asks_for_none_never_the_truths_centre() -> None:
    photo = _photo("a.jpg", [Box(0.1, 0.2, 0.6, 0.8)], size=(400, 300))
    # The truth's centre, (0.35, 0.5), would show the method where the answer lies.
    assert photo.request("subject") == {"subject": None, "ratio": None}


# -- running and resuming -------------------------------------------------------------------


def _photos(n: int) -> list[EvalPhoto]:
    return [_photo(f"p{i}.jpg", [Box(0.1, 0.1, 0.9, 0.9)], (4.0,)) for i in range(n)]


def test_a_run_writes_one_line_per_photo_in_pixels(scripted, tmp_path: Path) -> None:
    method = scripted(lambda _: Box(0.25, 0.5, 0.75, 1.0))
    outcome = run_split(method, _photos(3), "free", tmp_path, progress=False)
    assert (outcome.cropped, outcome.resumed, outcome.failures) == (3, 0, [])
    lines = [json.loads(x) for x in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert [x["image"] for x in lines] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert lines[0]["box"] == [100.0, 150.0, 300.0, 300.0]  # of the 400x300 photo
    assert lines[0]["task"] == "free"


def test_a_stopped_run_resumes_without_redoing_or_repeating(scripted, tmp_path: Path) -> None:
    photos = _photos(5)
    with pytest.raises(KeyboardInterrupt):
        run_split(scripted(lambda _: Box.whole(), stop_after=2), photos, "free", tmp_path,
                  progress=False)  # fmt: skip
    again = scripted(lambda _: Box.whole())
    outcome = run_split(again, photos, "free", tmp_path, progress=False)
    assert (outcome.resumed, outcome.cropped) == (2, 3)
    assert [Path(c[0]).name for c in again.calls] == ["p2.jpg", "p3.jpg", "p4.jpg"]
    names = [json.loads(x)["image"] for x in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert sorted(names) == [p.name for p in photos]  # each once


def test_a_line_torn_by_a_kill_is_dropped_and_redone(scripted, tmp_path: Path) -> None:
    photos = _photos(3)
    run_split(scripted(lambda _: Box.whole()), photos[:2], "free", tmp_path, progress=False)
    with open(tmp_path / PREDICTIONS, "ab") as handle:
        handle.write(b'{"image": "p2.jpg", "task": "fr')  # killed mid-write
    assert set(read_predictions(tmp_path / PREDICTIONS)) == {"p0.jpg", "p1.jpg"}
    outcome = run_split(scripted(lambda _: Box.whole()), photos, "free", tmp_path, progress=False)
    assert outcome.cropped == 1
    lines = (tmp_path / PREDICTIONS).read_text().splitlines()
    assert [json.loads(x)["image"] for x in lines] == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_a_bad_photo_is_reported_and_the_rest_are_cropped(scripted, tmp_path: Path) -> None:
    method = scripted(lambda _: Box.whole(), fail={"p1.jpg": ImageError("p1.jpg: truncated")})
    outcome = run_split(method, _photos(3), "free", tmp_path, progress=False)
    assert outcome.cropped == 2
    assert outcome.failures == [("p1.jpg", "p1.jpg: truncated")]
    assert "p1.jpg" not in read_predictions(tmp_path / PREDICTIONS)  # tried again next run


def test_an_unreachable_server_stops_the_run(scripted, tmp_path: Path) -> None:
    down = VLMError("connection refused", retryable=True, every_request=True)
    method = scripted(lambda _: Box.whole(), fail={"p1.jpg": down})
    with pytest.raises(VLMError):
        run_split(method, _photos(3), "free", tmp_path, progress=False)
    assert set(read_predictions(tmp_path / PREDICTIONS)) == {"p0.jpg"}


# -- measuring ------------------------------------------------------------------------------


def test_predicting_a_top_crop_gives_iou_1_and_full_accuracy(shared_data: Path) -> None:
    photos = eval_photos("gaicd", shared_data / "gaicd" / "official_layout", "test")
    predictions = {p.name: {"image": p.name, "box": list(p.pixels(p.truths[0]))} for p in photos}
    scored = score_predictions(photos, predictions, ranking="iou")
    summary = summarize(scored, ranked=True)
    assert summary["iou"] == pytest.approx(1.0)
    assert summary["bde"] == pytest.approx(0.0, abs=1e-9)
    # The top crop has IoU 1 with itself, so it ranks first: a hit at every N.
    assert summary["acc1_5"] == summary["acc1_10"] == pytest.approx(1.0)
    assert set(metrics.score_keys()) <= set(summary)


def test_metrics_of_a_shifted_box_match_the_hand_computed_values() -> None:
    photo = _photo("a.jpg", [Box(0.0, 0.0, 0.5, 0.5)], (3.0,), size=(400, 200))
    # Truth: (0, 0, 200, 100); prediction shifted right by 100 px.
    predictions = {"a.jpg": {"box": [100, 0, 300, 100]}}
    scored = score_predictions([photo], predictions)
    values = scored[0].values
    assert values["iou"] == pytest.approx(100 * 100 / (2 * 200 * 100 - 100 * 100))
    assert values["bde"] == pytest.approx((100 / 400 + 100 / 400 + 0 + 0) / 4)
    assert "srcc" not in values


def test_photos_without_a_prediction_are_left_out_and_nothing_is_an_error() -> None:
    photos = _photos(2)
    scored = score_predictions(photos, {"p0.jpg": {"box": [40, 30, 360, 270]}})
    assert [s.photo.name for s in scored] == ["p0.jpg"]
    assert summarize(scored, ranked=False)["iou"] == pytest.approx(1.0)


def _six(size=(600, 100)) -> EvalPhoto:
    """Six side-by-side crops of MOS 6 down to 1, on a 600x100 photo."""
    crops = [Box(i / 6, 0.0, (i + 1) / 6, 1.0) for i in range(6)]
    return _photo("six.jpg", crops, (6.0, 5.0, 4.0, 3.0, 2.0, 1.0), size=size)


def test_the_two_rankings_measure_the_same_line_differently() -> None:
    photo = _six()
    # The predicted crop is the best one (MOS 6); the method's own scores rank it last.
    line = {"box": [0, 0, 100, 100], "crop_scores": [0.1, 0.9, 0.8, 0.2, 0.3, 0.95]}
    by_iou = score_predictions([photo], {"six.jpg": line}, ranking="iou")[0].values
    by_scorer = score_predictions([photo], {"six.jpg": line}, ranking="scorer")[0].values
    # IoU rank: the predicted crop has IoU 1, every other crop 0: MOS 6 comes first.
    assert by_iou["acc1_5"] == 1.0
    # Scorer rank: MOS 1, 5, 4, 2, 3, 6 in that order. The 5th best MOS is 2, so the top
    # 1..4 hold 0, 1, 2 and 3 hits: Acc 0, 1/2, 2/3, 3/4.
    assert [by_scorer[f"acc{k}_5"] for k in (1, 2, 3, 4)] == pytest.approx([0, 1 / 2, 2 / 3, 3 / 4])
    # Spearman by hand: score ranks 1 5 4 2 3 6 against MOS ranks 6 5 4 3 2 1, sum d^2 52.
    assert by_scorer["srcc"] == pytest.approx(1 - 6 * 52 / (6 * 35))
    assert by_iou["iou"] == by_scorer["iou"] == 1.0  # the box metrics do not change


def test_a_line_without_crop_scores_is_measured_but_not_ranked_by_the_scorer() -> None:
    photo = _six()
    scored = score_predictions([photo], {"six.jpg": {"box": [0, 0, 100, 100]}}, ranking="scorer")
    assert "srcc" not in scored[0].values and scored[0].values["iou"] == 1.0
    short = {"box": [0, 0, 100, 100], "crop_scores": [0.5, 0.4]}  # not one a crop
    assert "srcc" not in score_predictions([photo], {"six.jpg": short}, ranking="scorer")[0].values


def test_a_run_writes_the_methods_score_of_each_annotated_crop(scripted, tmp_path: Path) -> None:
    method = scripted(lambda _: Box.whole())
    outcome = run_split(method, [_six()], "free", tmp_path, progress=False, score_crops=True)
    assert outcome.cropped == 1
    line = json.loads((tmp_path / PREDICTIONS).read_text())
    # The scripted method scores a box by its left edge: annotation order is kept.
    assert line["crop_scores"] == pytest.approx([i / 6 for i in range(6)], abs=1e-6)
