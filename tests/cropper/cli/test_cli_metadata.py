"""``cropper crop`` end to end, with no model: the saved crop keeps what the photo had.

Saliency alone chooses the crop (``--vlm none --clip none``), so the whole path runs
here in about a second: the photo loaded, cropped by ``CropResult.image`` and saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from cropper.cli.main import main

ORIENTATION, MAKE, MODEL, EXIF_IFD, GPS, DATE_TAKEN = 0x0112, 0x010F, 0x0110, 0x8769, 0x8825, 0x9003
CAMERA = {MAKE: "Canon", MODEL: "EOS R5"}
TAKEN = "2024:05:06 07:08:09"


def _profile() -> bytes:
    """A real RGB profile (LittleCMS's sRGB) made ours: its header names our device model."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return srgb[:52] + b"crpT" + srgb[56:]


PROFILE = _profile()


def _photo(path: Path, fmt: str) -> Path:
    """A portrait-stored photo shown landscape (orientation 6), tagged, with a position."""
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 256, (120, 80, 3), dtype=np.uint8))  # 80x120
    stored.paste((255, 0, 0), (10, 20, 40, 60))  # something to crop around
    exif = Image.Exif()
    exif.update({**CAMERA, ORIENTATION: 6})
    exif.get_ifd(EXIF_IFD)[DATE_TAKEN] = TAKEN
    exif.get_ifd(GPS).update({1: "N", 2: (51.0, 30.0, 12.5)})
    stored.save(path, format=fmt, exif=exif.tobytes(), icc_profile=PROFILE)
    return path


def _crop(*args) -> int:
    return main(["crop", *map(str, args), "--vlm", "none", "--clip", "none", "--json"])


def _box(capsys) -> tuple[int, int, int, int]:
    return tuple(json.loads(capsys.readouterr().out.splitlines()[-1])["box"])


@pytest.mark.parametrize(("name", "fmt"), [("photo.jpg", "JPEG"), ("photo.png", "PNG")])
def test_the_saved_crop_keeps_format_profile_camera_and_shows_upright(tmp_path, capsys, name, fmt):
    photo = _photo(tmp_path / name, fmt)
    out = tmp_path / f"crop{Path(name).suffix}"
    assert _crop(photo, "-o", out, "--ratio", "2:1") == 0
    left, top, right, bottom = _box(capsys)
    with Image.open(photo) as original:
        shown = ImageOps.exif_transpose(original).convert("RGB")
    assert shown.size == (120, 80)
    with Image.open(out) as saved:
        assert saved.format == fmt
        assert saved.info.get("icc_profile") == PROFILE
        exif = saved.getexif()
        assert exif.get(ORIENTATION, 1) == 1
        assert {tag: exif.get(tag) for tag in CAMERA} == CAMERA
        assert exif.get_ifd(EXIF_IFD)[DATE_TAKEN] == TAKEN
        assert GPS not in exif and exif.get_ifd(GPS) == {}
        # Upright: a 2:1 crop of the landscape photo as shown (stored sideways, it
        # would be 80 wide), with the pixels of that region of the photo as shown.
        assert saved.size == (right - left, bottom - top) and saved.width == 2 * saved.height
        assert saved.width > 80
        expected = np.asarray(shown.crop((left, top, right, bottom)), dtype=float)
        assert np.abs(np.asarray(saved.convert("RGB"), dtype=float) - expected).mean() < 8


def test_gps_and_quality_are_the_users_to_choose(tmp_path, capsys):
    photo = _photo(tmp_path / "photo.jpg", "JPEG")
    assert _crop(photo, "-o", tmp_path / "default.jpg") == 0
    assert _crop(photo, "-o", tmp_path / "kept.jpg", "--keep-gps", "--quality", "60") == 0
    with Image.open(tmp_path / "default.jpg") as default, Image.open(tmp_path / "kept.jpg") as kept:
        assert GPS not in default.getexif()
        assert kept.getexif().get_ifd(GPS)[1] == "N"
        # A lower quality quantizes more coarsely.
        assert kept.quantization[0][0] > default.quantization[0][0]
        assert kept.info["icc_profile"] == PROFILE
