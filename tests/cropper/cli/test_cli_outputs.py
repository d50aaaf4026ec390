"""Nothing lost, nothing overwritten: what ``cropper crop`` writes, checked before any work."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cropper.cli.main import main
from cropper.testing.openai_server import OpenAICompatibleServer, default_responder
from cropper.testing.synthetic import synthetic_photo

NO_MODELS = ["--clip", "none", "--head", "none", "--index", "none"]


def crop(server, *args) -> int:
    return main(["crop", *map(str, args), "--vlm", server.url, *NO_MODELS])


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def shoot(folder: Path, names=("a.jpg", "b.jpg", "sub/c.jpg")) -> Path:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(i, size=(200, 150)).save(folder / name)
    return folder


# -- no input ever overwritten ----------------------------------------------------------


def test_top_k_extras_never_overwrite_the_input_photo(server, tmp_path, capsys):
    folder = tmp_path / "tk"
    folder.mkdir()
    synthetic_photo(1, size=(400, 300)).save(folder / "beach.top2.jpg")
    before = (folder / "beach.top2.jpg").read_bytes()
    code = crop(server, folder / "beach.top2.jpg", "-o", folder / "beach.jpg", "--top-k", "3")
    assert code == 2
    assert "would overwrite the input photo" in capsys.readouterr().err
    assert (folder / "beach.top2.jpg").read_bytes() == before and server.chat_requests == []


def test_top_k_extras_never_overwrite_another_photos_crop(server, tmp_path, capsys):
    photos = shoot(tmp_path / "in", ("a.jpg", "a.top2.jpg"))
    assert crop(server, photos, "--out", tmp_path / "out", "--top-k", "2") == 2
    err = capsys.readouterr().err
    assert "would be written for both" in err and "a.top2.jpg" in err
    assert server.chat_requests == []  # refused before any work


def test_an_output_file_name_that_is_no_image_is_refused_before_the_crop(
    server, tmp_path, capsys
):
    photo = shoot(tmp_path, ("a.jpg",)) / "a.jpg"
    assert crop(server, photo, "-o", tmp_path / "out.xyz") == 2
    assert "needs an image file name" in capsys.readouterr().err
    assert server.chat_requests == []


def test_an_out_without_a_suffix_is_a_folder_even_for_one_photo(server, tmp_path):
    photos = shoot(tmp_path / "in", ("a.jpg",))
    assert crop(server, photos, "--out", tmp_path / "out") == 0
    assert (tmp_path / "out" / "a.jpg").is_file() and lines(tmp_path / "out")[0]["name"] == "a.jpg"


# -- one writer per output folder ------------------------------------------------------------


def _slow(request):
    time.sleep(0.3)
    return default_responder(request)


def test_a_second_run_into_the_same_out_is_refused_or_waits(tmp_path):
    photos = shoot(tmp_path / "in", [f"p{i}.jpg" for i in range(4)])
    out = tmp_path / "out"
    with OpenAICompatibleServer(responder=_slow) as server:
        argv = [sys.executable, "-m", "cropper.cli", "crop", str(photos), "--out", str(out),
                "--vlm", server.url, *NO_MODELS, "--concurrency", "1"]  # fmt: skip
        first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not server.chat_requests and time.monotonic() < deadline:
            time.sleep(0.05)  # the first run holds the lock once it asks the server
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        waited = subprocess.run([*argv, "--wait"], capture_output=True, text=True, timeout=120)
        first.wait(timeout=120)
    assert refused.returncode == 2
    err = refused.stderr.strip().splitlines()
    assert len(err) == 1 and "is being written by another run (pid" in err[0]
    assert "cropper crop --out" in err[0] and "--wait" in err[0]
    assert first.returncode == 0 and waited.returncode == 0
    assert "already done" in waited.stderr  # it waited, then found the work done
    assert sorted(x["name"] for x in lines(out)) == [f"p{i}.jpg" for i in range(4)]


# -- resume is keyed by the photo, not the spelling of its path -----------------------------


def test_resume_does_not_depend_on_how_the_folder_is_spelled(server, tmp_path, monkeypatch):
    shoot(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    assert crop(server, "photos", "--out", "out") == 0
    asked = len(server.chat_requests)
    assert crop(server, tmp_path / "photos", "--out", tmp_path / "out") == 0
    assert len(server.chat_requests) == asked  # nothing cropped twice
    assert sorted(x["name"] for x in lines(tmp_path / "out")) == ["a.jpg", "b.jpg", "sub/c.jpg"]


def test_a_valid_last_line_without_its_newline_is_kept(server, tmp_path):
    photos = shoot(tmp_path / "in")
    out = tmp_path / "out"
    assert crop(server, photos, "--out", out) == 0
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text.rstrip("\n"))  # an editor dropped the newline
    asked = len(server.chat_requests)
    assert crop(server, photos, "--out", out) == 0
    assert len(server.chat_requests) == asked  # the last photo was not cropped again
    assert (out / "results.jsonl").read_text() == text


# -- debug folders and outputs inside the input folder --------------------------------------


def test_debug_folders_of_photos_sharing_a_stem_do_not_collide(server, tmp_path):
    photos = shoot(tmp_path / "in", ("x.jpg", "x.png"))
    debug = tmp_path / "debug"
    assert crop(server, photos, "--debug-dir", debug) == 0
    traces = [json.loads((debug / n / "trace.json").read_text()) for n in ("x.jpg", "x.png")]
    assert {t["image"] for t in traces} == {str(photos / "x.jpg"), str(photos / "x.png")}


def test_out_and_debug_dir_inside_the_input_folder_are_never_cropped_as_photos(server, tmp_path):
    photos = shoot(tmp_path / "shoot")
    args = (photos, "--out", photos / "cropped", "--debug-dir", photos / "debug", "--top-k", "2")
    assert crop(server, *args) == 0
    files = sum(1 for p in photos.rglob("*") if p.is_file())
    asked = len(server.chat_requests)
    assert crop(server, *args) == 0  # the rerun resumes: nothing refused, nothing cropped
    assert len(server.chat_requests) == asked
    assert sum(1 for p in photos.rglob("*") if p.is_file()) == files
    assert sorted(x["name"] for x in lines(photos / "cropped")) == ["a.jpg", "b.jpg", "sub/c.jpg"]


def test_stale_temporary_files_of_a_killed_run_are_removed(server, tmp_path):
    photos = shoot(tmp_path / "in")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    for stale in (out / ".a.jpg.k3j9x0q1.tmp", out / "sub" / ".c.jpg.zz81ab_c.tmp"):
        stale.write_bytes(b"\xff" * 1000)
    (out / "notes.tmp").write_text("not ours")
    assert crop(server, photos, "--out", out) == 0
    assert [p.name for p in out.rglob("*.tmp")] == ["notes.tmp"]


# -- writing fails: one line, before the work when it can be known ---------------------------


def test_an_out_that_is_a_file_is_refused_before_any_work(server, tmp_path, capsys):
    photos = shoot(tmp_path / "in")
    (tmp_path / "taken").write_text("a file")
    assert crop(server, photos, "--out", tmp_path / "taken") == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err and server.chat_requests == []


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    server, tmp_path, capsys, monkeypatch
):
    import cropper.cli.crop

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cropper.cli.crop, "atomic_path", read_only)
    photo = shoot(tmp_path / "in", ("a.jpg",)) / "a.jpg"
    assert crop(server, photo, "-o", tmp_path / "ro" / "a.jpg") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be written (Read-only file system)" in err and len(err.splitlines()) == 1
    assert server.chat_requests == []


def test_a_full_disk_stops_the_run_in_one_line(server, tmp_path, capsys, monkeypatch):
    import cropper.cli.crop

    def full(image, path, **options):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cropper.cli.crop, "save_image", full)
    photos = shoot(tmp_path / "in")
    assert crop(server, photos, "--out", tmp_path / "out", "--concurrency", "1") == 2
    # (The test server may print its own traceback for requests cut short by the stop.)
    ours = [x for x in capsys.readouterr().err.splitlines() if x.startswith("cropper:")]
    assert ours[-1].startswith("cropper: error: cannot write")
    assert "No space left on device" in ours[-1] and "free some space" in ours[-1]


# -- what is printed ------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file names are always UTF-8")
def test_a_file_name_that_is_not_utf8_is_printed_escaped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    synthetic_photo(0, size=(200, 150)).save(folder / name)
    with OpenAICompatibleServer() as server:
        run = subprocess.run(
            [sys.executable, "-m", "cropper.cli", "crop", str(folder), "--vlm", server.url,
             *NO_MODELS],  # fmt: skip
            capture_output=True,
            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    assert b"caf\\udce9.jpg: box" in run.stdout and b"Traceback" not in run.stderr


def test_a_reader_that_goes_away_stops_the_run_quietly(tmp_path):
    photos = shoot(tmp_path / "in", [f"p{i}.jpg" for i in range(6)])
    with OpenAICompatibleServer(responder=_slow) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "cropper.cli", "crop", str(photos), "--vlm", server.url,
             *NO_MODELS, "--concurrency", "1", "--json"],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout.readline()  # | head -1
        process.stdout.close()
        code = process.wait(timeout=120)
        err = process.stderr.read().decode()
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err
