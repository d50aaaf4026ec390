"""``cropper crop`` for every format at once: several ratios, exact sizes, regions, faces.

Through the real server backend against a local OpenAI-compatible server on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cropper.cli.main import main
from cropper.testing.synthetic import synthetic_photo

NO_MODELS = ["--clip", "none", "--head", "none", "--index", "none"]


def crop(server, *args) -> int:
    return main(["crop", *map(str, args), "--vlm", server.url, *NO_MODELS])


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def shoot(folder: Path, names=("a.jpg", "b.png", "sub/c.jpg")) -> Path:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(i, size=(400, 300)).save(folder / name)
    return folder


def ratio_of(path: Path) -> float:
    with Image.open(path) as image:
        return image.width / image.height


def test_a_folder_cropped_to_three_ratios_saves_each_and_resumes(server, tmp_path, capsys):
    photos, out = shoot(tmp_path / "shoot"), tmp_path / "web"
    args = [photos, "--out", out, "--ratio", "1:1,4:5,16:9", "--size", "120", "--rounds", "0"]
    assert crop(server, *args) == 0
    for name in ("a", "b", "sub/c"):
        suffix = ".png" if name == "b" else ".jpg"
        for tag, ratio in (("1x1", 1.0), ("4x5", 0.8), ("16x9", 16 / 9)):
            path = out / f"{name}.{tag}{suffix}"
            with Image.open(path) as image:
                assert max(image.size) == 120 and image.format == ("PNG" if name == "b" else "JPEG")
            assert ratio_of(path) == pytest.approx(ratio, abs=0.02)
        assert not (out / f"{name}{suffix}").exists()  # no crop without its ratio
    records = {r["name"]: r for r in lines(out)}
    assert set(records) == {"a.jpg", "b.png", "sub/c.jpg"}
    for record in records.values():
        assert list(record["ratios"]) == ["1:1", "4:5", "16:9"]  # as the user wrote them
        for crop_ in record["ratios"].values():
            left, top, right, bottom = crop_["box"]
            assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
            assert 0 <= crop_["score"] <= 1 and len(crop_["focus"]) == 2
            assert max(crop_["size"]) == 120
    sent = len(server.chat_requests)
    assert sent == 3 * 3  # a request a ratio a photo, one round
    capsys.readouterr()
    # Run again: nothing to do. Lose one ratio's file: that photo alone is cropped again.
    assert crop(server, *args) == 0
    assert "3 photos already done" in capsys.readouterr().err
    assert len(server.chat_requests) == sent
    (out / "b.16x9.png").unlink()
    assert crop(server, *args) == 0
    assert len(server.chat_requests) == sent + 3 and (out / "b.16x9.png").exists()


def test_an_exact_size_implies_its_ratio(server, tmp_path, capsys):
    photo = tmp_path / "p.jpg"
    synthetic_photo(3, size=(400, 300)).save(photo)
    assert crop(server, photo, "-o", tmp_path / "out.jpg", "--size", "100x125", "--json") == 0
    line = json.loads(capsys.readouterr().out)
    assert line["task"] == "aspect" and line["size"] == [100, 125]
    with Image.open(tmp_path / "out.jpg") as image:
        assert image.size == (100, 125)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "16:9", "--size", "100x80"], "size 100x80 is not of ratio 16:9"),
        (["--ratio", "1:1,,4:5"], "--ratio 1:1,,4:5: an empty ratio in the list"),
        (["--keep", "1,2,3"], "keep box '1,2,3' is not valid: give x0,y0,x1,y1"),
        (["--size", "huge"], "size 'huge' is not valid"),
        (["--subject", "0.5,0.5", "--size", "100x80"], "fixes the ratio 100:80"),
    ],
)
def test_bad_format_flags_fail_in_one_line_before_any_request(
    server, tmp_path, capsys, args, message
):
    photo = tmp_path / "p.jpg"
    synthetic_photo(3, size=(400, 300)).save(photo)
    assert crop(server, photo, "-o", tmp_path / "out.jpg", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert server.chat_requests == []


def test_keep_and_avoid_regions_reach_the_prompt_and_the_crop(server, tmp_path, capsys):
    photo = tmp_path / "p.jpg"
    synthetic_photo(4, size=(400, 300)).save(photo)
    code = crop(
        server, photo, "--json", "--rounds", "0",
        "--keep", "0.1,0.1,0.3,0.3", "--keep", "0.6,0.2,0.7,0.4", "--avoid", "0.8,0.8,1,1",
    )  # fmt: skip
    assert code == 0
    left, top, right, bottom = json.loads(capsys.readouterr().out)["box"]
    assert left <= 40 and top <= 30 and right >= 280 and bottom >= 120  # both kept whole
    prompt = json.dumps(server.chat_requests[0].body["messages"])
    assert "must contain these regions whole: (100, 100, 300, 300); (600, 200, 700, 400)" in prompt
    assert "(800, 800, 1000, 1000)" in prompt


def test_quality_sets_the_saved_jpeg_quality(server, tmp_path):
    photo = tmp_path / "p.jpg"
    synthetic_photo(5, size=(400, 300)).save(photo)
    assert crop(server, photo, "-o", tmp_path / "q95.jpg", "--seed", "1") == 0
    assert crop(server, photo, "-o", tmp_path / "q30.jpg", "--seed", "1", "--quality", "30") == 0
    assert (tmp_path / "q30.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size
