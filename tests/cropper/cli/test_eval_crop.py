"""``cropper eval crop`` from the command line, with a baseline and with the real loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropper.cli.main import main
from cropper.data import metrics
from cropper.testing.openai_server import OpenAICompatibleServer


@pytest.fixture
def gaicd_root(shared_data: Path) -> Path:
    return shared_data / "gaicd" / "official_layout"


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("baseline", ["whole", "centre", "saliency", "smartcrop"])
def test_a_baseline_run_prints_the_metrics_as_its_last_line(
    baseline: str, gaicd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["eval", "crop", "--dataset", "gaicd", "--root", str(gaicd_root), "--split", "test",
            "--baseline", baseline, "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    result = _last_json(capsys.readouterr().out)
    assert set(metrics.score_keys()) | {"iou", "bde"} <= set(result)
    assert (result["photos"], result["measured"], result["failed"]) == (2, 2, 0)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["method"] == f"baseline: {baseline}"
    assert report["metrics"]["iou"] == pytest.approx(result["iou"])
    if baseline == "whole":  # the whole photo against the best crops, by hand
        boxes = [json.loads(x)["box"] for x in (tmp_path / "predictions.jsonl").open()]
        assert all(b[0] == 0 and b[1] == 0 for b in boxes)


def test_the_loop_runs_through_a_server_and_keeps_secrets_out(
    gaicd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with OpenAICompatibleServer(api_key="sk-secret-123") as server:
        argv = ["eval", "crop", "--dataset", "gaicd", "--root", str(gaicd_root), "--split",
                "test", "--vlm", server.url, "--api-key", "sk-secret-123", "--clip", "none",
                "--head", "none", "--index", "none", "--out", str(tmp_path),
                "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        chats = len(server.chat_requests)
        url = server.url
    result = _last_json(capsys.readouterr().out)
    assert (result["measured"], result["failed"]) == (2, 0)
    assert chats == 2 * 3  # a propose and two refine rounds per photo
    report = (tmp_path / "metrics.json").read_text()
    assert json.loads(report)["vlm"] == url
    for name in ("metrics.json", "report.md", "predictions.jsonl"):
        assert "sk-secret-123" not in (tmp_path / name).read_text()


def test_an_unknown_dataset_root_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["eval", "crop", "--dataset", "gaicd", "--root", str(tmp_path / "nope"),
            "--baseline", "whole", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cropper: error: gaicd")


def test_the_composition_step_and_score_weights_are_measured_and_reported(
    gaicd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with OpenAICompatibleServer() as server:
        argv = ["eval", "crop", "--dataset", "gaicd", "--root", str(gaicd_root), "--split",
                "test", "--vlm", server.url, "--clip", "none", "--head", "none", "--index",
                "none", "--compose", "--score-weights", "area=1", "--out", str(tmp_path),
                "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        chats = len(server.chat_requests)
    assert _last_json(capsys.readouterr().out)["measured"] == 2
    assert chats == 2 * 4  # a compose step, then a propose and two refine rounds per photo
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["config"]["compose"] is True and report["score_weights"] == "area=1"


def test_top_k_reports_the_best_iou_among_the_diverse_crops(
    gaicd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with OpenAICompatibleServer() as server:
        argv = ["eval", "crop", "--dataset", "gaicd", "--root", str(gaicd_root), "--split",
                "test", "--vlm", server.url, "--clip", "none", "--head", "none", "--index",
                "none", "--top-k", "4", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    result = _last_json(capsys.readouterr().out)
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").open()]
    assert all(line["top"][0] == line["box"] and len(line["top"]) <= 4 for line in lines)
    # The chosen crop is one of the k, so the best of them is at least as good.
    assert result["iou_top_k"] >= result["iou"] - 1e-9
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"]["iou_top_k"] == pytest.approx(result["iou_top_k"])


@pytest.mark.parametrize("ranking", ["scorer", "iou"])
def test_the_ranking_protocol_is_chosen_recorded_and_said(
    ranking: str, gaicd_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["eval", "crop", "--dataset", "gaicd", "--root", str(gaicd_root), "--split", "test",
            "--baseline", "centre", "--ranking", ranking, "--out", str(tmp_path),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"ranking: {ranking}, " in err
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["protocol"]["ranking"] == ranking and report["ranked"] == 2
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").open()]
    # The centre baseline's own scorer is a crop's area: the scores it wrote are the areas.
    if ranking == "scorer":
        from cropper.evaluation.harness import eval_photos

        photos = {p.name: p for p in eval_photos("gaicd", gaicd_root, "test")}
        for line in lines:
            areas = [c.area for c in photos[line["image"]].crops]
            assert line["crop_scores"] == pytest.approx(areas, abs=1e-6)
    else:
        assert all("crop_scores" not in line for line in lines)
    table = (tmp_path / "report.md").read_text()
    assert (f"| acc5 | free · {ranking} |" in table) and ("84.3" in table) == (ranking == "scorer")
