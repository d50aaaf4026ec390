"""Inputs at the edges: special files, over-long paths, bad masks, subjects, ratios, weights.

Each failure is one line naming the input, and in a batch it fails that photo alone.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cropper import Cropper
from cropper.agent.result import CropResult
from cropper.cli.main import main
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ImageError
from cropper.core.images import load_image
from cropper.core.tasks import parse_ratio, subject_from_spec
from cropper.scoring.scorer import Scorer, Weights
from cropper.testing.scripted import ScriptedVLM, crops_reply

NO_MODELS = ["--clip", "none", "--head", "none", "--index", "none"]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def _photo(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _finishes(call: Callable[[], Any], fifo: Path, seconds: float = 10) -> Any:
    """``call()``, failing the test (not hanging it) if it blocks on ``fifo``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # handed to the test below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer lets the reader go
        thread.join(seconds)
        pytest.fail(f"opening the FIFO {fifo} hung the run")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _vlm_cropper() -> Cropper:
    reply = crops_reply((100, 100, 900, 900))
    return Cropper(
        vlm=ScriptedVLM(lambda conversation, sampling: [reply] * sampling.n),
        clip=None,
        head=None,
        index=None,
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# -- 1. special files -------------------------------------------------------------------


@needs_fifo
def test_a_fifo_named_like_a_photo_is_refused_without_opening_it(tmp_path):
    fifo = _fifo(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="is not a regular file") as caught:
        _finishes(lambda: load_image(fifo), fifo)
    assert _one_line(caught.value).startswith(f"{fifo}: ")
    assert "named pipe" in str(caught.value)


def test_a_socket_named_like_a_photo_is_refused(tmp_path, monkeypatch):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this system")
    monkeypatch.chdir(tmp_path)  # a short name: socket paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("s.jpg")
        with pytest.raises(ImageError, match=r"s\.jpg: is not a regular file \(a socket\)"):
            load_image("s.jpg")


def test_a_device_is_refused_as_no_regular_file():
    if not os.path.exists(os.devnull) or os.name != "posix":
        pytest.skip("no /dev/null")
    with pytest.raises(ImageError, match="is not a regular file .a character device."):
        load_image(os.devnull)


@needs_fifo
def test_a_fifo_in_a_batch_fails_that_photo_alone(tmp_path):
    good = _photo(tmp_path / "a.jpg")
    fifo = _fifo(tmp_path / "x.jpg")
    results = _finishes(lambda: _vlm_cropper().crop_batch([str(good), str(fifo)]), fifo)
    assert isinstance(results[0], CropResult)
    assert isinstance(results[1], ImageError)
    assert "is not a regular file" in _one_line(results[1])


@needs_fifo
def test_a_folder_holding_a_fifo_crops_the_photos_and_names_the_fifo(tmp_path, capsys):
    folder = tmp_path / "shoot"
    folder.mkdir()
    _photo(folder / "a.jpg")
    fifo = _fifo(folder / "x.jpg")
    out = tmp_path / "out"
    args = ["crop", str(folder), "--out", str(out), "--vlm", "none", *NO_MODELS]
    assert _finishes(lambda: main(args), fifo) == 1
    assert (out / "a.jpg").is_file() and not (out / "x.jpg").exists()
    err = capsys.readouterr().err
    assert "cropper: 1 of 2 photos failed:" in err
    assert f"  {fifo}: is not a regular file (a named pipe (FIFO))" in err


# -- 2. over-long paths -----------------------------------------------------------------


def _long_paths(tmp_path: Path) -> list[Path]:
    return [
        tmp_path / ("y" * 300 + ".jpg"),  # one name past the file system's 255 bytes
        tmp_path.joinpath(*["d" * 200] * 30, "photo.jpg"),  # past PATH_MAX
    ]


@pytest.mark.parametrize("which", [0, 1], ids=["long-name", "long-path"])
def test_a_path_too_long_is_one_short_line_naming_it(tmp_path, which):
    path = _long_paths(tmp_path)[which]
    with pytest.raises(ImageError, match="the path is too long for the file system") as caught:
        load_image(path)
    message = _one_line(caught.value)
    shown = message.split(": ")[0]
    assert shown.startswith(str(path)[:50]) and shown.endswith(path.name[-50:])
    assert "..." in shown and len(message) < 400


def test_a_path_too_long_given_to_crop_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="too long"):
        Cropper(vlm=None, clip=None, head=None, index=None).crop(str(_long_paths(tmp_path)[0]))


def test_a_path_too_long_in_a_list_fails_that_photo_alone(tmp_path, capsys):
    good = _photo(tmp_path / "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\n{_long_paths(tmp_path)[0]}\n")
    out = tmp_path / "out"
    code = main(["crop", f"@{listing}", "--out", str(out), "--vlm", "none", *NO_MODELS])
    assert code == 1 and (out / "a.jpg").is_file()
    err = capsys.readouterr().err
    assert "cropper: 1 of 2 photos failed:" in err and "too long for the file system" in err


def test_a_list_whose_own_path_is_too_long_is_one_short_line(tmp_path):
    from cropper.cli.inputs import expand_inputs

    with pytest.raises(ConfigError, match="cannot read the list of photos") as caught:
        expand_inputs([f"@{_long_paths(tmp_path)[0]}"])
    assert len(_one_line(caught.value)) < 400


def test_a_batch_keeps_going_past_a_path_too_long(tmp_path):
    good = _photo(tmp_path / "a.jpg")
    long = str(_long_paths(tmp_path)[0])
    results = _vlm_cropper().crop_batch([long, str(good)])
    assert isinstance(results[0], ImageError) and isinstance(results[1], CropResult)


# -- 3. the subject mask file -----------------------------------------------------------

SIZE = (40, 30)


def _bad_masks(tmp_path: Path) -> list[tuple[str, Path, str]]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a PNG at all\n")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    return [
        ("corrupt", corrupt, "not an image Pillow can read"),
        ("folder", folder, "is a folder, not a mask image"),
        ("too-long", tmp_path / ("m" * 300 + ".png"), "path is too long"),
        ("missing", tmp_path / "gone.png", "does not exist"),
    ]


@pytest.mark.parametrize("case", range(4), ids=["corrupt", "folder", "too-long", "missing"])
def test_a_bad_mask_file_is_a_config_error_naming_it(tmp_path, case):
    _, path, message = _bad_masks(tmp_path)[case]
    with pytest.raises(ConfigError, match=message) as caught:
        subject_from_spec(str(path), SIZE)
    assert _one_line(caught.value).startswith(f"subject mask {str(path)[:40]}")


@needs_fifo
def test_a_fifo_as_the_mask_is_refused_without_hanging(tmp_path):
    fifo = _fifo(tmp_path / "mask.png")
    with pytest.raises(ConfigError, match="subject mask .*is not a regular file"):
        _finishes(lambda: subject_from_spec(str(fifo), SIZE), fifo)


def test_an_unreadable_mask_says_it_cannot_be_read(tmp_path):
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root reads every file")
    mask = tmp_path / "locked.png"
    Image.new("L", SIZE, 255).save(mask)
    mask.chmod(0)
    with pytest.raises(ConfigError, match="subject mask .*locked.png: cannot read the file"):
        subject_from_spec(str(mask), SIZE)


def test_a_good_mask_file_still_gives_its_subject(tmp_path):
    pixels = np.zeros(SIZE[::-1], dtype=np.uint8)
    pixels[10:20, 20:30] = 255
    Image.fromarray(pixels).save(tmp_path / "m.png")
    subject = subject_from_spec(str(tmp_path / "m.png"), SIZE)
    assert subject.source == "mask" and subject.box.to_pixels(SIZE) == (20, 10, 30, 20)


def test_a_corrupt_mask_fails_each_photo_of_a_batch_not_the_run(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    photos = [str(_photo(tmp_path / f"{i}.jpg")) for i in range(2)]
    for cropper in (_vlm_cropper(), Cropper(vlm=None, clip=None, head=None, index=None)):
        results = cropper.crop_batch(photos, task="subject", subject=str(corrupt))
        assert all(isinstance(r, ConfigError) and "subject mask" in str(r) for r in results)


def test_a_corrupt_mask_on_the_command_line_is_one_line_a_photo(tmp_path, capsys):
    corrupt = tmp_path / "mask.png"
    corrupt.write_bytes(b"not a png")
    photos = [str(_photo(tmp_path / f"{i}.jpg")) for i in range(2)]
    args = ["crop", *photos, "--task", "subject", "--subject", str(corrupt), "--vlm", "none"]
    assert main([*args, *NO_MODELS]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cropper: 2 of 2 photos failed:" in err
    assert f"subject mask {corrupt}: not an image Pillow can read" in err


# -- 4. subjects and ratios -------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [("a", "b"), (None, None), ("0.1", None), (0.1, 0.2, [], 0.4), (10**400, 0.5)],
    ids=["letters", "nones", "a-none", "a-list", "huge-int"],
)
def test_a_subject_that_is_not_numbers_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="must be numbers from 0 to 1") as caught:
        subject_from_spec(spec, SIZE)
    assert len(_one_line(caught.value)) < 200


@pytest.mark.parametrize(
    "ratio",
    [10**40, 10**400, (10**400, 1), (1, 10**400), "1" + "0" * 400 + ":1", 1e-300, (1e-300, 1e300),
     float("inf"), 1001, "1:1001", (2000, 1), 0.0009],
    ids=lambda r: repr(r)[:12],
)  # fmt: skip
def test_a_ratio_too_extreme_or_too_large_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match=r"1:1000 to 1000:1|is not valid") as caught:
        parse_ratio(ratio)
    assert len(_one_line(caught.value)) < 200


@pytest.mark.parametrize("ratio", ["1000:1", "1:1000", 1000, (1, 1000), (10**400, 10**400)])
def test_ratios_at_the_limits_are_taken(ratio):
    assert 1 / 1000 <= parse_ratio(ratio).value <= 1000


def test_a_huge_ratio_given_to_a_batch_is_refused_before_any_work(tmp_path):
    photo = str(_photo(tmp_path / "a.jpg"))
    for ratio in (10**40, (10**400, 1), "1e400:1"):
        with pytest.raises(ConfigError):
            _vlm_cropper().crop_batch([photo], task="aspect", ratio=ratio)


def test_the_largest_ratio_still_gives_a_crop(tmp_path):
    photo = Image.new("RGB", (2000, 30), (0, 90, 200))
    result = Cropper(vlm=None, clip=None, head=None, index=None).crop(
        photo, task="aspect", ratio="1000:1"
    )
    left, top, right, bottom = result.box.to_pixels(photo.size)
    assert (right - left) / (bottom - top) == pytest.approx(1000, rel=0.01)


# -- 5. score weights at any scale ------------------------------------------------------


class _MeanColour:
    """Embeds an image as its mean colour and a constant, made unit."""

    name = "toy:mean"
    dim = 4

    def embed(self, images) -> np.ndarray:
        rows = [np.append(np.asarray(im, np.float64).reshape(-1, 3).mean(0) / 255, 0.2)
                for im in images]  # fmt: skip
        out = np.array(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("scale", [1e308, 1e300, 1e-300, 1e-323])
def test_weights_mean_the_same_at_any_scale(scale):
    photo = Image.new("RGB", (80, 40), (255, 0, 0))
    photo.paste((0, 0, 255), (40, 0, 80, 40))
    boxes = [Box(0.0, 0.0, 0.5, 1.0), Box(0.1, 0.1, 0.9, 0.9), Box.whole()]

    def totals(weights: Weights) -> list[float]:
        scorer = Scorer(_MeanColour(), weights={"free": weights})
        return [s.total for s in scorer.score(photo, boxes, "free")]

    expected = totals(Weights(area=1, content=2))
    assert all(0 < t <= 1 for t in expected)
    assert totals(Weights(area=scale / 2, content=scale)) == pytest.approx(expected)
    both = totals(Weights(area=scale, aesthetic=scale))  # no head: aesthetic goes to content
    assert both == pytest.approx(totals(Weights(area=1, aesthetic=1)))


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), -1.0, 10**400, "1"])
def test_weights_that_are_no_finite_number_are_refused(weight):
    with pytest.raises(ConfigError, match="score weights must be finite numbers >= 0") as caught:
        Weights(area=weight)
    assert len(_one_line(caught.value)) < 200
