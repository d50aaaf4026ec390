"""Exemplars: a photo with its good crops, and the JSONL in which users give their own.

The JSONL has one object a line, paths relative to the JSONL's folder or absolute,
boxes in pixels of the photo as displayed (EXIF orientation applied)::

    {"image": "photos/a.jpg", "crops": [[10, 20, 400, 300]], "scores": [4.2], "subject": [200, 150]}

``scores`` (one per crop) and ``subject`` (a pixel point ``[x, y]`` or box
``[l, t, r, b]``) are optional.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from cropper.core.boxes import Box, Size
from cropper.core.errors import ConfigError, ExemplarIndexError, shown

log = logging.getLogger(__name__)

Point = tuple[float, float]

#: EXIF orientations that turn the photo a quarter (width and height swap).
_QUARTER_TURNS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
#: How many problems a report names before "and N more".
_NAMED = 5
#: What reading a photo's header may raise when the file is not a usable photo.
PHOTO_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class Exemplar:
    """A photo and its ground-truth crops.

    ``size`` is ``(w, h)`` of the EXIF-corrected photo; ``scores`` (e.g. MOS) and
    ``subjects`` (the normalized subject centre, or ``None``) have one entry per crop.
    """

    image: str
    size: Size
    crops: tuple[Box, ...]
    scores: tuple[float, ...] | None = None
    subjects: tuple[Point | None, ...] | None = None

    def __post_init__(self) -> None:
        # Lists become tuples so exemplars stay hashable and immutable.
        set_ = object.__setattr__
        set_(self, "image", os.fspath(self.image))
        w, h = (int(v) for v in self.size)
        if w < 1 or h < 1:
            raise ConfigError(
                f"exemplar {self.image}: size must be positive (w, h), got {self.size}"
            )
        set_(self, "size", (w, h))
        set_(self, "crops", tuple(self.crops))
        if not self.crops or not all(isinstance(c, Box) for c in self.crops):
            raise ConfigError(f"exemplar {self.image}: crops must be one or more Box")
        n = len(self.crops)
        if self.scores is not None:
            scores = tuple(float(s) for s in self.scores)
            if len(scores) != n or not all(math.isfinite(s) for s in scores):
                raise ConfigError(
                    f"exemplar {self.image}: {len(scores)} scores for {n} crops; "
                    "give one finite score per crop"
                )
            set_(self, "scores", scores)
        if self.subjects is not None:
            subjects = tuple(_point(p) for p in self.subjects)
            if len(subjects) != n:
                raise ConfigError(
                    f"exemplar {self.image}: {len(subjects)} subjects for {n} crops; "
                    "give one per crop (or null)"
                )
            set_(self, "subjects", subjects)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; boxes as normalized ``[x0, y0, x1, y1]``."""
        out: dict[str, Any] = {
            "image": self.image,
            "size": list(self.size),
            "crops": [[c.x0, c.y0, c.x1, c.y1] for c in self.crops],
        }
        if self.scores is not None:
            out["scores"] = list(self.scores)
        if self.subjects is not None:
            out["subjects"] = [list(p) if p is not None else None for p in self.subjects]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Exemplar:
        """The inverse of :meth:`to_json`; ConfigError, KeyError or TypeError if malformed."""
        if not isinstance(obj, dict):
            raise ConfigError(f"an exemplar must be a JSON object, got {type(obj).__name__}")
        subjects = obj.get("subjects")
        scores = obj.get("scores")
        return cls(
            image=str(obj["image"]),
            size=tuple(obj["size"]),
            crops=tuple(Box(*(float(v) for v in c)) for c in obj["crops"]),
            scores=tuple(scores) if scores is not None else None,
            subjects=tuple(subjects) if subjects is not None else None,
        )


def _point(value: Any) -> Point | None:
    if value is None:
        return None
    x, y = (float(v) for v in value)
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise ConfigError(f"subject centre must be normalized to [0, 1], got {(x, y)}")
    return x, y


# -- the user's JSONL ------------------------------------------------------------


def photo_size(path: str | os.PathLike) -> Size:
    """``(w, h)`` of a photo as displayed, read from its header (no full decode)."""
    with Image.open(path) as image:
        w, h = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    return (h, w) if orientation in _QUARTER_TURNS else (w, h)


class Exemplars(list):
    """Exemplars as a loader read them, with how many entries it skipped (``skipped``)."""

    def __init__(self, items: Iterable[Exemplar] = (), skipped: int = 0):
        super().__init__(items)
        self.skipped = skipped


def read_jsonl(path: str | os.PathLike) -> Exemplars:
    """Read the user's own crops; see the module docstring for the format.

    Lines that cannot be used (bad JSON, bad boxes, missing or unreadable photos)
    are skipped and reported in one warning; if none is usable, raises
    :class:`ExemplarIndexError` with the same report.
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExemplarIndexError(f"{source}: cannot read the exemplar JSONL ({exc})") from None
    exemplars: list[Exemplar] = []
    problems: list[str] = []
    total = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        total += 1
        try:
            exemplars.append(_parse_line(line, source.parent))
        except RecordError as exc:
            problems.append(f"line {number}{exc.where}: {exc}")
    if problems:
        report = f"{source}: skipped {len(problems)} of {total} lines: {first_few(problems)}"
        if not exemplars:
            raise ExemplarIndexError(f"{report}; no usable exemplar: fix the lines and retry")
        log.warning("%s", report)
    elif not exemplars:
        raise ExemplarIndexError(f"{source}: no exemplars (the file is empty)")
    return Exemplars(exemplars, skipped=len(problems))


def first_few(problems: list[str], named: int = _NAMED) -> str:
    """The first ``named`` problems, then how many more: one line for many failures."""
    more = f"; and {len(problems) - named} more" if len(problems) > named else ""
    return "; ".join(problems[:named]) + more


class RecordError(ValueError):
    """Why one record (a JSONL line, a sidecar) cannot be used; ``where`` names its photo."""

    def __init__(self, message: str, image: str | None = None):
        super().__init__(message)
        self.where = f" ({image})" if image else ""


def _parse_line(line: str, folder: Path) -> Exemplar:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise RecordError(f"not JSON ({exc})") from None
    except RecursionError:
        raise RecordError("JSON nested too deeply") from None
    return parse_record(obj, folder)


def parse_record(obj: Any, folder: Path) -> Exemplar:
    """One record in the JSONL's object form, paths relative to ``folder``; else RecordError."""
    if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
        raise RecordError('not an object with an "image" path')
    name = obj["image"]
    photo = Path(name).expanduser()
    photo = photo if photo.is_absolute() else folder / photo
    if not photo.is_file():
        raise RecordError("no such photo", name)
    try:
        size = photo_size(photo)
    except PHOTO_ERRORS as exc:
        raise RecordError(f"unreadable photo ({exc})", name) from None
    try:
        crops = _pixel_boxes(obj.get("crops"), size)
        subject = _subject(obj.get("subject"), size)
        scores = obj.get("scores")
        if scores is not None and not isinstance(scores, list):
            raise ConfigError('"scores" must be a list, one number per crop')
        return Exemplar(
            image=str(photo.resolve()),
            size=size,
            crops=crops,
            scores=tuple(scores) if scores is not None else None,
            subjects=(subject,) * len(crops) if subject is not None else None,
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise RecordError(str(exc), name) from None
    except OverflowError:  # an integer too large for a float (400 digits)
        raise RecordError("a number too large", name) from None
    except RecursionError:  # a value nested too deeply to show or check
        raise RecordError("a value nested too deeply", name) from None


def _pixel_boxes(values: Any, size: Size) -> tuple[Box, ...]:
    if not isinstance(values, list) or not values:
        raise ConfigError('"crops" must be a non-empty list of [left, top, right, bottom] pixels')
    boxes = []
    for value in values:
        if not _numbers(value, 4):
            raise ConfigError(f"crop {shown(value)} is not [left, top, right, bottom] in pixels")
        try:
            boxes.append(Box.from_pixels(value, size))
        except ConfigError:
            raise ConfigError(
                f"crop {value} does not fit the {size[0]}x{size[1]} photo "
                "(pixels of the photo as displayed, left < right, top < bottom)"
            ) from None
    return tuple(boxes)


def _subject(value: Any, size: Size) -> Point | None:
    """A pixel point ``[x, y]`` or box ``[l, t, r, b]`` as a normalized centre."""
    if value is None:
        return None
    w, h = size
    if _numbers(value, 2):
        x, y = value
    elif _numbers(value, 4):
        x, y = (value[0] + value[2]) / 2, (value[1] + value[3]) / 2
    else:
        raise ConfigError(f"subject {shown(value)} is neither a pixel point [x, y] nor a box")
    if not (0 <= x <= w and 0 <= y <= h):
        raise ConfigError(f"subject {value} lies outside the {w}x{h} photo")
    return x / w, y / h


def _numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == count
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )
