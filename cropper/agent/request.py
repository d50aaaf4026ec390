"""What a crop call asks for, checked once: the task and its ratios, regions, faces, size.

``Cropper.crop(img, task, subject=, ratio=, keep=, avoid=, protect=, size=)`` becomes one
:class:`CropRequest` before any work, so a bad argument fails in one line naming it, and a
batch fails before its first photo.

- ``ratio`` is one ratio (``"16:9"``, ``1.78``, ``(16, 9)``) or a list of them
  (``["1:1", "4:5"]``): a list gives one crop per ratio, keyed by the ratio as written.
  A list of exactly two numbers is one ratio, ``(W, H)``.
- ``keep`` and ``avoid`` are lists of normalized boxes ``(x0, y0, x1, y1)``.
- ``protect`` is ``"faces"`` (or a list holding it).
- ``size`` is the saved crop's long side (``1080``) or its exact ``(w, h)`` (``"1080x1350"``,
  ``(1080, 1350)``); an exact size implies its ratio.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cropper.core.boxes import Box, Size
from cropper.core.errors import ConfigError, shown
from cropper.core.tasks import Ratio, check_request

#: What ``protect=`` may name.
PROTECT = ("faces",)
#: The largest output side taken: 64k pixels, past every image format's own limit but JPEG's.
MAX_OUTPUT_SIDE = 65_500


@dataclass(frozen=True)
class OutputSize:
    """The saved crop's size: a long side, or an exact width and height."""

    long_side: int | None = None
    exact: Size | None = None

    def for_crop(self, crop: Size) -> Size:
        """The output ``(w, h)`` of a crop of ``crop`` pixels."""
        if self.exact is not None:
            return self.exact
        assert self.long_side is not None
        w, h = crop
        if w >= h:
            return self.long_side, max(1, round(self.long_side * h / w))
        return max(1, round(self.long_side * w / h)), self.long_side

    @property
    def ratio(self) -> Ratio | None:
        """The ratio an exact size implies."""
        if self.exact is None:
            return None
        w, h = self.exact
        return Ratio(w / h, f"{w}:{h}")

    def __str__(self) -> str:
        return f"{self.exact[0]}x{self.exact[1]}" if self.exact else str(self.long_side)


def parse_size(spec: Any) -> OutputSize | None:
    """Read ``1080``, ``"1080"``, ``"1080x1350"`` or ``(1080, 1350)``; ``None`` stays None."""
    if spec is None:
        return None
    if isinstance(spec, OutputSize):
        return spec
    values: list[Any] | None = None
    if isinstance(spec, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[x×X*]\s*(\d+))?\s*", spec)
        values = [g for g in match.groups() if g is not None] if match else None
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        values = [spec]
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        values = list(spec)
    sides = [_side(v) for v in values] if values else []
    if not sides or None in sides:
        raise ConfigError(
            f"size {shown(spec)} is not valid: give the long side in pixels (1080) or the "
            "width and height (1080x1350), each from 1 to 65500"
        )
    if len(sides) == 1:
        return OutputSize(long_side=sides[0])
    return OutputSize(exact=(sides[0], sides[1]))  # type: ignore[arg-type]


def _side(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number != int(number) or not 1 <= number <= MAX_OUTPUT_SIDE:
        return None
    return int(number)


def parse_regions(spec: Any, name: str) -> tuple[Box, ...]:
    """``keep=`` or ``avoid=``: a list of normalized boxes, or one box; ``None``: none."""
    if spec is None:
        return ()
    if isinstance(spec, Box):
        return (spec,)
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, Sequence):
        raise ConfigError(f"{name}= takes a list of boxes (x0, y0, x1, y1), got {shown(spec)}")
    if len(spec) == 4 and all(isinstance(v, (int, float)) for v in spec):
        spec = [spec]  # one box, not wrapped in a list
    return tuple(_region(item, name) for item in spec)


def _region(item: Any, name: str) -> Box:
    if isinstance(item, Box):
        return item
    values: list[float] = []
    try:
        parts = re.split(r"[,\s]+", item.strip().strip("()[]")) if isinstance(item, str) else item
        values = [float(v) for v in parts]
    except (TypeError, ValueError, OverflowError):
        values = []
    ok = (
        len(values) == 4
        and all(math.isfinite(v) and 0 <= v <= 1 for v in values)
        and values[0] < values[2]
        and values[1] < values[3]
    )
    if not ok:
        raise ConfigError(
            f"{name} box {shown(item)} is not valid: give x0,y0,x1,y1 from 0 to 1 (normalized, "
            "x0 < x1 and y0 < y1), e.g. 0.1,0.2,0.4,0.6"
        )
    return Box(*values)


def parse_protect(spec: Any) -> tuple[str, ...]:
    """``protect=``: ``"faces"`` or a list of such names; ``None``: nothing protected."""
    if spec is None:
        return ()
    names = [spec] if isinstance(spec, str) else spec
    try:
        names = [str(n).strip() for n in names]
    except TypeError:
        names = [shown(spec)]
    unknown = [n for n in names if n not in PROTECT]
    if unknown:
        raise ConfigError(
            f"protect={shown(spec)} is not known: use one of {', '.join(PROTECT)} (e.g. "
            "protect='faces')"
        )
    return tuple(dict.fromkeys(names))


def several_ratios(ratio: Any) -> bool:
    """Whether ``ratio`` lists ratios (one crop each) rather than giving one.

    A list or tuple of two numbers is one ratio ``(W, H)``; any other list or tuple lists.
    """
    if not isinstance(ratio, (list, tuple)):
        return False
    two_numbers = len(ratio) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in ratio
    )
    return not two_numbers


@dataclass(frozen=True)
class CropRequest:
    """One crop call's request, checked."""

    task: str
    subject: Any = None  # the subject as given (see cropper.core.tasks.subject_from_spec)
    ratios: tuple[Ratio, ...] = ()  # aspect: one or more; else none
    several: bool = False  # ratio= listed ratios: the result holds one crop per ratio
    keep: tuple[Box, ...] = ()  # regions every crop holds
    avoid: tuple[Box, ...] = ()  # regions crops are penalised for holding
    protect: tuple[str, ...] = ()  # "faces": no crop cuts through a face
    size: OutputSize | None = None  # the saved crop's size

    @property
    def ratio(self) -> Ratio | None:
        """The one ratio of a single-ratio aspect request."""
        return self.ratios[0] if len(self.ratios) == 1 else None


def make_request(
    task: str = "free",
    *,
    subject: Any = None,
    ratio: Any = None,
    keep: Any = None,
    avoid: Any = None,
    protect: Any = None,
    size: Any = None,
) -> CropRequest:
    """Check a crop call's arguments together; a one-line :class:`ConfigError` when wrong."""
    output = parse_size(size)
    implied = output.ratio if output is not None else None
    if implied is not None and ratio is None and task == "free" and subject is None:
        task, ratio = "aspect", implied  # an exact size fixes the ratio
    several = several_ratios(ratio)
    listed = list(ratio) if several else [ratio]
    if several and not listed:
        raise ConfigError("ratio= lists no ratio: give one, e.g. ratio=['1:1', '4:5']")
    ratios: list[Ratio] = []
    for one in listed:
        task, parsed = check_request(task, subject=subject, ratio=one)
        if parsed is not None:
            ratios.append(parsed)
    texts = [r.text for r in ratios]
    if len(set(texts)) < len(texts):
        twice = next(t for t in texts if texts.count(t) > 1)
        raise ConfigError(f"ratio {twice!r} is listed twice: list each ratio once")
    if implied is not None:
        _check_size_ratio(output, ratios, task)  # type: ignore[arg-type]
    return CropRequest(
        task=task,
        subject=subject,
        ratios=tuple(ratios),
        several=several,
        keep=parse_regions(keep, "keep"),
        avoid=parse_regions(avoid, "avoid"),
        protect=parse_protect(protect),
        size=output,
    )


def _check_size_ratio(size: OutputSize, ratios: list[Ratio], task: str) -> None:
    """An exact size has a ratio: refuse a request for another (within a pixel)."""
    assert size.exact is not None
    w, h = size.exact
    if not ratios:
        raise ConfigError(
            f"size {size} fixes the ratio {w}:{h}, which task {task!r} cannot honour: give the "
            "long side alone (e.g. 1080)"
        )
    for ratio in ratios:
        if abs(w - ratio.value * h) > 1 and abs(h - w / ratio.value) > 1:
            raise ConfigError(
                f"size {size} is not of ratio {ratio.text}: give a size of that ratio, or the "
                "long side alone (e.g. 1080)"
            )
