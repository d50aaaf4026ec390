"""eval scores --score-with: cropper's own score terms, alone or combined, measured."""

from __future__ import annotations

import json

import pytest

from cropper.cli.main import main
from cropper.testing.synthetic import synthetic_photo

pytestmark = pytest.mark.slow

CROPS = [[0, 0, 100, 75], [50, 40, 150, 115], [0, 0, 160, 120], [20, 10, 90, 60]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    lines = []
    for i in range(3):
        synthetic_photo(i, size=(160, 120)).save(root / f"p{i}.jpg")
        lines.append({"image": f"p{i}.jpg", "crops": CROPS, "scores": [3.0, 2.0, 4.5, 1.0]})
    (root / "crops.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "crops.jsonl"


def run(dataset, predictions, *extra):
    return main(["eval", "scores", "--dataset", "jsonl", "--root", str(dataset),
                 "--predictions", str(predictions), "--no-progress", *map(str, extra)])  # fmt: skip


@pytest.mark.parametrize(
    "weights, terms",
    [
        ("knowledge", {"knowledge"}),
        ("area=1,knowledge=2", {"area", "knowledge"}),
        ("area", {"area"}),
    ],
)
def test_terms_alone_and_combined(dataset, tmp_path, tiny_clip, capsys, weights, terms):
    predictions = tmp_path / "p.jsonl"
    assert run(dataset, predictions, "--score-with", weights, "--clip", tiny_clip) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["photos"] == 3 and -1 <= metrics["srcc"] <= 1
    lines = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert [x["image"] for x in lines] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    for line in lines:
        assert set(line["terms"]) == terms and len(line["scores"]) == len(CROPS)
        w = {"knowledge": 2.0 if "area" in terms else 1.0, "area": 1.0}
        for j, total in enumerate(line["scores"]):
            mean = sum(w[t] * line["terms"][t][j] for t in terms) / sum(w[t] for t in terms)
            assert total == pytest.approx(mean, abs=1e-5)
    if terms == {"area"}:  # area ranks the whole photo first: as the planted MOS does
        assert all(x["scores"].index(max(x["scores"])) == 2 for x in lines)
        assert metrics["acc1_5"] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--score-with", "knowledge", "--clip", "none"], "cannot compute knowledge"),
        (["--score-with", "beauty=1"], "TERM=WEIGHT"),
        (["--score-with", "area=0"], "weighs no term"),
    ],
)
def test_what_cannot_be_measured_is_one_clear_error(dataset, tmp_path, capsys, extra, message):
    assert run(dataset, tmp_path / "p.jsonl", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.jsonl").exists()
