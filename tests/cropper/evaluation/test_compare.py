"""eval compare: runs side by side, and figures measured differently marked by group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropper.cli.main import main
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.evaluation.compare import compare_runs, markdown
from cropper.evaluation.run import evaluate_crops


@pytest.fixture
def runs(scripted, layout: Path, tmp_path: Path) -> dict[str, Path]:
    """Four runs on GAICD's real test photos: two alike, one ranked by IoU, one on 1 photo."""
    made = {}
    plans = {
        "a": ({}, Box(0.05, 0.05, 0.95, 0.95)),
        "b": ({}, Box(0.1, 0.1, 0.9, 0.9)),
        "iou": ({"ranking": "iou"}, Box(0.1, 0.1, 0.9, 0.9)),
        "one": ({"limit": 1}, Box(0.1, 0.1, 0.9, 0.9)),
    }
    for name, (options, box) in plans.items():
        made[name] = tmp_path / name
        evaluate_crops(scripted(lambda _, b=box: b), "gaicd", layout, "test", made[name],
                       progress=False, settings={"method": f"scripted {name}"},
                       **options)  # fmt: skip
    return made


def _record(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_runs_measured_alike_are_not_marked(runs) -> None:
    comparison = compare_runs([runs["a"], runs["b"]])
    assert [row["run"] for row in comparison["runs"]] == [str(runs["a"]), str(runs["b"])]
    assert comparison["groups"] == {} and all(not r["marks"] for r in comparison["runs"])
    for row, name in zip(comparison["runs"], "ab", strict=True):
        assert row["metrics"] == _record(runs[name])["metrics"]
        assert row["method"] == f"scripted {name}"
        assert row["protocol"] == {"task": "free", "box_metrics": "reference", "ranking": "scorer"}
    table = markdown(comparison)
    assert "†" not in table
    # One row a run, its figures as report.md prints them (Acc in percent).
    a = _record(runs["a"])["metrics"]
    row = next(line for line in table.splitlines() if line.startswith(f"| {runs['a']} |"))
    assert f"| {a['iou']:.3f} | {a['bde']:.4f} | {100 * a['acc5']:.1f} |" in row
    assert "| free · reference · scorer | gaicd test (2 photos) |" in row


def test_a_run_of_another_ranking_is_marked_in_the_ranking_columns_only(runs) -> None:
    comparison = compare_runs([runs["a"], runs["iou"]])
    marks = {row["run"]: row["marks"] for row in comparison["runs"]}
    assert marks[str(runs["a"])]["acc5"] == 1 and marks[str(runs["iou"])]["acc5"] == 2
    assert "iou" not in marks[str(runs["a"])] and "bde" not in marks[str(runs["iou"])]
    assert [g["protocol"]["ranking"] for g in comparison["groups"]["srcc"]] == ["scorer", "iou"]
    table = markdown(comparison)
    assert " †1 |" in table and " †2 |" in table
    assert "- acc5: †1 free · scorer on gaicd test, photo set" in table
    assert "†2 free · iou on gaicd test" in table and f"({runs['iou']})" in table


def test_a_run_over_other_photos_is_marked_in_every_column(runs) -> None:
    comparison = compare_runs([runs["a"], runs["b"], runs["one"]])
    one = comparison["runs"][2]
    assert one["split"]["photos"] == 1
    assert set(one["marks"]) == set(comparison["metrics"])  # every figure: other photos
    assert all(row["marks"]["iou"] == 1 for row in comparison["runs"][:2])
    assert one["marks"]["iou"] == 2


def test_options_a_run_changed_and_an_unrecorded_protocol_are_shown(runs, tmp_path) -> None:
    record = _record(runs["a"])
    record["config"] = {"compose": True, "top_k": 1, "crops": 6}  # only compose differs
    record.pop("protocol")
    record.pop("photo_set")  # as a run made before either was recorded
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps(record))
    comparison = compare_runs([runs["a"], old])
    row = comparison["runs"][1]
    assert row["options"] == {"compose": True} and row["protocol"] == "not recorded"
    assert set(row["marks"]) == set(comparison["metrics"])
    table = markdown(comparison)
    assert "compose=True" in table and "- `not recorded`: a run made before" in table


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "no metrics.json: give folders that cropper eval crop wrote"),
     ("{broken", "cannot be read"), ('{"iou": 1}', 'not the metrics.json of an eval crop run')],
)  # fmt: skip
def test_a_folder_that_is_no_run_is_one_line(tmp_path: Path, content, match) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    if content is not None:
        (folder / "metrics.json").write_text(content)
    with pytest.raises(ConfigError, match=match) as caught:
        compare_runs([folder])
    assert "\n" not in str(caught.value)


def test_the_command_prints_markdown_then_json_and_writes_out(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "compare.md"
    assert main(["eval", "compare", str(runs["a"]), str(runs["iou"]), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    result = json.loads(stdout.strip().splitlines()[-1])
    assert [row["run"] for row in result["runs"]] == [str(runs["a"]), str(runs["iou"])]
    assert stderr == out.read_text() and stderr.startswith("| run | method |")
    assert main(["eval", "compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.json" in err[0]
