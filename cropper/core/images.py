"""Loading photos: EXIF orientation applied, RGB, size-bounded, with one-line errors."""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import stat
import threading
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cropper.core.errors import ImageError
from cropper.core.fetch import URL_MAX_BYTES, URL_TIMEOUT, check_fetchable, fetch, is_url, show_url

__all__ = [
    "MAX_PIXELS",
    "ImageInput",
    "URL_MAX_BYTES",
    "URL_TIMEOUT",
    "NotRegularFileError",
    "colour_space",
    "describe",
    "file_problem",
    "fit_within",
    "icc_profile_of",
    "load_image",
    "open_regular_file",
    "shorten_path",
    "upright_exif",
]

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]  # noqa: UP007 (runtime alias)

#: File suffixes taken as photos when a folder or glob is given.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

#: Photos above this many pixels are refused before decoding (a decompression bomb
#: or a scan too large to crop in memory). 1.5e8 is a 12,000 x 12,500 photo.
MAX_PIXELS = 150_000_000

# Pillow's own bomb check reads a module global; batches load photos in several
# threads, so it is switched off under this lock only while a header is read.
_HEADER_LOCK = threading.Lock()


def describe(source: ImageInput) -> str:
    """A short name for a photo in messages: its path or URL, or its kind."""
    if isinstance(source, str) and is_url(source):
        return show_url(source)
    if isinstance(source, (str, os.PathLike)):
        return shorten_path(os.fspath(source))
    if isinstance(source, Image.Image):
        return f"<PIL image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageInput,
    max_pixels: int = MAX_PIXELS,
    *,
    allow_urls: bool = False,
    url_max_bytes: int = URL_MAX_BYTES,
    url_timeout: float = URL_TIMEOUT,
    least_side: int | None = None,
) -> Image.Image:
    """Open a photo as displayed: EXIF orientation applied, converted to RGB.

    ``source`` is a path, an ``http(s)://`` URL (fetched only with ``allow_urls``, at
    most ``url_max_bytes`` within ``url_timeout`` seconds), a PIL image (its current
    frame), an array (HxW, HxWx3 or HxWx4) or the bytes of a file. An animated photo
    gives its first frame; transparency is shown over white.

    The photo's metadata stays in ``info``, true of the pixels returned, so that crops
    (``photo.crop``, ``photo.resize``, which copy ``info``) and
    :func:`cropper.core.fileio.save_image` keep it: ``exif`` (bytes; see
    :func:`upright_exif`: no orientation, as the pixels are upright, and no thumbnail; GPS
    kept here, dropped on saving unless asked) and ``icc_profile`` when it describes RGB.
    A CMYK or grey photo with its own profile is converted to sRGB through it and tagged
    sRGB; another profile that cannot describe RGB pixels is left out.

    ``least_side``: a smaller copy is enough, whose longer side is this (the photo itself
    when smaller, or when it has no more pixels than a square of that side): a JPEG is
    decoded at 1/2, 1/4 or 1/8 of its size (the decoder's own scaling, far faster than
    decoding it all), then resized the rest of the way. What works from a copy (prompts,
    scoring, saliency, faces) takes one.

    Raises :class:`ImageError` naming the photo when it is missing, unreadable,
    truncated, not an image, empty, or larger than ``max_pixels`` (checked from the
    header, before decoding).
    """
    name = describe(source)
    if hasattr(source, "load_pixels"):  # a cropper.core.photos.Photo
        return source.load_pixels(least_side)
    if isinstance(source, np.ndarray):
        return _reduced(_from_array(source, name, max_pixels), least_side)
    if isinstance(source, Image.Image):
        _check_size(source.size, name, max_pixels)
        return _displayed(_reduced(source, least_side), name)
    if isinstance(source, str) and is_url(source):
        check_fetchable(source, allow_urls)
        source = fetch(source, max_bytes=url_max_bytes, timeout=url_timeout)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError(f"{name}: empty (0 bytes), not an image")
        return _decode(io.BytesIO(source), name, max_pixels, least_side)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"{name}: expected a path, URL, PIL image, array or bytes")
    with _open_file(Path(source), name) as stream:
        return _decode(stream, name, max_pixels, least_side)


def _reduced(image: Image.Image, least_side: int | None) -> Image.Image:
    """``image`` with its longer side ``least_side`` (never enlarged).

    Resampled with a box filter, which averages the pixels each new one covers (as
    ``Image.reduce`` and the JPEG decoder's own scaling do): a third of bicubic's cost
    (20 ms against 57 ms for a 12-megapixel JPEG's 2000x1500 draft on this machine).
    Every prompt image, crop and map is cut from this copy, so its size sets their cost.
    Palettes and bilevel photos are left as they are.
    """
    if not _wants_copy(image.size, least_side) or image.mode not in _REDUCIBLE:
        return image
    return fit_within(image, least_side, resample=Image.Resampling.BOX)  # type: ignore[arg-type]


def _wants_copy(size: tuple[int, int], least_side: int | None) -> bool:
    """Whether a photo of ``size`` is worth a smaller copy.

    It is when longer than ``least_side`` and of more pixels than a square of it. A long
    strip of few pixels stays whole, as its short side is what an exact ratio needs (a
    2000x30 strip would shrink to 1024x15, where a pixel is 7% of a side).
    """
    if least_side is None:
        return False
    w, h = size
    return max(w, h) > least_side and w * h > least_side * least_side


#: Modes Pillow resamples with any filter (palettes and bilevel only by nearest).
_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "I", "F", "CMYK"})


#: Characters of a path shown in messages; a longer one keeps its start and its end.
MAX_SHOWN_PATH = 200


def shorten_path(path: str | bytes) -> str:
    """A path as messages show it: on one line, and cut short when very long.

    Control characters are escaped; a path over :data:`MAX_SHOWN_PATH` characters keeps
    its start, ``...`` and its end (the file name).
    """
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if not text.isprintable():  # a newline in a file name must not break a one-line message
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= MAX_SHOWN_PATH:
        return text
    head = MAX_SHOWN_PATH // 3
    return f"{text[:head]}...{text[-(MAX_SHOWN_PATH - head - 3) :]}"


#: What a path that is no regular file is, by its type, for messages.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
# Opened without blocking: a FIFO swapped in after the check must not wait for a writer.
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)  # fmt: skip


class NotRegularFileError(OSError):
    """A FIFO, socket or device where a file was expected (reading it could block forever)."""


def open_regular_file(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for reading, if it is a regular file; never blocks.

    The type is checked before opening (a FIFO would wait for a writer, a device never
    end) and again on what was opened (opened without blocking, so a file swapped in
    between cannot hang either). Raises ``IsADirectoryError`` for a folder,
    :class:`NotRegularFileError` for any other special file, ``OSError`` when the path
    cannot be looked at or opened, ``ValueError`` for a NUL byte in it; :func:`file_problem`
    says which in words.
    """
    _check_regular(os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _check_regular(os.fstat(fd).st_mode)  # what was opened, not what was checked
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder")
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _SPECIAL_FILES if test(mode)), "a special file")
        raise NotRegularFileError(f"is not a regular file ({kind})")


def file_problem(exc: Exception) -> str:
    """Why :func:`open_regular_file` failed, in a user's words (no path, no hint)."""
    if isinstance(exc, NotRegularFileError):
        return str(exc)
    if isinstance(exc, ValueError):  # a NUL byte in the path
        return f"not a valid path ({_why(exc)})"
    code = getattr(exc, "errno", None)
    if code == errno.EISDIR:
        return "is a folder"
    if code in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    if code == errno.ENAMETOOLONG:
        return "the path is too long for the file system"
    return f"cannot read the file ({getattr(exc, 'strerror', None) or _why(exc)})"


@contextlib.contextmanager
def _open_file(path: Path, name: str):
    """The photo file opened for reading, or a one-line error saying why it cannot be."""
    try:
        stream = open_regular_file(path)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: {_photo_problem(exc)}") from None
    with stream:
        if os.fstat(stream.fileno()).st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes), not an image")
        yield stream


def _photo_problem(exc: Exception) -> str:
    problem = file_problem(exc)
    if isinstance(exc, NotRegularFileError):
        return f"{problem}, so it cannot be a photo; give the photo file itself"
    if getattr(exc, "errno", None) == errno.EISDIR:
        return f"{problem}, not a photo; give the photos in it"
    if getattr(exc, "errno", None) == errno.ENAMETOOLONG:
        return f"{problem}; check it, or move the photo to a shorter path"
    if problem.startswith("cannot read"):
        return problem
    return f"{problem}; check the path"


def _decode(
    stream: IO[bytes], name: str, max_pixels: int, least_side: int | None = None
) -> Image.Image:
    """Read the header, check the size, then decode: nothing large is allocated first."""
    try:
        with _HEADER_LOCK:
            before = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # checked below against this call's own limit
            try:
                image = Image.open(stream)
            finally:
                Image.MAX_IMAGE_PIXELS = before
        _check_size(image.size, name, max_pixels)
        if _wants_copy(image.size, least_side) and image.format == "JPEG":
            w, h = image.size
            scale = least_side / max(w, h)  # type: ignore[operator]
            if scale < 0.5:  # the decoder scales by 1/2, 1/4 or 1/8, keeping at least this
                image.draft(image.mode, (max(1, round(w * scale)), max(1, round(h * scale))))
        image.load()
        image = _reduced(image, least_side)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: {_bomb_hint(max_pixels)}") from None
    except Exception as exc:  # decoders fail in many ways on bad files
        raise _undecodable(name, exc) from None
    return _displayed(image, name)


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: {w}x{h} has no pixels; not a photo")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} is {w * h:,} pixels, {_bomb_hint(max_pixels)}")


def _bomb_hint(max_pixels: int) -> str:
    return f"above the limit of {max_pixels:,}; downscale it first or raise max_pixels"


def _undecodable(name: str, exc: Exception) -> ImageError:
    return ImageError(f"{name}: cannot decode the photo ({_why(exc)}); is it truncated?")


def _why(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _displayed(image: Image.Image, name: str) -> Image.Image:
    """The photo as shown: EXIF orientation applied, then RGB; always a new image.

    Its ``info`` comes along, made true of the pixels returned: ``exif`` from
    :func:`upright_exif`, ``icc_profile`` from :func:`_as_rgb`.
    """
    try:
        image.load()  # a lazily opened PIL image given by the caller decodes here
    except Exception as exc:  # decoders fail in many ways on bad files
        raise _undecodable(name, exc) from None
    try:
        oriented = ImageOps.exif_transpose(image)
        exif_readable = True
    except Exception as exc:  # a malformed EXIF block fails in many ways
        # As viewers do: a broken orientation tag is ignored, not fatal.
        log.warning("%s: ignored its unreadable EXIF orientation (%s)", name, _why(exc))
        oriented, exif_readable = image, False
    rgb, profile = _as_rgb(oriented, name)
    out = rgb.copy() if rgb is image else rgb
    exif = None
    if exif_readable:
        try:
            exif = upright_exif(image, out.size)
        except ImageError as exc:
            log.warning("%s: left out its %s", name, exc)
    _set_metadata(out, oriented.info, exif=exif, icc_profile=profile)
    return out


def _as_rgb(image: Image.Image, name: str) -> tuple[Image.Image, bytes | None]:
    """The pixels in RGB, and the ICC profile that describes them (``None``: none does).

    An RGB profile stays with pixels that were RGB (or RGBA, or a palette); a CMYK or grey
    photo is converted through its own profile to sRGB; any other profile is left out.
    """
    profile = _profile_bytes(image.info.get("icc_profile"))
    space = colour_space(profile)
    if space in _MANAGED and image.mode == _MANAGED[space]:
        managed = _managed_to_srgb(image, profile, name)
        if managed is not None:
            return managed, _srgb_profile()
        profile = None
    elif profile is not None and (space != "RGB" or image.mode not in _RGB_MODES):
        log.debug("%s: left out its %s ICC profile of %s pixels", name, space, image.mode)
        profile = None
    try:
        return (image if image.mode == "RGB" else _to_rgb(image)), profile
    except Exception as exc:  # decoders fail in many ways on bad files
        raise ImageError(
            f"{name}: cannot convert its {image.mode} pixels to RGB ({_why(exc)})"
        ) from None


# ----------------------------------------------------------------------------- metadata

#: Modes whose pixels an RGB profile describes as they are once converted to RGB: RGB
#: itself, RGB with alpha (composited over white, which is white in any RGB space) and
#: palettes of RGB colours.
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA"})

#: Profiles converted to sRGB by colour management, by colour space: the mode they describe.
_MANAGED = {"CMYK": "CMYK", "GRAY": "L"}

#: ``info`` keys :func:`_displayed` sets itself (or drops: transparency is composited away,
#: and a PNG's hex-encoded EXIF text is what ``exif`` now holds).
_REPLACED_INFO = ("exif", "icc_profile", "transparency", "Raw profile type exif")

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003  # PixelXDimension, PixelYDimension in the EXIF IFD

#: IFD0 tags that describe how a TIFF file lays out its pixels (or embed blocks kept
#: elsewhere or not at all: the ICC profile, XMP, Photoshop, IPTC), not the photo: a
#: TIFF's tag directory is its EXIF, and these would be false in any other file.
_LAYOUT_TAGS = frozenset(
    {
        0x00FE, 0x00FF,  # NewSubfileType, SubfileType
        0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x010A,  # size, bits, compression, ...
        0x0111, 0x0115, 0x0116, 0x0117, 0x011C,  # strips, samples, planar configuration
        0x013D, 0x0140, 0x0142, 0x0143, 0x0144, 0x0145,  # predictor, colour map, tiles
        0x0152, 0x0153, 0x015B,  # extra samples, sample format, JPEG tables
        0x0201, 0x0202, 0x0212,  # an embedded JPEG (a thumbnail), YCbCr subsampling
        0x02BC, 0x83BB, 0x8649, 0x8773,  # XMP, IPTC, Photoshop, ICC profile
    }
)  # fmt: skip


def colour_space(profile: bytes | None) -> str | None:
    """The colour space an ICC profile describes (``"RGB"``, ``"CMYK"``, ``"GRAY"``, ...).

    Read from the profile header (bytes 16-20); ``None`` for no profile or one too short
    to have a header.
    """
    if not profile or len(profile) < 128:
        return None
    return profile[16:20].decode("latin-1").strip() or None


def icc_profile_of(image: Image.Image) -> bytes | None:
    """The ICC profile in ``image.info`` if it describes the image's pixels, else ``None``.

    An RGB profile goes with RGB (and RGBA, palette) pixels, a grey one with grey, a CMYK
    one with CMYK: a profile saved with pixels of another kind would misdescribe them.
    """
    profile = _profile_bytes(image.info.get("icc_profile"))
    space = colour_space(profile)
    if space == "RGB" and image.mode in _RGB_MODES:
        return profile
    if space == "GRAY" and image.mode in ("L", "LA", "La"):
        return profile
    if space == "CMYK" and image.mode == "CMYK":
        return profile
    return None


def upright_exif(
    image: Image.Image, size: tuple[int, int] | None = None, *, keep_gps: bool = True
) -> bytes | None:
    """The EXIF block for an upright copy of ``image``, ``size`` big: ``image``'s own, fixed.

    Camera details (make, model, lens, exposure, dates, ...) are kept; the orientation is
    left out (the pixels are taken as upright, as :func:`load_image` makes them), so are
    TIFF layout tags and the thumbnail (it shows the whole photo), and the GPS position
    unless ``keep_gps``. The pixel dimensions recorded, if any, become ``size`` (the
    image's own by default). ``None`` when nothing is left.

    The block is read from ``image.info["exif"]``, which crops copy, else from what
    ``image.getexif()`` finds (a TIFF's tag directory, a PNG's EXIF text); ``image`` itself
    is left as it was. Raises :class:`ImageError` when the block cannot be read or
    written back.
    """
    try:
        exif = Image.Exif()  # a copy: the caller's image keeps its own EXIF as it was
        raw = image.info.get("exif")
        if isinstance(raw, (bytes, bytearray)) and raw:
            exif.load(bytes(raw))
        else:
            source = image.getexif()
            if not len(source):
                return None
            exif.load(source.tobytes())
        # The GPS block is dropped by its pointer, before anything reads it in: Pillow
        # writes back every sub-block it has read.
        dropped = {_ORIENTATION, *_LAYOUT_TAGS} | (set() if keep_gps else {_GPS_IFD})
        for tag in dropped & set(exif):
            del exif[tag]
        if _EXIF_IFD in exif:
            details = exif.get_ifd(_EXIF_IFD)
            width, height = size or image.size
            if _PIXEL_X in details:
                details[_PIXEL_X] = width
            if _PIXEL_Y in details:
                details[_PIXEL_Y] = height
        return exif.tobytes() if len(exif) else None  # IFD1, the thumbnail, is not written
    except Exception as exc:  # a malformed EXIF block fails in many ways
        raise ImageError(f"unreadable EXIF block ({_why(exc)})") from None


def _profile_bytes(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def _set_metadata(
    image: Image.Image, info: dict, *, exif: bytes | None, icc_profile: bytes | None
) -> None:
    """Give ``image`` the ``info`` it came with, its EXIF and profile replaced."""
    kept = {key: value for key, value in info.items() if key not in _REPLACED_INFO}
    if exif:
        kept["exif"] = exif
    if icc_profile:
        kept["icc_profile"] = icc_profile
    image.info = kept
    # Pillow caches a parsed EXIF per image (exif_transpose read the old block): reload
    # it, so that getexif() tells what info now holds.
    image.getexif().load(exif or b"")


def _managed_to_srgb(image: Image.Image, profile: bytes, name: str) -> Image.Image | None:
    """A CMYK or grey photo converted to sRGB through its own ICC profile.

    ``None`` when that cannot be done (Pillow without LittleCMS, a profile LittleCMS
    rejects): the caller then converts naively and leaves the profile out.
    """
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without LittleCMS
        log.debug("%s: no ImageCms to convert its %s profile's colours", name, image.mode)
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, _srgb(), outputMode="RGB")
    except Exception as exc:  # LittleCMS rejects bad profiles in many ways
        log.warning(
            "%s: ignored its unusable %s ICC profile (%s); colours converted without it",
            name, image.mode, _why(exc),
        )  # fmt: skip
        return None


@functools.lru_cache(maxsize=1)
def _srgb():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> bytes:
    """The bytes of LittleCMS's sRGB profile, which tags photos converted to sRGB."""
    return _srgb().tobytes()


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB over white where there is transparency; deep and float greys scaled to 8 bits."""
    mode = image.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode.startswith("I") or mode.startswith("F"):
        return _grey_to_rgb(np.asarray(image), is_float=mode.startswith("F"))
    return image.convert("RGB")


def _grey_to_rgb(values: np.ndarray, *, is_float: bool) -> Image.Image:
    """Greys of any range as 8-bit RGB: [0, 1] floats stretched, deeper ones by their peak."""
    arr = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    arr = np.clip(arr, 0.0, None)
    peak = float(arr.max()) if arr.size else 0.0
    if is_float and peak <= 1.0:
        scale = 255.0
    else:
        # Deep greys (16-bit, 32-bit): scaled by their brightest value, not clipped white.
        scale = 255.0 / peak if peak > 255.0 else 1.0
    grey = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _from_array(array: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    shape = array.shape
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))):
        raise ImageError(f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ImageError(f"{name}: expected an array of numbers, got dtype {array.dtype}")
    _check_size((shape[1], shape[0]), name, max_pixels)
    arr = array[:, :, 0] if array.ndim == 3 and shape[2] == 1 else array
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Bools as 0/255, [0, 1] floats stretched, integers above 255 scaled by their peak."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    peak = float(values.max())
    if np.issubdtype(arr.dtype, np.floating) and peak <= 1.0:
        values = values * 255.0
    elif peak > 255.0 and np.issubdtype(arr.dtype, np.integer):
        values = values * (255.0 / peak)
    return np.clip(values, 0, 255).round().astype(np.uint8)


def fit_within(
    image: Image.Image, max_side: int, *, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """The photo scaled down (never up) so its longer side is at most ``max_side``."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, resample)
