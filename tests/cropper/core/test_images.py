from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cropper.core.errors import ImageError
from cropper.core.images import fit_within, load_image


def _with_orientation(orientation: int) -> bytes:
    """A 40x20 photo, left half red, with an EXIF orientation tag."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif, quality=95)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (1, (40, 20), (5, 10)),
        (3, (40, 20), (35, 10)),  # rotated 180: red on the right
        (6, (20, 40), (10, 5)),  # rotated 90 clockwise when shown: red on top
        (8, (20, 40), (10, 35)),  # rotated 90 anticlockwise: red at the bottom
    ],
)
def test_exif_orientation_is_applied(orientation, size, red_at):
    image = load_image(_with_orientation(orientation))
    assert image.size == size
    r, g, b = image.getpixel(red_at)
    assert r > 200 and b < 60


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        Image.new("CMYK", (8, 8), (0, 0, 0, 0)),
        Image.new("P", (8, 8)),
        Image.new("L", (8, 8), 128),
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),
    ],
    ids=["rgba", "cmyk", "palette", "grey", "16bit"],
)
def test_unusual_modes_become_rgb(image):
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (8, 8)


def test_transparency_is_composited_on_white():
    assert load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an image"),
        (b"hello, I am text", "not an image"),
        ("truncated", "truncated"),
        (_bomb_png(30000, 30000), "pixels"),
    ],
)
def test_bad_files_get_one_line_errors_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_fit_within_only_shrinks():
    assert fit_within(Image.new("RGB", (2000, 1000)), 1024).size == (1024, 512)
    assert fit_within(Image.new("RGB", (200, 100)), 1024).size == (200, 100)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_working_copy_has_exactly_the_side_asked(tmp_path, suffix):
    """A 12 MP photo: the JPEG decoder's 1/2 draft, or the whole PNG, brought to 1024."""
    from cropper.testing.synthetic import synthetic_photo

    path = tmp_path / f"big{suffix}"
    synthetic_photo(0, size=(4000, 3000)).save(path)
    copy = load_image(path, least_side=1024)
    assert copy.size == (1024, 768)
    whole = load_image(path)
    assert whole.size == (4000, 3000)
    # the same scene: the copy is the photo's average over each of its pixels
    small = np.asarray(whole.resize((1024, 768), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(np.asarray(copy, dtype=np.float64) - small).mean() < 4
    assert load_image(path, least_side=5000).size == (4000, 3000)  # never enlarged


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_long_strip_of_few_pixels_is_its_own_working_copy(tmp_path, suffix):
    """Its short side is what an exact ratio needs; it costs less than a copy would."""
    path = tmp_path / f"strip{suffix}"
    Image.new("RGB", (5000, 60), (0, 90, 200)).save(path)
    assert load_image(path, least_side=1024).size == (5000, 60)
    assert load_image(Image.new("RGB", (2000, 30)), least_side=1024).size == (2000, 30)
    assert load_image(Image.new("RGB", (4000, 400)), least_side=1024).size == (1024, 102)
