"""Loading photos: EXIF orientation applied, RGB, size-bounded, with one-line errors."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cropper.errors import ImageError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]  # noqa: UP007 (runtime alias)

#: Photos above this many pixels are refused before decoding (a decompression bomb
#: or a scan too large to crop in memory). 1.5e8 is a 12,000 x 12,500 photo.
MAX_PIXELS = 150_000_000


def describe(source: ImageInput) -> str:
    """A short name for a photo in messages: its path, or its kind."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    return f"<{type(source).__name__}>"


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a photo as displayed: EXIF orientation applied, converted to RGB.

    Raises :class:`ImageError` naming the photo when it is missing, unreadable,
    truncated, not an image, or larger than ``max_pixels``.
    """
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
            raise ImageError(f"{name}: no such file; check the path")
        image = _open(source, name, max_pixels)
    w, h = image.size
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: {w}x{h} is {w * h:,} pixels, above the limit of {max_pixels:,}; "
            "downscale it first or raise max_pixels"
        )
    try:
        image = ImageOps.exif_transpose(image)
        image.load()
        return image if image.mode == "RGB" else _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: cannot decode the photo ({exc}); is it truncated?") from None


def _open(source: ImageInput, name: str, max_pixels: int) -> Image.Image:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            image = Image.open(stream)
            image.load()
            return image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(
                f"{name}: more than {max_pixels:,} pixels (a decompression bomb?); "
                "downscale it first or raise max_pixels"
            ) from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{name}: cannot decode the photo ({exc}); is it truncated?") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB over white where there is transparency; first frame of an animation."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip.
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max() or 1.0
        return Image.fromarray((arr / peak * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        arr = array if array.dtype == np.uint8 else np.clip(array, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return _to_rgb(Image.fromarray(arr))
    raise ImageError(f"{name}: expected an HxW, HxWx3 or HxWx4 array")


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """The photo scaled down (never up) so its longer side is at most ``max_side``."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)
