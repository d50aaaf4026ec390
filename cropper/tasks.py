"""The three cropping tasks and their arguments: the requested ratio and the subject."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from cropper.boxes import Box, Size
from cropper.errors import ConfigError

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


def parse_ratio(ratio: Any) -> Ratio:
    """Read ``"16:9"``, ``"16/9"``, ``"1.78"``, ``1.78`` or ``(16, 9)`` as a ratio."""
    value: float | None = None
    if isinstance(ratio, Ratio):
        return ratio
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        value = float(ratio)
    elif isinstance(ratio, (tuple, list)) and len(ratio) == 2:
        try:
            value = float(ratio[0]) / float(ratio[1])
        except (TypeError, ValueError, ZeroDivisionError):
            value = None
    elif isinstance(ratio, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*(?:[:/x]\s*([0-9.]+))?\s*", ratio)
        if match:
            try:
                den = float(match.group(2)) if match.group(2) else 1.0
                value = float(match.group(1)) / den
            except (ValueError, ZeroDivisionError):
                value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"aspect ratio {ratio!r} is not valid: write it as W:H, e.g. '16:9'")
    text = (
        ratio.strip()
        if isinstance(ratio, str)
        else (f"{ratio[0]}:{ratio[1]}" if isinstance(ratio, (tuple, list)) else f"{value:g}")
    )
    return Ratio(value, text)


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
        if Path(spec).suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}:
            if not Path(spec).is_file():
                raise ConfigError(f"subject mask {spec} does not exist")
            with Image.open(spec) as mask:
                return _from_mask(np.asarray(mask.convert("L")), size, spec)
        return spec.strip() or None
    if isinstance(spec, Image.Image):
        return _from_mask(np.asarray(spec.convert("L")), size, "mask image")
    if isinstance(spec, np.ndarray) and spec.ndim == 2:
        return _from_mask(spec, size, "mask array")
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 4):
        values = [float(v) for v in spec]
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
            raise ConfigError(
                f"subject {tuple(spec)} must be in normalized coordinates from 0 to 1 "
                "(x, y) or (x0, y0, x1, y1)"
            )
        if len(values) == 2:
            return Subject((values[0], values[1]), source="point")
        box = Box(*values)
        return Subject(box.center, box, source="box")
    raise ConfigError(
        f"subject {spec!r} not understood: give a point (x, y), a box (x0, y0, x1, y1), "
        "a mask, or a text phrase"
    )


def _numbers(text: str) -> list[float] | None:
    parts = [p for p in re.split(r"[,\s]+", text.strip().strip("()[]")) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    return values if len(values) in (2, 4) else None


def _from_mask(mask: np.ndarray, size: Size, name: str) -> Subject:
    if mask.shape[::-1] != tuple(size):
        raise ConfigError(
            f"{name}: the subject mask is {mask.shape[1]}x{mask.shape[0]} but the photo is "
            f"{size[0]}x{size[1]}; give a mask of the photo's size"
        )
    ys, xs = np.nonzero(mask > (mask.max() / 2 if mask.dtype != bool else 0))
    if len(xs) == 0:
        raise ConfigError(f"{name}: the subject mask is empty")
    w, h = size
    box = Box.from_pixels((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), size)
    return Subject((float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h), box, source="mask")
