"""Photos sized to a VLM's pixel budget, so its image processor sends them on unresized.

Qwen2.5-VL and Qwen3-VL resize every image with ``smart_resize``: each side to a
multiple of ``factor`` (patch size x merge size), then scaled into
``[min_pixels, max_pixels]`` keeping the aspect. A photo already of that size
passes through as it is, so the pixels the model sees, the image tokens it costs
and the pixel coordinates it writes all belong to the photo cropper sent. Boxes
come back to the original through the normalized :class:`cropper.core.boxes.Box`: a
reply is parsed against the sent photo's size (``parse_reply(text, coords, sent.size)``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from PIL import Image

from cropper.core.boxes import Size
from cropper.core.errors import ConfigError, ImageError

#: smart_resize refuses photos longer than this many times their width (or the reverse).
MAX_ASPECT = 200
#: Photos are sent at most this many times longer than wide: a longer strip is stretched
#: across to it, well within what Qwen-VL's processor (and others') accept.
MAX_SENT_ASPECT = 100


@dataclass(frozen=True)
class PixelBudget:
    """How a VLM's image processor sizes each image (the ``smart_resize`` rule)."""

    factor: int = 28  # sides of the sent photo are multiples of this (patch x merge size)
    min_pixels: int = 56 * 56  # fewer pixels are scaled up to this
    max_pixels: int = 28 * 28 * 1280  # more pixels are scaled down to this
    name: str = ""  # the preset it came from, for messages

    def __post_init__(self) -> None:
        if self.factor < 1 or self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            raise ConfigError(
                f"pixel budget {self}: need factor >= 1 and 1 <= min_pixels <= max_pixels"
            )

    def size(self, size: Size) -> Size:
        """The ``(w, h)`` the model's processor resizes a photo of ``size`` to."""
        return model_size(
            size, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )

    def with_max_pixels(self, max_pixels: int) -> PixelBudget:
        """The same budget with the server's ``max_pixels`` (vLLM's ``--mm-processor-kwargs``)."""
        return PixelBudget(
            self.factor, min(self.min_pixels, max_pixels), max_pixels, f"{self.name}:{max_pixels}"
        )


# The checkpoints' own preprocessor_config.json values, which a server uses unless told
# otherwise (Qwen/Qwen2.5-VL-*-Instruct; Qwen/Qwen3-VL-*-Instruct: patch 16, merge 2).
QWEN2_5_VL = PixelBudget(factor=28, min_pixels=3136, max_pixels=12845056, name="qwen2.5-vl")
QWEN3_VL = PixelBudget(factor=32, min_pixels=65536, max_pixels=16777216, name="qwen3-vl")

#: Named budgets; ``"none"`` (or ``None``) keeps the plain longest-side fit.
BUDGETS: dict[str, PixelBudget] = {"qwen2.5-vl": QWEN2_5_VL, "qwen3-vl": QWEN3_VL}


def model_size(
    size: Size,
    *,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> Size:
    """The ``(w, h)`` Qwen2-VL's ``smart_resize`` gives a photo of ``size`` (same defaults).

    Raises :class:`ImageError` for a photo more than 200 times longer than wide, which
    the model's processor refuses too.
    """
    w, h = size
    if min(w, h) < 1:
        raise ImageError(f"a photo of {w}x{h} pixels has no area; check the photo")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ImageError(
            f"a {w}x{h} photo is more than {MAX_ASPECT} times longer than wide, which "
            "Qwen-VL's image processor refuses; crop or pad it first"
        )
    # The very arithmetic of transformers' smart_resize (Python's round, half to even).
    h_bar = round(h / factor) * factor
    w_bar = round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return w_bar, h_bar


def within_aspect(size: Size, limit: int = MAX_SENT_ASPECT) -> Size:
    """``size`` with its shorter side stretched so the photo is at most ``limit`` times longer.

    Boxes are relative to the photo's sides, so a reply about the stretched photo maps
    back to the original exactly; only the model's view of the strip is distorted.
    """
    w, h = size
    if max(w, h) <= limit * min(w, h):
        return w, h
    short = math.ceil(max(w, h) / limit)
    return (w, short) if w > h else (short, h)


def sent_size(size: Size, budget: PixelBudget | None, max_side: int | None = None) -> Size:
    """The ``(w, h)`` :func:`fit_to_budget` gives a photo of ``size``, without the pixels."""
    w, h = size
    if max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)  # the same rounding as cropper.core.images.fit_within
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    w, h = within_aspect((w, h))  # after the fit, whose rounding would undo it
    return (w, h) if budget is None else budget.size((w, h))


def fit_to_budget(
    image: Image.Image,
    budget: PixelBudget | None,
    max_side: int | None = None,
    *,
    region: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """The photo as it should be sent: scaled so the model's processor leaves it as it is.

    The photo is first fitted within ``max_side`` (never enlarged), as
    :func:`cropper.core.images.fit_within` does, then snapped to the budget: each side a
    multiple of ``budget.factor`` (so the longer side may end up to ``factor / 2``
    past ``max_side``), its pixels within the budget. ``budget=None`` is the plain fit.
    A strip longer than :data:`MAX_SENT_ASPECT` times its width is stretched across to
    that (:func:`within_aspect`), so that any photo or crop can be sent. ``region``
    (pixels ``left, top, right, bottom``) sends that crop of the photo instead.
    """
    if region is not None:
        # A crop of the photo, resized straight from its region: a crop of a large photo
        # is never copied out at full resolution first.
        left, top, right, bottom = region
        target = sent_size((right - left, bottom - top), budget, max_side)
        if target == (right - left, bottom - top):
            return image.crop(region)
        # Whole blocks averaged first, then bicubic (reducing_gap=1): a round's candidate
        # thumbnails cost about 40% less, and are bicubic's alone within a median 47 dB
        # PSNR (least 35 dB; 200 crops of 10 real photos).
        return image.resize(target, Image.Resampling.BICUBIC, box=region, reducing_gap=1.0)
    target = sent_size(image.size, budget, max_side)  # one resize for all of it
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.BICUBIC)


def budget_from_spec(spec: str | PixelBudget | None) -> PixelBudget | None:
    """A budget from ``None``/``"none"``, a preset name, or ``"NAME:MAX_PIXELS"``.

    ``"qwen2.5-vl:1003520"`` is Qwen2.5-VL served with ``max_pixels`` 1003520.
    """
    if spec is None or isinstance(spec, PixelBudget):
        return spec
    text = str(spec).strip().lower()
    if text in ("", "none"):
        return None
    match = re.fullmatch(r"([a-z0-9.\-]+)(?::(\d+))?", text)
    if match is None or match.group(1) not in BUDGETS:
        raise ConfigError(
            f"unknown pixel budget {spec!r}: use none, {', '.join(BUDGETS)}, "
            "or NAME:MAX_PIXELS such as qwen2.5-vl:1003520"
        )
    budget = BUDGETS[match.group(1)]
    if match.group(2) is not None:
        max_pixels = int(match.group(2))
        if max_pixels < budget.factor**2:
            raise ConfigError(
                f"pixel budget {spec!r}: max_pixels must be at least {budget.factor**2}"
            )
        budget = budget.with_max_pixels(max_pixels)
    return budget
