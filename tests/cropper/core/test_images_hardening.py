"""Every kind of photo file, and every way one can fail (issue 7, parts 1 and 5).

Orientations, colour modes, animations, huge, tiny and broken files through
``load_image``, the loop and the command line; photos given as URLs against a local
server. Each case is one row of the hardening table in the docs.
"""

from __future__ import annotations

import http.server
import io
import json
import random
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cropper import Cropper
from cropper.cli.inputs import expand_inputs
from cropper.cli.main import main
from cropper.core.errors import ImageError
from cropper.core.images import MAX_PIXELS, load_image
from cropper.core.messages import ImagePart
from cropper.testing.scripted import ScriptedVLM, crops_reply

NO_MODELS = ["--clip", "none", "--head", "none", "--index", "none"]
RED, GREEN, BLUE = (255, 0, 0), (0, 200, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


# -- EXIF orientation ------------------------------------------------------------------

QUADRANTS = {"tl": (0, 0, 0.5, 0.5), "tr": (0.5, 0, 1, 0.5), "bl": (0, 0.5, 0.5, 1),
             "br": (0.5, 0.5, 1, 1)}  # fmt: skip

# The EXIF spec's meaning of each tag: where the stored top-left (red) and top-right
# (green) corners are shown. Written from the spec, not from Pillow's code.
ORIENTATIONS = [
    (1, (64, 48), "tl", "tr"),
    (2, (64, 48), "tr", "tl"),  # mirrored
    (3, (64, 48), "br", "bl"),  # rotated 180
    (4, (64, 48), "bl", "br"),  # flipped
    (5, (48, 64), "tl", "bl"),  # transposed
    (6, (48, 64), "tr", "br"),  # shown turned 90 clockwise
    (7, (48, 64), "br", "tr"),  # transversed
    (8, (48, 64), "bl", "tl"),  # shown turned 90 anticlockwise
]


def stored_jpeg(orientation: int | None) -> bytes:
    """A 64x48 photo as stored: red top-left quarter, green top-right, blue below."""
    image = Image.new("RGB", (64, 48), BLUE)
    image.paste(RED, (0, 0, 32, 24))
    image.paste(GREEN, (32, 0, 64, 24))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=95)


def quadrant_colour(image: Image.Image, corner: str) -> tuple[int, ...]:
    x0, y0, x1, y1 = QUADRANTS[corner]
    w, h = image.size
    return image.getpixel((int((x0 + x1) / 2 * w), int((y0 + y1) / 2 * h)))


def near(colour, expected, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


@pytest.mark.parametrize(("orientation", "size", "red", "green"), ORIENTATIONS)
def test_each_exif_orientation_loads_as_displayed(orientation, size, red, green):
    image = load_image(stored_jpeg(orientation))
    assert image.mode == "RGB" and image.size == size
    assert near(quadrant_colour(image, red), RED)
    assert near(quadrant_colour(image, green), GREEN)
    for corner in set(QUADRANTS) - {red, green}:
        assert near(quadrant_colour(image, corner), BLUE)


@pytest.mark.parametrize("orientation", [None, 0, 9, 65535])
def test_a_missing_or_unknown_orientation_shows_the_photo_as_stored(orientation):
    image = load_image(stored_jpeg(orientation))
    assert image.size == (64, 48) and near(quadrant_colour(image, "tl"), RED)


@pytest.mark.parametrize(
    "exif",
    [b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00", b"Exif\x00\x00garbage", b"Exif\x00\x00MM"],
    ids=["short-ifd", "garbage", "header-only"],
)
def test_a_broken_exif_block_is_ignored_not_fatal(exif):
    photo = Image.new("RGB", (30, 20), RED)
    assert load_image(encode(photo, "JPEG", exif=exif)).size == (30, 20)


def red_finder(conversation, sampling) -> list[str]:
    """A VLM that looks: it proposes the quarter of the query photo where the red is."""
    query = next(p.image for m in conversation for p in m.parts if isinstance(p, ImagePart))
    pixels = np.asarray(query.convert("RGB"), dtype=np.int32)
    ys, xs = np.nonzero((pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100))
    w, h = query.size
    col, row = int(xs.mean() >= w / 2), int(ys.mean() >= h / 2)
    box = (col * 500, row * 500, col * 500 + 500, row * 500 + 500)  # norm1000
    return [crops_reply(box)] * sampling.n


@pytest.mark.parametrize(("orientation", "size", "red", "green"), ORIENTATIONS)
def test_the_loop_crops_the_photo_as_displayed(tmp_path, orientation, size, red, green):
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(stored_jpeg(orientation))
    cropper = Cropper(vlm=ScriptedVLM(red_finder), clip=None, head=None, index=None)
    result = cropper.crop(path, task="free")
    assert result.photo.size == size
    assert list(result.box.as_array()) == pytest.approx(QUADRANTS[red])
    w, h = size
    x0, y0, x1, y1 = QUADRANTS[red]
    assert result.pixels == (round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))
    mean = np.asarray(result.image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert near(mean, RED, tolerance=50)


# -- colour modes and animations ---------------------------------------------------------


def half_and_half(mode: str, left, right, size=(30, 20)) -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def palette_photo() -> Image.Image:
    """Palette index 0 red (left), index 1 green (right)."""
    image = half_and_half("P", 0, 1)
    image.putpalette([255, 0, 0, 0, 200, 0] + [0] * 762)
    return image


def rgb16_png(size=(30, 20)) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one): red, green."""
    w, h = size
    row = b"".join(
        struct.pack(">HHH", 65535, 0, 0) if x < w // 2 else struct.pack(">HHH", 0, 51400, 0)
        for x in range(w)
    )
    raw = b"".join(b"\x00" + row for _ in range(h))
    return png_file(struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0), zlib.compress(raw))


def png_file(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (30, 20), c) for c in (RED, BLUE, GREEN)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, **options)


WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (128, 128, 128)
MODES = [
    # id, file bytes, expected colour on the left, on the right
    ("cmyk-jpeg", encode(half_and_half("CMYK", (0, 255, 255, 0), (255, 0, 255, 0)), "JPEG",
                         quality=95), RED, (0, 255, 0)),
    ("grey16-png", encode(half_and_half("I;16", 0, 65535), "PNG"), BLACK, WHITE),
    ("grey16-dim-png", encode(half_and_half("I;16", 0, 4095), "PNG"), BLACK, WHITE),
    ("rgb16-png", rgb16_png(), RED, (0, 200, 0)),
    ("palette-index-transparency", encode(palette_photo(), "PNG", transparency=1), RED, WHITE),
    ("palette-bytes-transparency", encode(palette_photo(), "PNG", transparency=b"\xff\x00"),
     RED, WHITE),
    ("palette-gif-transparency", encode(palette_photo(), "GIF", transparency=1), RED, WHITE),
    ("rgba-png", encode(half_and_half("RGBA", (255, 0, 0, 255), (0, 0, 255, 0)), "PNG"),
     RED, WHITE),
    ("la-png", encode(half_and_half("LA", (0, 255), (0, 0)), "PNG"), BLACK, WHITE),
    ("1bit-png", encode(half_and_half("1", 0, 1), "PNG"), BLACK, WHITE),
    ("float-tiff-0-1", encode(Image.fromarray(np.tile(np.float32([[0.0] * 15 + [0.5] * 15]),
                                                      (20, 1))), "TIFF"), BLACK, GREY),
    ("float-tiff-nan", encode(Image.fromarray(np.tile(np.float32([[np.nan] * 15 + [1.0] * 15]),
                                                      (20, 1))), "TIFF"), BLACK, WHITE),
    ("int32-tiff", encode(Image.fromarray(np.tile(np.int32([[-5] * 15 + [70000] * 15]),
                                                  (20, 1))), "TIFF"), BLACK, WHITE),
    ("animated-gif", animated("GIF"), RED, RED),
    ("animated-webp", animated("WEBP"), RED, RED),
    ("bmp", encode(half_and_half("RGB", RED, BLUE), "BMP"), RED, BLUE),
    ("tiff", encode(half_and_half("RGB", RED, BLUE), "TIFF"), RED, BLUE),
    ("webp", encode(half_and_half("RGB", RED, BLUE), "WEBP", lossless=True), RED, BLUE),
    ("ico", encode(half_and_half("RGB", RED, BLUE, size=(32, 32)), "ICO", sizes=[(32, 32)]),
     RED, BLUE),
]  # fmt: skip


@pytest.mark.parametrize(("data", "left", "right"), [m[1:] for m in MODES],
                         ids=[m[0] for m in MODES])  # fmt: skip
def test_every_mode_loads_as_rgb_of_the_right_size(data, left, right):
    image = load_image(data)
    assert image.mode == "RGB"
    w, h = image.size
    assert (w, h) in ((30, 20), (32, 32))
    assert near(image.getpixel((2, h // 2)), left), image.getpixel((2, h // 2))
    assert near(image.getpixel((w - 3, h // 2)), right), image.getpixel((w - 3, h // 2))


@pytest.mark.parametrize(
    ("array", "colour"),
    [
        (np.full((20, 30), 0.5, dtype=np.float32), GREY),  # floats in [0, 1]
        (np.full((20, 30), 200.0), (200, 200, 200)),  # floats in [0, 255]
        (np.full((20, 30), 40000, dtype=np.uint16), WHITE),  # deep greys, by their peak
        (np.full((20, 30), 7, dtype=np.int64), (7, 7, 7)),  # small integers as they are
        (np.ones((20, 30), dtype=bool), WHITE),
        (np.full((20, 30, 1), np.nan, dtype=np.float32), BLACK),
        (np.zeros((20, 30, 4), dtype=np.uint8), WHITE),  # fully transparent
    ],
    ids=["float01", "float255", "uint16", "int64", "bool", "nan", "rgba0"],
)
def test_arrays_of_any_dtype_load_as_rgb(array, colour):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (30, 20)
    assert near(image.getpixel((5, 5)), colour, tolerance=2)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((20, 30, 2), dtype=np.uint8), "expected an HxW"),
        (np.zeros((2, 3, 4, 5), dtype=np.uint8), "expected an HxW"),
        (np.array([["a", "b"]], dtype=object), "array of numbers"),
        (np.zeros((0, 30), dtype=np.uint8), "no pixels"),
    ],
)
def test_unusable_arrays_get_one_line_errors(array, message):
    with pytest.raises(ImageError, match=message) as info:
        load_image(array)
    assert "\n" not in str(info.value)


def test_a_pil_image_given_by_the_caller_is_not_changed():
    given = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    out = load_image(given)
    assert out is not given and given.mode == "RGBA" and out.getpixel((0, 0)) == WHITE


# -- huge photos -------------------------------------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``, a hundred bytes on disk."""
    return png_file(struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0), zlib.compress(b""))


@pytest.fixture
def no_decoding(monkeypatch) -> None:
    """Decoding fails the test: a refusal must come from the header alone."""

    def load(self):
        raise AssertionError("the photo was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize(("width", "height"), [(30000, 30000), (13000, 13000), (150_000_001, 1)])
def test_a_header_above_the_ceiling_is_refused_before_decoding(tmp_path, no_decoding, width,
                                                               height):  # fmt: skip
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=f"{width}x{height}.*above the limit") as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's own limit is left as it was


def test_the_ceiling_is_the_callers_to_raise(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(Image.new("RGB", (100, 100)), "PNG"))
    with pytest.raises(ImageError, match="10,000 pixels, above the limit of 9,999"):
        load_image(path, max_pixels=9_999)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_a_lazily_opened_pil_image_above_the_ceiling_is_refused_before_decoding(no_decoding):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        lazy = Image.open(io.BytesIO(bomb_png(13000, 13000)))  # 169M pixels: not decoded yet
    with pytest.raises(ImageError, match="<PIL image 13000x13000>: .*above the limit"):
        load_image(lazy)


def test_an_array_above_the_ceiling_is_refused_before_conversion():
    huge = np.broadcast_to(np.uint8(0), (20_000, 20_000, 3))  # a view: no memory behind it
    with pytest.raises(ImageError, match=r"<array \(20000, 20000, 3\)>: .*above the limit"):
        load_image(huge)
    assert 20_000 * 20_000 > MAX_PIXELS


def test_threads_loading_at_once_leave_pillows_limit_as_it_was(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(bomb_png(30000, 30000) if i % 2 else encode(Image.new("L", (9, 9)),
                                                                          "PNG"))  # fmt: skip
    before = Image.MAX_IMAGE_PIXELS

    def load_all(limit: int) -> None:
        for _ in range(20):
            for path in paths:
                try:
                    load_image(path, max_pixels=limit)
                except ImageError:
                    pass

    threads = [threading.Thread(target=load_all, args=(10**6 + i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Image.MAX_IMAGE_PIXELS == before


# -- tiny photos -------------------------------------------------------------------------

TINY = [(1, 1), (1, 500), (500, 1), (2, 2), (3, 1), (800, 100)]  # and a panorama: no grid crop
REQUESTS = [("free", {}), ("aspect", {"ratio": "16:9"}), ("aspect", {"ratio": "1:3"}),
            ("subject", {"subject": (0.5, 0.5)})]  # fmt: skip


def check_valid_crop(result, size) -> None:
    left, top, right, bottom = result.pixels
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    assert result.image.size == (right - left, bottom - top)
    assert min(result.image.size) >= 1


@pytest.mark.parametrize("size", TINY, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiny_and_thin_photos_get_a_valid_crop_with_a_vlm(size):
    # Boxes a model might give: a fair one, the whole photo, one thinner than a pixel.
    reply = crops_reply((100, 100, 900, 900), (0, 0, 1000, 1000), (500, 500, 501, 501))
    vlm = ScriptedVLM(lambda conversation, sampling: [reply] * sampling.n)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    photo = Image.new("RGB", size, RED)
    for task, request in REQUESTS:
        check_valid_crop(cropper.crop(photo, task=task, **request), size)


@pytest.fixture(scope="module")
def head_cropper(tiny_clip) -> Cropper:
    """No VLM: the tiny CLIP and a random head rank the grid candidates."""
    from cropper.agent import components
    from cropper.scoring.head import random_head

    embedder = components.make_embedder(tiny_clip, None)
    return Cropper(vlm=None, clip=embedder, head=random_head(embedder.dim), index=None)


@pytest.mark.parametrize("size", TINY, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiny_and_thin_photos_get_a_valid_crop_without_a_vlm(head_cropper, size):
    photo = Image.new("RGB", size, RED)
    for task, request in REQUESTS[:2] + REQUESTS[3:]:  # each task once: the head is slower
        check_valid_crop(head_cropper.crop(photo, task=task, **request), size)


# -- broken files ------------------------------------------------------------------------


def truncated(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    return data[: len(data) // 2]


BROKEN = [
    ("empty.jpg", b"", "empty file"),
    ("half.jpg", truncated("JPEG"), "truncated"),
    ("half.png", truncated("PNG"), "truncated"),
    ("half.webp", truncated("WEBP"), "not an image|truncated"),
    ("text.jpg", b"Hello, I am a text file, not a photo.\n", "not an image"),
    ("garbage.png", bytes(random.Random(7).randrange(256) for _ in range(4096)), "not an image"),
    ("header-only.png", b"\x89PNG\r\n\x1a\n", "not an image|truncated"),
    ("zero-size.png", png_file(struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0), b""),
     "not an image|no pixels"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_file_gets_one_line_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    if content:  # the same bytes given in memory fail the same way, named by their kind
        with pytest.raises(ImageError, match=message):
            load_image(content)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.jpg", "no such file"),
        (lambda tmp: (tmp / "folder.jpg").mkdir() or tmp / "folder.jpg", "is a folder"),
        (lambda tmp: tmp / "no-such-folder" / "photo.jpg", "no such file"),
    ],
    ids=["missing", "a-folder", "missing-folder"],
)
def test_a_path_that_is_no_file_is_named(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ")


def test_an_unreadable_file_says_it_cannot_be_read(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "locked.jpg"
    path.write_bytes(stored_jpeg(1))
    path.chmod(0)
    with pytest.raises(ImageError, match="cannot read the file"):
        load_image(path)


def mutations(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """Valid files of several formats with bytes flipped, cut off or inserted."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {
        "jpeg": encode(base, "JPEG", exif=exif),
        "png": encode(base, "PNG"),
        "gif": encode(base, "GIF", save_all=True, append_images=[base.rotate(90)]),
        "webp": encode(base, "WEBP"),
        "tiff": encode(base, "TIFF", exif=exif),
        "bmp": encode(base, "BMP"),
        "palette": encode(base.convert("P"), "PNG", transparency=3),
    }
    pick = random.Random(seed)
    for _ in range(count):
        kind = pick.choice(sorted(seeds))
        data = bytearray(seeds[kind])
        how = pick.random()
        if how < 0.5:
            for _ in range(pick.randint(1, 8)):
                data[pick.randrange(len(data))] = pick.randrange(256)
        elif how < 0.8:
            data = data[: pick.randrange(len(data))]
        else:
            at = pick.randrange(len(data))
            data[at:at] = bytes(pick.randrange(256) for _ in range(pick.randint(1, 64)))
        yield kind, bytes(data)


def test_corrupted_files_of_every_format_load_or_fail_with_an_image_error():
    outcomes = {"loaded": 0, "refused": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corrupt metadata it skips
        for _kind, data in mutations(seed=3, count=600):
            try:
                image = load_image(data)
            except ImageError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
            else:
                assert image.mode == "RGB" and min(image.size) >= 1
                outcomes["loaded"] += 1
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 50  # both paths were exercised


# -- a batch from the command line -------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """Good photos and broken ones in one folder."""
    folder = tmp_path / "shoot"
    folder.mkdir()
    good = [folder / "a.jpg", folder / "b.png", folder / "c-rotated.jpg"]
    encode_to = {good[0]: ("JPEG", RED), good[1]: ("PNG", BLUE)}
    for path, (fmt, colour) in encode_to.items():
        path.write_bytes(encode(Image.new("RGB", (80, 60), colour), fmt))
    good[2].write_bytes(stored_jpeg(6))
    bad = {
        "empty.jpg": b"",
        "text.jpg": b"not a photo",
        "half.jpg": truncated("JPEG"),
        "half.png": truncated("PNG"),
        "bomb.png": bomb_png(30000, 30000),
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return folder, good, [folder / name for name in bad]


def test_a_batch_crops_the_good_photos_and_sums_up_the_bad(mixed_folder, tmp_path, capsys):
    import json

    folder, good, bad = mixed_folder
    missing = tmp_path / "gone.jpg"
    out = tmp_path / "out"
    code = main(["crop", str(folder), str(missing), "--out", str(out), "--vlm", "none",
                 *NO_MODELS])  # fmt: skip
    assert code == 1
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["image"] for x in lines) == sorted(map(str, good))
    written = sorted(p.name for p in out.iterdir() if p.name != ".cropper.lock")
    assert written == sorted([p.name for p in good] + ["results.jsonl", "settings.json"])
    assert Image.open(out / "c-rotated.jpg").size[1] > Image.open(out / "c-rotated.jpg").size[0]
    err = capsys.readouterr().err.rstrip("\n").splitlines()
    failed = [*bad, missing]
    summary = err[-len(failed) - 1 :]
    assert summary[0] == f"cropper: {len(failed)} of {len(good) + len(failed)} photos failed:"
    assert sorted(line.split(": ", 1)[0] for line in summary[1:]) == sorted(
        f"  {p}" for p in failed
    )
    assert all(line.startswith("  ") and len(line.split(": ", 1)[1]) > 5 for line in summary[1:])


def test_a_batch_of_many_failures_lists_twenty_and_counts_the_rest(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(23):
        (folder / f"{i:02}.jpg").write_bytes(b"")
    assert main(["crop", str(folder), "--out", str(tmp_path / "out"), "--vlm", "none",
                 *NO_MODELS]) == 1  # fmt: skip
    err = capsys.readouterr().err.rstrip("\n").splitlines()
    assert err[-22] == "cropper: 23 of 23 photos failed:"
    assert [line.split(":")[0] for line in err[-21:-1]] == [
        f"  {folder / f'{i:02}.jpg'}" for i in range(20)
    ]
    assert err[-1] == "  ... and 3 more"


# -- photos given as URLs ----------------------------------------------------------------

PHOTO = encode(half_and_half("RGB", RED, BLUE, size=(40, 30)), "JPEG", quality=95)


class PhotoHandler(http.server.BaseHTTPRequestHandler):
    """Serves a photo, and each way a photo server fails."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet in test output
        pass

    def send(self, status: int, body: bytes, kind: str = "image/jpeg", length: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?")[0]
        if path in ("/photo.jpg", "/download"):
            self.send(200, PHOTO)
        elif path == "/text.jpg":
            self.send(200, b"<html>not found</html>", kind="text/html")
        elif path == "/claims-huge.jpg":  # Content-Length above the limit, nothing sent
            self.send(200, b"", length=10**9)
        elif path == "/streams-huge.jpg":  # no Content-Length: the limit is hit while reading
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"4000\r\n" + b"\xff" * 0x4000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/trickle.jpg":  # a byte at a time, never too slow for one read
            self.send_response(200)
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            for byte in PHOTO:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/hang.jpg":  # headers, then nothing
            self.send_response(200)
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            self.wfile.flush()
            time.sleep(3)
        elif path == "/truncated.jpg":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            self.wfile.write(PHOTO[: len(PHOTO) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/to-photo":
            self.send_response(302)
            self.send_header("Location", "/photo.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send(404, b"no such photo", kind="text/plain")


@pytest.fixture(scope="module")
def photo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PhotoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(url: str, **limits):
    return load_image(url, allow_urls=True, **limits)


def test_a_url_is_fetched_when_allowed(photo_server):
    for path in ("/photo.jpg", "/download?size=large&v=2", "/to-photo"):
        image = fetch(photo_server + path)
        assert image.size == (40, 30) and near(image.getpixel((2, 15)), RED)


def test_a_url_is_not_fetched_unless_allowed(photo_server):
    url = photo_server + "/photo.jpg"
    with pytest.raises(ImageError) as info:
        load_image(url)
    assert str(info.value) == (
        f"{url}: photos given as URLs are fetched only when allowed; "
        "pass allow_urls=True (cropper crop --allow-urls)"
    )


@pytest.mark.parametrize(
    ("path", "limits", "message"),
    [
        ("/missing.jpg", {}, "HTTP 404 Not Found"),
        ("/text.jpg", {}, "not an image"),
        ("/claims-huge.jpg", {}, "larger than 50,000,000 bytes"),
        ("/streams-huge.jpg", {"url_max_bytes": 100_000}, "larger than 100,000 bytes"),
        ("/photo.jpg", {"url_max_bytes": 100}, "larger than 100 bytes"),
        ("/trickle.jpg", {"url_timeout": 0.5}, "not fetched within 0.5 s"),
        ("/hang.jpg", {"url_timeout": 0.5}, "not fetched within 0.5 s"),
        ("/truncated.jpg", {}, "cannot fetch the photo"),
        ("/to-file", {}, "cannot fetch the photo"),
    ],
)
def test_each_failed_fetch_is_one_line_naming_the_url(photo_server, path, limits, message):
    url = photo_server + path
    with pytest.raises(ImageError, match=message) as info:
        fetch(url, **limits)
    assert str(info.value).startswith(f"{url}: ") and "\n" not in str(info.value)


def test_a_refused_connection_is_one_line_naming_the_url():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/photo.jpg"
    with pytest.raises(ImageError, match="cannot fetch the photo") as info:
        fetch(url, url_timeout=2)
    assert str(info.value).startswith(f"{url}: ")


def test_a_password_in_a_url_is_never_shown(photo_server):
    url = photo_server.replace("http://", "http://alice:s3cret@") + "/missing.jpg"
    for allow in (False, True):
        with pytest.raises(ImageError) as info:
            load_image(url, allow_urls=allow)
        assert "s3cret" not in str(info.value) and "***@127.0.0.1" in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.1/photo.jpg", "data:image/png;base64,iVBORw0KGgo=",
     "gopher://127.0.0.1/photo.jpg", "FILE:///etc/hostname"],
)  # fmt: skip
@pytest.mark.parametrize("allow", [False, True])
def test_other_schemes_are_never_fetched(url, allow):
    with pytest.raises(ImageError, match="only http:// and https:// photos can be fetched"):
        load_image(url, allow_urls=allow)


def test_a_very_long_url_is_cut_short_in_messages():
    url = "data:image/png;base64," + "A" * 1_000_000
    with pytest.raises(ImageError) as info:
        load_image(url)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("https://example.com/photos/cat.jpg?size=large&v=2", "cat.jpg"),
        ("https://example.com/a%20b.png", "a b.png"),
        ("https://example.com/image?id=3", "photo-2.jpg"),
        ("https://example.com/", "photo-2.jpg"),
        ("https://example.com/..%2F..%2Fetc%2Fx.jpg", "x.jpg"),
        ("https://example.com/%2e%2e", "photo-2.jpg"),
        ("https://example.com/.hidden.jpg", "photo-2.jpg"),
        ("https://example.com/a%0Ab.jpg", "photo-2.jpg"),
    ],
)
def test_urls_pass_through_inputs_as_given_with_a_safe_name(tmp_path, spec, name):
    first = tmp_path / "first.jpg"
    inputs = expand_inputs([str(first), spec])
    assert [i.path for i in inputs] == [str(first), spec]  # "?" is no glob
    assert inputs[1].name == name


def test_a_list_may_hold_urls(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("https://example.com/x.jpg\nhttp://example.com/get?id=1\n")
    inputs = expand_inputs([f"@{listing}"])
    assert [(i.path, i.name) for i in inputs] == [
        ("https://example.com/x.jpg", "x.jpg"),
        ("http://example.com/get?id=1", "photo-2.jpg"),
    ]


def test_a_url_given_to_the_command_line_without_permission_fails_clearly(tmp_path, capsys):
    url = "http://127.0.0.1:9/photo.jpg"  # never reached: refused before any connection
    assert main(["crop", url, "--out", str(tmp_path / "out.jpg"), "--vlm", "none",
                 *NO_MODELS]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"{url}: photos given as URLs are fetched only when allowed" in err


def test_the_command_line_crops_a_url_when_allowed_and_never_writes_its_password(
    photo_server, tmp_path, capsys
):
    from cropper.testing.openai_server import OpenAICompatibleServer

    url = photo_server.replace("http://", "http://alice:s3cret@") + "/photo.jpg"
    out = tmp_path / "crops"
    out.mkdir()
    with OpenAICompatibleServer() as vlm:
        code = main(["crop", url, "--allow-urls", "--out", str(out), "--vlm", vlm.url,
                     *NO_MODELS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    [line] = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert line["image"] == url.replace("alice:s3cret@", "***@")
    left, top, right, bottom = line["box"]
    assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
    assert (out / "photo.jpg").is_file()
    assert "s3cret" not in capsys.readouterr().out
