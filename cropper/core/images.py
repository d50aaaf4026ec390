"""Loading photos: EXIF orientation applied, RGB, size-bounded, with one-line errors."""

from __future__ import annotations

import contextlib
import errno
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
    "describe",
    "file_problem",
    "fit_within",
    "load_image",
    "open_regular_file",
    "shorten_path",
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
) -> Image.Image:
    """Open a photo as displayed: EXIF orientation applied, converted to RGB.

    ``source`` is a path, an ``http(s)://`` URL (fetched only with ``allow_urls``, at
    most ``url_max_bytes`` within ``url_timeout`` seconds), a PIL image (its current
    frame), an array (HxW, HxWx3 or HxWx4) or the bytes of a file. An animated photo
    gives its first frame; transparency is shown over white.

    Raises :class:`ImageError` naming the photo when it is missing, unreadable,
    truncated, not an image, empty, or larger than ``max_pixels`` (checked from the
    header, before decoding).
    """
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name, max_pixels)
    if isinstance(source, Image.Image):
        _check_size(source.size, name, max_pixels)
        return _displayed(source, name)
    if isinstance(source, str) and is_url(source):
        check_fetchable(source, allow_urls)
        source = fetch(source, max_bytes=url_max_bytes, timeout=url_timeout)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError(f"{name}: empty (0 bytes), not an image")
        return _decode(io.BytesIO(source), name, max_pixels)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"{name}: expected a path, URL, PIL image, array or bytes")
    with _open_file(Path(source), name) as stream:
        return _decode(stream, name, max_pixels)


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


def _decode(stream: IO[bytes], name: str, max_pixels: int) -> Image.Image:
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
        image.load()
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
    """The photo as shown: EXIF orientation applied, then RGB; always a new image."""
    try:
        image.load()  # a lazily opened PIL image given by the caller decodes here
    except Exception as exc:  # decoders fail in many ways on bad files
        raise _undecodable(name, exc) from None
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # a malformed EXIF block fails in many ways
        # As viewers do: a broken orientation tag is ignored, not fatal.
        log.warning("%s: ignored its unreadable EXIF orientation (%s)", name, _why(exc))
        oriented = image
    try:
        rgb = oriented if oriented.mode == "RGB" else _to_rgb(oriented)
    except Exception as exc:  # decoders fail in many ways on bad files
        raise ImageError(
            f"{name}: cannot convert its {oriented.mode} pixels to RGB ({_why(exc)})"
        ) from None
    return rgb.copy() if rgb is image else rgb


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


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """The photo scaled down (never up) so its longer side is at most ``max_side``."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)
