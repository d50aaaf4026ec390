"""``cropper crop DIR|GLOB|@list --out OUTDIR``: folders of photos, results.jsonl, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cropper.cli.main import main
from cropper.testing.openai_server import OpenAICompatibleServer, default_responder
from cropper.testing.synthetic import synthetic_photo

NO_MODELS = ["--clip", "none", "--head", "none", "--index", "none"]


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    (folder / "day2").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.png", "day2/c.jpg", "day2/d.jpg"]):
        synthetic_photo(i, size=(200, 150)).save(folder / name)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_a_folder_is_cropped_into_a_mirror_with_a_results_line_each(shoot, tmp_path) -> None:
    out = tmp_path / "cropped"
    with OpenAICompatibleServer() as server:
        argv = ["crop", str(shoot), "--out", str(out), "--vlm", server.url, *NO_MODELS,
                "--task", "aspect", "--ratio", "4:5", "--concurrency", "3", "--json"]  # fmt: skip
        assert main(argv) == 0
        first = len(server.chat_requests)
        assert main(argv) == 0  # everything is done: nothing is asked again
        assert len(server.chat_requests) == first
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*"))
    crops.remove(".cropper.lock")  # the folder's lock file, kept: it names the last writer
    assert crops == ["a.jpg", "b.png", "day2/c.jpg", "day2/d.jpg", "results.jsonl", "settings.json"]
    lines = _lines(out)
    assert sorted(x["image"] for x in lines) == sorted(str(p) for p in shoot.rglob("*.*g"))
    for line in lines:
        left, top, right, bottom = line["box"]
        assert abs((right - left) / (bottom - top) - 4 / 5) < 0.02
        assert line["task"] == "aspect" and 0 <= line["score"] <= 1


def test_globs_and_lists_name_photos_too(shoot, tmp_path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{shoot / 'a.jpg'}\n\n{shoot / 'day2' / 'c.jpg'}\n")
    out = tmp_path / "cropped"
    with OpenAICompatibleServer() as server:
        argv = ["crop", f"@{listing}", str(shoot / "day2" / "d*.jpg"), "--out", str(out),
                "--vlm", server.url, *NO_MODELS]  # fmt: skip
        assert main(argv) == 0
    written = sorted(p.name for p in out.iterdir() if p.name != ".cropper.lock")
    assert written == ["a.jpg", "c.jpg", "d.jpg", "results.jsonl", "settings.json"]


def test_an_out_folder_that_is_the_input_folder_is_refused(shoot, capsys) -> None:
    assert main(["crop", str(shoot), "--out", str(shoot), "--vlm", "http://127.0.0.1:9/v1",
                 *NO_MODELS]) == 2  # fmt: skip
    assert "would overwrite the input photo" in capsys.readouterr().err


def _slow(request):
    time.sleep(0.15)
    return default_responder(request)


def test_a_killed_run_resumes_with_nothing_redone_or_repeated(shoot, tmp_path) -> None:
    out = tmp_path / "cropped"
    with OpenAICompatibleServer(responder=_slow) as server:
        argv = [sys.executable, "-m", "cropper.cli", "crop", str(shoot), "--out", str(out),
                "--vlm", server.url, *NO_MODELS, "--concurrency", "1"]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "results.jsonl").is_file() and _lines(out):
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # no chance to clean up
        child.wait()
        done_before = {x["image"] for x in _lines(out)}
        assert 1 <= len(done_before) < 4
        asked_before = len(server.chat_requests)
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        asked_after = len(server.chat_requests) - asked_before
    images = [x["image"] for x in _lines(out)]
    assert sorted(images) == sorted(set(images)) and len(images) == 4  # each photo once
    assert asked_after <= 3 * (4 - len(done_before)) + 3  # at most the photo cut off is redone


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_concurrency_below_one_is_a_usage_error(value, shoot, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["crop", str(shoot), "--vlm", "none", "--concurrency", value])
    assert exit_.value.code == 2
    assert "--concurrency: must be a whole number >= 1" in capsys.readouterr().err


def test_an_unknown_pixel_budget_is_one_clear_line(shoot, capsys) -> None:
    argv = ["crop", str(shoot), "--vlm", "none", *NO_MODELS, "--pixel-budget", "qwen9"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cropper: error: unknown pixel budget 'qwen9': use none, qwen2.5-vl, qwen3-vl, "
        "or NAME:MAX_PIXELS such as qwen2.5-vl:1003520"
    ]


@pytest.mark.slow
def test_ten_kills_at_random_moments_then_a_rerun_leave_every_photo_once(tmp_path) -> None:
    """SIGKILL at random moments (startup, mid-round, mid-write), then a rerun to the end."""
    import random

    from PIL import Image

    photos = tmp_path / "shoot"
    names = [f"{d}/p{i}.jpg" for d in ("a", "b") for i in range(20)]
    for i, name in enumerate(names):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(i, size=(240, 180)).save(photos / name)
    out = tmp_path / "cropped"
    rng = random.Random(16)
    killed_with = []  # lines written when each kill came: the kills must land mid-run
    with OpenAICompatibleServer(latency=0.15) as server:
        argv = [sys.executable, "-m", "cropper.cli", "crop", str(photos), "--out", str(out),
                "--vlm", server.url, *NO_MODELS, "--concurrency", "2", "--top-k", "2"]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for _ in range(10):
            child = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(rng.uniform(0.5, 3.0))
            child.send_signal(signal.SIGKILL)
            child.wait()
            killed_with.append(len(_lines(out)) if (out / "results.jsonl").exists() else 0)
        final = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert killed_with[-1] < len(names)  # every kill came before the work was done
    records = _lines(out)
    assert sorted(x["name"] for x in records) == sorted(names)  # every photo, once
    for name in names:
        with Image.open(out / name) as crop:
            crop.load()  # a whole, valid image
    assert not [p for p in out.rglob("*.tmp")], "temporary files were left behind"
