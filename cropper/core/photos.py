"""A photo held by reference: its size known at once, its pixels decoded when asked.

The loop works from a copy of a photo that is only as large as its prompts and scores need
(:meth:`Photo.working`: a 12-megapixel JPEG is decoded at half or a quarter of its size by
the decoder itself), and a result keeps the :class:`Photo`, not pixels: a path, the bytes
of a fetched URL, or the caller's own image or array, never a copy. Full resolution is
decoded only for what is saved (:meth:`Photo.crop`), so a batch of thousands holds no
photos in its results.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from cropper.core.boxes import Size
from cropper.core.fetch import URL_MAX_BYTES, URL_TIMEOUT, check_fetchable, fetch, is_url
from cropper.core.images import MAX_PIXELS, ImageInput, describe, load_image

#: Decoded photos kept for the next ask (a result's crop, its overlay, its top crops are
#: usually asked one after the other): a few, so that holding them costs little.
RECENT = 3
_recent: OrderedDict[tuple[int, int | None], Image.Image] = OrderedDict()
_recent_lock = threading.Lock()
_tokens = itertools.count()


class Photo:
    """A photo by reference: ``size`` (as displayed), and its pixels on demand.

    Built by :meth:`open`, which reads the photo once (the working copy it returns) and
    keeps only where it came from. A PIL image or array given by the caller is kept as the
    caller's own object, not copied.
    """

    __slots__ = ("source", "size", "name", "_token", "__weakref__")

    def __init__(self, source: ImageInput, size: Size, name: str):
        self.source = source  # a path, bytes (a fetched URL's too), a PIL image or an array
        self.size = size  # (w, h) as displayed, EXIF orientation applied
        self.name = name
        self._token = next(_tokens)  # names it in the decode cache (ids are reused)

    @classmethod
    def open(
        cls,
        source: ImageInput,
        least_side: int | None = None,
        *,
        allow_urls: bool = False,
        max_pixels: int = MAX_PIXELS,
    ) -> tuple[Photo, Image.Image]:
        """The photo by reference, and a copy of it whose longer side is >= ``least_side``.

        ``None``: the copy is the whole photo. Errors are :func:`load_image`'s.
        """
        if isinstance(source, Photo):
            return source, source.load_pixels(least_side)
        name = describe(source)
        if isinstance(source, str) and is_url(source):
            check_fetchable(source, allow_urls)
            source = fetch(source, max_bytes=URL_MAX_BYTES, timeout=URL_TIMEOUT)
        elif isinstance(source, Path):
            source = str(source)
        copy = load_image(source, max_pixels, least_side=least_side)  # refuses what it must
        full = _displayed_size(source) or copy.size
        photo = cls(source, full, name)
        return photo, copy

    @classmethod
    def of(cls, image: Image.Image) -> Photo:
        """A photo already decoded and upright (as ``load_image`` gives it)."""
        return cls(image, image.size, describe(image))

    # -- pixels ------------------------------------------------------------
    def load_pixels(self, least_side: int | None = None) -> Image.Image:
        """The photo decoded: whole, or a copy whose longer side is >= ``least_side``."""
        if least_side is not None and least_side >= max(self.size):
            least_side = None
        key = (self._token, least_side)
        with _recent_lock:
            cached = _recent.get(key)
            if cached is not None:
                _recent.move_to_end(key)
                return cached
        image = load_image(self.source, least_side=least_side)
        with _recent_lock:
            _recent[key] = image
            while len(_recent) > RECENT:
                _recent.popitem(last=False)
        return image

    def crop(
        self,
        pixels: tuple[int, int, int, int],
        size: Size | None = None,
        resample: Image.Resampling = Image.Resampling.LANCZOS,
    ) -> Image.Image:
        """The crop ``pixels`` (of :attr:`size`) at full resolution, or resized to ``size``.

        Resized, it is cut from a copy decoded only as large as that still needs.
        """
        if size is None:
            return self.load_pixels().crop(pixels)
        left, top, right, bottom = pixels
        shrink = min((right - left) / size[0], (bottom - top) / size[1])
        least = max(self.size) / shrink if shrink > 1 else None
        image = self.load_pixels(None if least is None else int(least) + 1)
        sx, sy = image.width / self.size[0], image.height / self.size[1]
        box = (left * sx, top * sy, right * sx, bottom * sy)
        return image.resize(size, resample, box=box)

    def __repr__(self) -> str:
        return f"Photo({self.name}, {self.size[0]}x{self.size[1]})"


def _displayed_size(source: Any) -> Size | None:
    """The photo's size as displayed, from its header (``None``: its copy is all of it).

    Read after the photo decoded, so that the header is a good one. Width and height swap
    where the EXIF orientation turns the photo (5 to 8), as ``exif_transpose`` does.
    """
    import io

    import numpy as np

    if isinstance(source, np.ndarray):
        return source.shape[1], source.shape[0]
    try:
        if isinstance(source, Image.Image):
            return _turned(source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(source)) as opened:
                return _turned(opened)
        with Image.open(source) as opened:
            return _turned(opened)
    except Exception:  # any: the photo decoded, so this is its EXIF, which viewers ignore
        return None


def _turned(image: Image.Image) -> Size:
    w, h = image.size
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # a malformed EXIF block: ignored, as load_image ignores it
        orientation = None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
