"""The three cropping tasks and their arguments: the requested ratio and the subject."""

from __future__ import annotations

import errno
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from numbers import Rational
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from cropper.core.boxes import Box, Size
from cropper.core.errors import ConfigError, shown

Task = Literal["free", "subject", "aspect"]
TASKS: tuple[str, ...] = ("free", "subject", "aspect")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return task


def check_request(task: str, *, subject: Any = None, ratio: Any = None) -> tuple[str, Ratio | None]:
    """Check a crop request's task and arguments; return the task and its parsed ratio.

    A ratio belongs to ``"aspect"`` (which needs one) and a subject to ``"subject"``.
    """
    task = check_task(task)
    parsed = None
    if task == "aspect":
        if ratio is None:
            raise ConfigError("task='aspect' needs ratio=, e.g. ratio='16:9'")
        parsed = parse_ratio(ratio)
    elif ratio is not None:
        raise ConfigError(f"ratio= applies to task='aspect', not task={task!r}")
    if subject is not None and task != "subject":
        raise ConfigError(f"subject= applies to task='subject', not task={task!r}")
    return task, parsed


@dataclass(frozen=True)
class Ratio:
    """A requested aspect ratio: width over height, and how the user wrote it."""

    value: float
    text: str


#: The most extreme ratio taken, as width over height (1000:1), and its inverse (1:1000).
#: Beyond them a crop is a strip a pixel thin even of a very large photo, or none at all.
MAX_RATIO = 1000


def parse_ratio(ratio: Any) -> Ratio:
    """Read ``"16:9"``, ``"16/9"``, ``"1.78"``, ``1.78`` or ``(16, 9)`` as a ratio.

    Raises :class:`ConfigError` for anything else, and for a ratio beyond 1:1000 or 1000:1
    (:data:`MAX_RATIO`).
    """
    if isinstance(ratio, Ratio):
        return ratio
    exact: Fraction | None = None
    try:  # exactly, so that no size of number overflows
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            exact = _exact(ratio)
        elif isinstance(ratio, (tuple, list)) and len(ratio) == 2:
            exact = _exact(ratio[0]) / _exact(ratio[1])
        elif isinstance(ratio, str):
            match = re.fullmatch(r"\s*([0-9.]+)\s*(?:[:/x]\s*([0-9.]+))?\s*", ratio)
            if match:
                exact = _exact(match.group(1)) / _exact(match.group(2) or "1")
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):  # Overflow: infinity
        exact = None
    if exact is None or exact <= 0:
        raise ConfigError(
            f"aspect ratio {shown(ratio)} is not valid: write it as W:H, e.g. '16:9'"
        )
    if not Fraction(1, MAX_RATIO) <= exact <= MAX_RATIO:
        raise ConfigError(
            f"aspect ratio {shown(ratio)} is too extreme to crop: use one from 1:1000 to "
            "1000:1 (width:height)"
        )
    value = float(exact)
    return Ratio(value, _ratio_text(ratio, value))


def _ratio_text(ratio: Any, value: float) -> str:
    """The ratio as the user wrote it, unless that is very long (then as a number)."""
    try:
        if isinstance(ratio, str):
            text = ratio.strip()
        elif isinstance(ratio, (tuple, list)):
            text = f"{ratio[0]}:{ratio[1]}"
        else:
            text = f"{value:g}"
    except ValueError:  # an integer past Python's digit limit
        text = ""
    return text if 0 < len(text) <= 40 else f"{value:g}"


def _exact(number: Any) -> Fraction:
    """A number (or its text) as an exact fraction.

    Raises ``ValueError`` for NaN or text that is no number, ``OverflowError`` for infinity.
    """
    if isinstance(number, (str, Rational)):
        return Fraction(number)
    return Fraction(float(number))


@dataclass(frozen=True)
class Subject:
    """Where the subject is: its centre (normalized), its box when known, how it was given."""

    point: tuple[float, float]
    box: Box | None = None
    text: str | None = None
    source: str = "point"  # point, box, mask, text, auto (asked the VLM), saliency, fallback


def subject_from_spec(spec: Any, size: Size) -> Subject | str | None:
    """A subject given as a point, box, mask or text.

    Returns a :class:`Subject` when its place is known, the text phrase when the
    VLM must find it, or ``None`` when the VLM must find the main subject.
    """
    if spec is None or isinstance(spec, Subject):
        return spec
    if isinstance(spec, Box):
        return Subject(spec.center, spec, source="box")
    if isinstance(spec, str):
        numbers = _numbers(spec)
        if numbers is not None:
            return subject_from_spec(tuple(numbers), size)
        if Path(spec).suffix.lower() in MASK_SUFFIXES:
            return _from_mask_file(spec, size)
        return spec.strip() or None
    if isinstance(spec, Image.Image):
        return _from_mask(np.asarray(spec.convert("L")), size, "mask image")
    if isinstance(spec, np.ndarray) and spec.ndim == 2:
        return _from_mask(spec, size, "mask array")
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 4):
        try:
            values = [float(v) for v in spec]
        except (TypeError, ValueError, OverflowError):
            values = [math.nan]
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
            raise ConfigError(
                f"subject {shown(tuple(spec))} must be numbers from 0 to 1, in normalized "
                "coordinates: a point (x, y) or a box (x0, y0, x1, y1)"
            )
        if len(values) == 2:
            return Subject((values[0], values[1]), source="point")
        box = Box(*values)
        return Subject(box.center, box, source="box")
    raise ConfigError(
        f"subject {shown(spec)} not understood: give a point (x, y), a box (x0, y0, x1, y1), "
        "a mask, or a text phrase"
    )


#: File suffixes that make a ``subject`` string a mask file rather than a phrase.
MASK_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def _from_mask_file(path: str, size: Size) -> Subject:
    """The subject of a mask file, or a one-line :class:`ConfigError` naming the file."""
    from cropper.core.images import (
        NotRegularFileError,
        file_problem,
        open_regular_file,
        shorten_path,
    )

    shown = shorten_path(path)
    hint = "give a mask image (white subject on black) of the photo's size"
    try:
        stream = open_regular_file(path)
    except (OSError, ValueError) as exc:
        problem = file_problem(exc)
        if problem == "no such file":
            problem = "does not exist"
        elif isinstance(exc, NotRegularFileError) or getattr(exc, "errno", 0) == errno.EISDIR:
            problem = f"{problem}, not a mask image"
        raise ConfigError(f"subject mask {shown}: {problem}; {hint}") from None
    try:
        with stream, Image.open(stream) as mask:
            _check_mask_size(mask.size, size, shown)  # from the header: nothing large decoded
            pixels = np.asarray(mask.convert("L"))
    except ConfigError:
        raise
    except UnidentifiedImageError:
        raise ConfigError(f"subject mask {shown}: not an image Pillow can read; {hint}") from None
    except Exception as exc:  # decoders fail in many ways on bad files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"subject mask {shown}: cannot decode it ({why}); {hint}") from None
    return _from_mask(pixels, size, shown)


def _check_mask_size(mask_size: Size, size: Size, name: str) -> None:
    if tuple(mask_size) != tuple(size):
        raise ConfigError(
            f"{name}: the subject mask is {mask_size[0]}x{mask_size[1]} but the photo is "
            f"{size[0]}x{size[1]}; give a mask of the photo's size"
        )


def _numbers(text: str) -> list[float] | None:
    parts = [p for p in re.split(r"[,\s]+", text.strip().strip("()[]")) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    return values if len(values) in (2, 4) else None


def _from_mask(mask: np.ndarray, size: Size, name: str) -> Subject:
    _check_mask_size((mask.shape[1], mask.shape[0]), size, name)
    ys, xs = np.nonzero(mask > (mask.max() / 2 if mask.dtype != bool else 0))
    if len(xs) == 0:
        raise ConfigError(f"{name}: the subject mask is empty")
    w, h = size
    box = Box.from_pixels((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), size)
    return Subject((float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h), box, source="mask")
