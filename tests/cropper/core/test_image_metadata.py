"""Saved crops keep what the photo had: format, ICC profile, upright EXIF, no GPS.

The ICC profiles are built here, byte by byte, so that each test knows what its profile
says: a Display P3-like RGB one, a grey one, and a CMYK one whose inks all print grey.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageCms, JpegImagePlugin, features

from cropper.core.errors import ConfigError
from cropper.core.fileio import save_image
from cropper.core.images import colour_space, load_image, upright_exif

ORIENTATION, MAKE, MODEL, GPS, EXIF_IFD, IFD1 = 0x0112, 0x010F, 0x0110, 0x8825, 0x8769, -1
DATE_TAKEN, EXPOSURE, F_NUMBER, LENS = 0x9003, 0x829A, 0x829D, 0xA434
PIXEL_X, PIXEL_Y, MAKER_NOTE, DATE_TIME = 0xA002, 0xA003, 0x927C, 0x0132
CAMERA = {MAKE: "Canon", MODEL: "EOS R5"}
DETAILS = {
    DATE_TAKEN: "2024:05:06 07:08:09",
    EXPOSURE: 0.004,
    F_NUMBER: 5.6,
    LENS: "RF24-105mm F4 L IS USM",
}
LATITUDE = ((51.0, 30.0, 12.5), "N")


# ------------------------------------------------------------------ ICC profiles, by hand


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _profile(space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]], cls=b"mntr") -> bytes:
    """An ICC v2 profile: a 128-byte header, the tag table, the tags."""
    start = 128 + 4 + 12 * len(tags)
    table = data = b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", start + len(data), len(body))
        data += body
    header = struct.pack(">I", start + len(data)) + b"\0" * 4 + struct.pack(">I", 0x02100000)
    header += cls + space + pcs + b"\0" * 12 + b"acsp" + b"\0" * 28
    header += _s15(0.9642) + _s15(1.0) + _s15(0.8249)  # D50
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


def _gamma(value: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(value * 256))


WHITE = (b"wtpt", _xyz(0.9642, 1.0, 0.8249))
# Display P3's primaries (D50-adapted) with a 2.2 gamma: an RGB profile that is not sRGB.
P3_LIKE = _profile(
    b"RGB ",
    b"XYZ ",
    [
        WHITE,
        (b"rXYZ", _xyz(0.5151, 0.2412, -0.0011)),
        (b"gXYZ", _xyz(0.2920, 0.6922, 0.0419)),
        (b"bXYZ", _xyz(0.1571, 0.0666, 0.7841)),
        (b"rTRC", _gamma(2.2)),
        (b"gTRC", _gamma(2.2)),
        (b"bTRC", _gamma(2.2)),
    ],
)
GREY = _profile(b"GRAY", b"XYZ ", [WHITE, (b"kTRC", _gamma(2.2))])


def _grey_inks() -> bytes:
    """A CMYK profile whose inks all print grey: L* = 100 (1 - c/2)(1 - k), a* = b* = 0."""
    identity = bytes(range(256))
    matrix = b"".join(_s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    grid = b"".join(
        bytes([round(255 * (1 - c / 2) * (1 - k)), 128, 128])
        for c in (0, 1)
        for _m in (0, 1)
        for _y in (0, 1)
        for k in (0, 1)
    )
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + matrix + identity * 4 + grid + identity * 3
    return _profile(b"CMYK", b"Lab ", [WHITE, (b"A2B0", lut)], cls=b"prtr")


GREY_INKS = _grey_inks()
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ------------------------------------------------------------------------------ photos


def _camera_exif(orientation: int = 1, *, gps: bool = True) -> Image.Exif:
    exif = Image.Exif()
    exif.update(CAMERA)
    if orientation:
        exif[ORIENTATION] = orientation
    exif.get_ifd(EXIF_IFD).update({**DETAILS, PIXEL_X: 80, PIXEL_Y: 60})
    if gps:
        exif.get_ifd(GPS).update({1: LATITUDE[1], 2: LATITUDE[0]})
    return exif


def _marked(size=(80, 60)) -> Image.Image:
    """A blue photo with a red block in its top-left corner (as stored)."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 4, size[1] // 4))
    return image


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _saved(image: Image.Image, path: Path, **options) -> Image.Image:
    save_image(image, path, **options)
    saved = Image.open(path)
    saved.load()
    return saved


def _avif() -> list:
    return [".avif"] if features.check("avif") else []


# ---------------------------------------------------------------------------------- ICC


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif", *_avif()])
def test_an_icc_tagged_photos_crop_keeps_its_profile(tmp_path, suffix):
    fmt = Image.registered_extensions()[suffix]
    photo = load_image(_encoded(_marked(), fmt, icc_profile=P3_LIKE))
    assert photo.info["icc_profile"] == P3_LIKE
    # Both ways a crop is cut (CropResult.image): a plain crop, and a resize of a region.
    for crop in (photo.crop((10, 5, 50, 45)), photo.resize((20, 20), box=(10, 5, 50, 45))):
        saved = _saved(crop, tmp_path / f"crop{suffix}")
        assert saved.format == fmt
        assert saved.info.get("icc_profile") == P3_LIKE


@pytest.mark.parametrize(
    ("image", "profile", "expected"),
    [
        (Image.new("RGB", (8, 8), (200, 30, 30)), P3_LIKE, "kept"),
        (Image.new("RGBA", (8, 8), (200, 30, 30, 128)), P3_LIKE, "kept"),  # over white
        (Image.new("P", (8, 8), 3), P3_LIKE, "kept"),
        (Image.new("CMYK", (8, 8), (255, 0, 0, 0)), GREY_INKS, "sRGB"),
        (Image.new("L", (8, 8), 128), GREY, "sRGB"),
        (Image.new("LA", (8, 8), (128, 200)), GREY, None),  # composited: no longer grey
        (Image.new("L", (8, 8), 128), P3_LIKE, None),  # a profile of another kind of pixels
        (Image.new("RGB", (8, 8)), GREY, None),
        (Image.new("RGB", (8, 8)), b"not a profile", None),
    ],
    ids=["rgb", "rgba", "palette", "cmyk", "grey", "grey+alpha", "grey+rgb", "rgb+grey", "junk"],
)
def test_only_a_profile_true_of_the_rgb_pixels_stays(image, profile, expected):
    image.info["icc_profile"] = profile
    photo = load_image(image)
    assert photo.mode == "RGB"
    kept = photo.info.get("icc_profile")
    if expected == "sRGB":  # LittleCMS's own, its header dated when it was made
        assert colour_space(kept) == "RGB" and _description(kept) == _description(SRGB)
    else:
        assert kept == {"kept": profile, None: None}[expected]


def _description(profile: bytes) -> str:
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))


def test_a_cmyk_photo_is_converted_through_its_own_profile():
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    # Through its profile, whose inks print grey: mid grey. Without: Pillow's naive cyan.
    managed = load_image(_encoded(cyan, "JPEG", icc_profile=GREY_INKS, quality=100))
    r, g, b = managed.getpixel((4, 4))
    assert abs(r - 119) <= 3 and r == g == b
    assert colour_space(managed.info["icc_profile"]) == "RGB"
    plain = load_image(_encoded(cyan, "JPEG", quality=100))
    assert plain.getpixel((4, 4))[0] < 30 and "icc_profile" not in plain.info


def test_an_unusable_cmyk_profile_is_left_out_with_a_warning(caplog):
    broken = GREY_INKS[:128] + b"\0" * 64  # a CMYK header, then nothing LittleCMS can read
    photo = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    photo.info["icc_profile"] = broken
    with caplog.at_level(logging.WARNING, logger="cropper.core.images"):
        loaded = load_image(photo)
    assert "icc_profile" not in loaded.info
    assert loaded.getpixel((4, 4)) == (0, 255, 255)  # converted as before, without it
    assert "<PIL image 8x8>: ignored its unusable CMYK ICC profile" in caplog.text


# --------------------------------------------------------------------------------- EXIF


def test_orientation_is_applied_and_camera_exif_kept_gps_dropped(tmp_path):
    source = _encoded(_marked(), "JPEG", exif=_camera_exif(orientation=6), icc_profile=P3_LIKE)
    photo = load_image(source)
    assert photo.size == (60, 80)  # shown rotated a quarter turn clockwise
    exif = photo.getexif()
    assert ORIENTATION not in exif and exif[MAKE] == "Canon"
    assert exif.get_ifd(EXIF_IFD)[PIXEL_X] == 60  # the upright photo's own size
    assert GPS in exif  # the loaded photo keeps it: saving decides
    # The stored top-left red block shows at the top right: crop there.
    saved = _saved(photo.crop((30, 0, 60, 40)), tmp_path / "crop.jpg")
    assert saved.size == (30, 40)
    red, blue = saved.getpixel((25, 5)), saved.getpixel((5, 35))
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60  # upright
    exif = saved.getexif()
    assert exif.get(ORIENTATION, 1) == 1
    assert {tag: exif[tag] for tag in CAMERA} == CAMERA
    details = exif.get_ifd(EXIF_IFD)
    assert details[DATE_TAKEN] == DETAILS[DATE_TAKEN] and details[LENS] == DETAILS[LENS]
    assert details[EXPOSURE] == pytest.approx(DETAILS[EXPOSURE])
    assert details[F_NUMBER] == pytest.approx(DETAILS[F_NUMBER])
    assert (details[PIXEL_X], details[PIXEL_Y]) == (30, 40)
    assert GPS not in exif and exif.get_ifd(GPS) == {}
    assert saved.info["icc_profile"] == P3_LIKE


def test_gps_is_kept_when_asked(tmp_path):
    photo = load_image(_encoded(_marked(), "JPEG", exif=_camera_exif(orientation=6)))
    gps = _saved(photo.crop((0, 0, 30, 40)), tmp_path / "crop.jpg", keep_gps=True).getexif()
    position = gps.get_ifd(GPS)
    assert position[1] == "N" and position[2] == pytest.approx(LATITUDE[0])


def _exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """An EXIF block, by hand: IFD0 with the make, IFD1 pointing at a JPEG thumbnail."""
    make = b"Canon\0"
    ifd0 = 8
    text = ifd0 + 2 + 12 + 4
    ifd1 = text + len(make)
    data = ifd1 + 2 + 2 * 12 + 4
    block = b"II*\0" + struct.pack("<I", ifd0)
    block += struct.pack("<H", 1) + struct.pack("<HHII", MAKE, 2, len(make), text)
    block += struct.pack("<I", ifd1) + make
    block += struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, data)
    block += struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack("<I", 0)
    return b"Exif\0\0" + block + thumbnail


def test_the_exif_thumbnail_of_the_whole_photo_is_not_saved(tmp_path):
    thumbnail = _encoded(Image.new("RGB", (16, 12), (0, 255, 0)), "JPEG")
    source = _encoded(_marked(), "JPEG", exif=_exif_with_thumbnail(thumbnail))
    assert Image.open(io.BytesIO(source)).getexif().get_ifd(IFD1)  # it is there to drop
    saved = _saved(load_image(source).crop((0, 0, 40, 30)), tmp_path / "crop.jpg")
    assert saved.getexif()[MAKE] == "Canon"
    assert saved.getexif().get_ifd(IFD1) == {}
    assert thumbnail not in (tmp_path / "crop.jpg").read_bytes()


def test_xmp_is_not_written_as_it_can_repeat_the_position(tmp_path):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><exif:GPSLatitude>51,30.2N</exif:GPSLatitude>'
    xmp += b"</x:xmpmeta>"
    source = _encoded(_marked(), "JPEG", xmp=xmp, exif=_camera_exif())
    saved = _saved(load_image(source).crop((0, 0, 40, 30)), tmp_path / "crop.jpg")
    assert saved.getexif()[MAKE] == "Canon"
    assert b"GPSLatitude" not in (tmp_path / "crop.jpg").read_bytes()


def test_a_tiffs_tag_directory_becomes_exif_without_its_layout(tmp_path):
    exif = Image.Exif()  # Pillow writes no EXIF sub-directory into a TIFF: IFD0 tags only
    exif.update({**CAMERA, ORIENTATION: 8, DATE_TIME: "2024:05:06 07:08:09"})
    photo = load_image(_encoded(_marked(), "TIFF", exif=exif, compression="tiff_lzw"))
    assert photo.size == (60, 80)
    saved = _saved(photo.crop((0, 0, 30, 40)), tmp_path / "crop.jpg").getexif()
    assert {tag: saved[tag] for tag in CAMERA} == CAMERA
    assert saved[DATE_TIME] == "2024:05:06 07:08:09"
    # The TIFF's strips, size and compression described that file, not this one.
    assert not {0x0100, 0x0101, 0x0103, 0x0111, 0x0117, ORIENTATION} & set(saved)


def test_loading_and_saving_leave_the_callers_image_as_it_was(tmp_path):
    mine = Image.open(io.BytesIO(_encoded(_marked(), "JPEG", exif=_camera_exif(orientation=6))))
    before = dict(mine.info)
    photo = load_image(mine)
    assert mine.info == before and mine.getexif()[ORIENTATION] == 6
    crop = photo.crop((0, 0, 30, 40))
    kept = dict(crop.info)
    save_image(crop, tmp_path / "crop.jpg")
    assert crop.info == kept and GPS in crop.getexif()  # dropped in the file, not here


def test_an_unreadable_exif_block_is_left_out_not_fatal(tmp_path, caplog):
    crop = _marked()
    crop.info["exif"] = b"Exif\0\0not a TIFF header"
    with caplog.at_level(logging.WARNING, logger="cropper.core.fileio"):
        saved = _saved(crop, tmp_path / "crop.jpg")
    assert not saved.getexif()
    assert "crop.jpg: saved without the photo's unreadable EXIF block (" in caplog.text


def test_exif_too_long_for_jpeg_loses_its_maker_note_first(tmp_path, caplog):
    exif = _camera_exif()
    exif.get_ifd(EXIF_IFD)[MAKER_NOTE] = b"\1" * 70_000
    crop = _marked()
    crop.info["exif"] = exif.tobytes()
    saved = _saved(crop, tmp_path / "crop.jpg").getexif()
    assert saved[MAKE] == "Canon" and MAKER_NOTE not in saved.get_ifd(EXIF_IFD)
    # Too long even without it: saved without EXIF, and said so.
    exif.get_ifd(EXIF_IFD)[0x9286] = b"ASCII\0\0\0" + b"x" * 70_000  # UserComment
    crop.info["exif"] = exif.tobytes()
    with caplog.at_level(logging.WARNING, logger="cropper.core.fileio"):
        assert not _saved(crop, tmp_path / "crop.jpg").getexif()
    assert "too long for JPEG" in caplog.text
    assert _saved(crop, tmp_path / "crop.png").getexif()[MAKE] == "Canon"  # PNG has room


def test_upright_exif_is_none_when_nothing_is_left():
    assert upright_exif(_marked()) is None
    bare = Image.Exif()
    bare[ORIENTATION] = 6
    only_orientation = _marked()
    only_orientation.info["exif"] = bare.tobytes()
    assert upright_exif(only_orientation) is None
    position = Image.Exif()
    position.get_ifd(GPS).update({1: LATITUDE[1], 2: LATITUDE[0]})
    only_gps = _marked()
    only_gps.info["exif"] = position.tobytes()
    assert upright_exif(only_gps) is not None and upright_exif(only_gps, keep_gps=False) is None


# ------------------------------------------------------------------- quality and format


def test_jpeg_quality_is_settable_and_high_quality_keeps_full_colour(tmp_path):
    photo = load_image(_encoded(_marked((400, 300)), "PNG"))
    noisy = Image.effect_noise((400, 150), 60).convert("RGB")
    photo.paste(noisy, (0, 150), mask=Image.new("L", (400, 150), 128))
    sizes = {}
    for quality in (95, 90, 89, 40):
        path = tmp_path / f"q{quality}.jpg"
        sampling = JpegImagePlugin.get_sampling(_saved(photo, path, quality=quality))
        assert sampling == (0 if quality >= 90 else 2)  # 4:4:4 from 90 up, else 4:2:0
        sizes[quality] = path.stat().st_size
    assert sizes[95] > sizes[90] > sizes[89] > sizes[40]
    save_image(photo, tmp_path / "default.jpg")  # 95 by default, positional too
    save_image(photo, tmp_path / "positional.jpg", 95)
    assert (tmp_path / "default.jpg").read_bytes() == (tmp_path / "positional.jpg").read_bytes()


@pytest.mark.parametrize("quality", [0, 101, 95.5, True, "95", None])
def test_a_bad_quality_is_one_line_naming_it(tmp_path, quality):
    with pytest.raises(ConfigError, match=r"^quality .*: expected a whole number from 1 to 100$"):
        save_image(_marked(), tmp_path / "crop.jpg", quality)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".ppm"])
def test_formats_without_room_for_metadata_still_save(tmp_path, suffix):
    photo = load_image(_encoded(_marked(), "JPEG", exif=_camera_exif(6), icc_profile=P3_LIKE))
    saved = _saved(photo.crop((0, 0, 30, 40)), tmp_path / f"crop{suffix}")
    assert saved.size == (30, 40) and saved.format == Image.registered_extensions()[suffix]


def test_the_resolution_is_kept(tmp_path):
    photo = load_image(_encoded(_marked(), "JPEG", dpi=(300, 300)))
    assert _saved(photo.crop((0, 0, 30, 40)), tmp_path / "crop.jpg").info["dpi"] == (300, 300)


def test_a_real_photo_without_metadata_gets_none_invented(gaicd_photo, tmp_path):
    with Image.open(gaicd_photo) as original:
        assert "icc_profile" not in original.info and not original.getexif()
    photo = load_image(gaicd_photo)
    saved = _saved(photo.crop((100, 100, 600, 500)), tmp_path / "crop.jpg")
    assert "icc_profile" not in saved.info and not saved.getexif()
    assert saved.size == (500, 400)
