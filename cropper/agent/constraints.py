"""What every returned crop must satisfy, and the repair of proposals that do not.

A request's crops must:

- have sides of at least ``min_side`` of the photo's sides (default
  :data:`DEFAULT_MIN_SIDE`), so that no sliver is ever returned;
- for subject crops, hold the subject: its point, and its box when it has one;
- for aspect crops, have exactly the requested pixel ratio (within 1 px).

A VLM proposes what it likes. :meth:`Constraints.repair` turns a proposal into the
nearest crop that satisfies the request (grown around its centre, widened to the
subject, snapped to the ratio) and says what it changed; :meth:`Constraints.apply`
repairs a round's proposals and drops the repaired ones that repeat another. Baselines
filter their candidates with :meth:`Constraints.check`. Everything works in whole
pixels of the photo, as the returned crop is cut.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cropper.core.boxes import Box, Size, dedupe, fit_aspect
from cropper.core.errors import ConfigError
from cropper.core.tasks import Subject

#: The smallest side a crop may have, as a share of the photo's side.
DEFAULT_MIN_SIDE = 0.1


def check_min_side(value: float) -> float:
    """``value`` if it is a share between 0 and 1, else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(
            f"min_side must be a share of the photo's side between 0 and 1 (e.g. 0.1), "
            f"got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class Repaired:
    """A proposal made valid: the box, and what was changed (``""``: nothing)."""

    box: Box
    change: str = ""


@dataclass(frozen=True)
class Applied:
    """A round's proposals after repair: the valid boxes, each one's change, and drops."""

    boxes: tuple[Box, ...]
    changes: tuple[str, ...]  # per box, "" when it was valid as proposed
    dropped: tuple[str, ...]  # why each dropped proposal was dropped

    @property
    def notes(self) -> list[str]:
        """The repairs and drops, counted, in words."""
        notes = []
        repaired = Counter(c for c in self.changes if c)
        for change, n in repaired.items():
            notes.append(f"{n} proposal{'s' * (n > 1)} {change}")
        for why, n in Counter(self.dropped).items():
            notes.append(f"{n} proposal{'s' * (n > 1)} dropped: {why}")
        return notes


@dataclass(frozen=True)
class Constraints:
    """What a crop of a photo of ``size`` must satisfy for one request."""

    size: Size
    min_side: float = DEFAULT_MIN_SIDE
    subject: Subject | None = None
    ratio: float | None = None  # width over height, for aspect crops

    def __post_init__(self) -> None:
        check_min_side(self.min_side)

    # -- limits in pixels ----------------------------------------------------
    @property
    def min_pixels(self) -> tuple[int, int]:
        """The narrowest width and height a crop may have, in whole pixels (at least 1)."""
        w, h = self.size
        return (
            min(w, max(1, math.ceil(self.min_side * w - 1e-9))),
            min(h, max(1, math.ceil(self.min_side * h - 1e-9))),
        )

    @functools.cached_property
    def _largest_of_ratio(self) -> Box:
        """The photo's largest crop of the ratio (computed once: checks are many)."""
        assert self.ratio is not None
        return fit_aspect(Box.whole(), self.ratio, self.size)

    def _subject_pixels(self) -> tuple[int, int, int, int] | None:
        """The pixel span a crop must cover for the subject: its box, or around its point.

        A crop holds a point when the point lies within its edges (on one counts), as
        :meth:`cropper.core.boxes.Box.contains` says.
        """
        if self.subject is None:
            return None
        if self.subject.box is not None:
            return self.subject.box.to_pixels(self.size)
        w, h = self.size
        x, y = self.subject.point[0] * w, self.subject.point[1] * h
        return math.floor(x), math.floor(y), math.ceil(x), math.ceil(y)

    # -- checking ------------------------------------------------------------
    def check(self, box: Box) -> str:
        """Why ``box`` breaks the request, or ``""`` when it satisfies it."""
        left, top, right, bottom = box.to_pixels(self.size)
        min_w, min_h = self.min_pixels
        if self.ratio is not None:
            w, h = right - left, bottom - top
            if abs(w - self.ratio * h) > 1 and abs(h - w / self.ratio) > 1:
                return f"not of ratio {self.ratio:g}"
            # A ratio the photo cannot hold at the minimum size: its largest crop is valid.
            largest = self._largest_of_ratio.to_pixels(self.size)
            min_w = min(min_w, largest[2] - largest[0])
            min_h = min(min_h, largest[3] - largest[1])
        if right - left < min_w or bottom - top < min_h:
            return f"sides under min_side {self.min_side:g} of the photo's"
        held = self._subject_pixels()
        if held is not None and not (
            left <= held[0] and top <= held[1] and right >= held[2] and bottom >= held[3]
        ):
            return "misses the subject"
        return ""

    def valid(self, boxes: Sequence[Box]) -> list[Box]:
        """The boxes that satisfy the request, in order."""
        return [b for b in boxes if not self.check(b)]

    # -- repairing -----------------------------------------------------------
    def repair(self, box: Box) -> Repaired:
        """The nearest valid crop to ``box`` and what was changed to make it valid."""
        w_img, h_img = self.size
        left, top, right, bottom = box.to_pixels(self.size)
        changes = []
        held = self._subject_pixels()
        if held is not None and not (
            left <= held[0] and top <= held[1] and right >= held[2] and bottom >= held[3]
        ):
            left, top = min(left, held[0]), min(top, held[1])
            right, bottom = max(right, held[2]), max(bottom, held[3])
            changes.append("widened to hold the subject")
        if self.ratio is not None:
            proposed = Box.from_pixels((left, top, right, bottom), self.size)
            fitted = fit_aspect(proposed, self.ratio, self.size)
            grown = self._grow_to_ratio(fitted)
            if grown != fitted:
                changes.append(f"grown to min_side {self.min_side:g} at ratio {self.ratio:g}")
            return Repaired(grown, ", ".join(changes))
        min_w, min_h = self.min_pixels
        if right - left < min_w or bottom - top < min_h:
            before = f"{right - left}x{bottom - top} px"
            left, right = _grow_span(left, right, min_w, w_img)
            top, bottom = _grow_span(top, bottom, min_h, h_img)
            changes.append(f"grown from {before} to min_side {self.min_side:g}")
        repaired = Box.from_pixels((left, top, right, bottom), self.size)
        return Repaired(repaired, ", ".join(changes))

    def _grow_to_ratio(self, box: Box) -> Box:
        """``box`` (of the ratio) grown about its centre until both sides reach the minimum.

        Where the photo cannot hold a crop of the ratio that large, its largest crop of the
        ratio is the nearest valid one.
        """
        assert self.ratio is not None
        left, top, right, bottom = box.to_pixels(self.size)
        min_w, min_h = self.min_pixels
        w, h = right - left, bottom - top
        if w >= min_w and h >= min_h:
            return box
        need_h = max(min_h, math.ceil(min_w / self.ratio - 1e-9), h)
        need_w = max(min_w, math.ceil(self.ratio * need_h - 1e-9))  # within 1 px of the ratio
        if need_w > self.size[0] or need_h > self.size[1]:
            return self._largest_of_ratio
        x = min(max(round((left + right - need_w) / 2), 0), self.size[0] - need_w)
        y = min(max(round((top + bottom - need_h) / 2), 0), self.size[1] - need_h)
        return Box.from_pixels((x, y, x + need_w, y + need_h), self.size)

    def apply(self, boxes: Sequence[Box]) -> Applied:
        """Repair every proposal, then drop those that repeat an earlier one once repaired."""
        repaired = [self.repair(b) for b in boxes]
        if not repaired:
            return Applied((), (), ())
        keep = dedupe(np.array([r.box.as_array() for r in repaired]))
        kept_boxes: list[Box] = []
        changes: list[str] = []
        dropped: list[str] = []
        rows = iter(range(len(repaired)))
        for target in keep:
            for i in rows:
                if np.array_equal(repaired[i].box.as_array(), target):
                    kept_boxes.append(repaired[i].box)
                    changes.append(repaired[i].change)
                    break
                dropped.append(
                    "repeated another crop once repaired"
                    if repaired[i].change
                    else "repeated another crop"
                )
        dropped += [
            "repeated another crop once repaired" if repaired[i].change else "repeated another crop"
            for i in rows
        ]
        return Applied(tuple(kept_boxes), tuple(changes), tuple(dropped))


def _grow_span(lo: int, hi: int, least: int, limit: int) -> tuple[int, int]:
    """``[lo, hi)`` grown about its centre to ``least`` pixels, moved inside ``[0, limit)``."""
    if hi - lo >= least:
        return lo, hi
    extra = least - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = max(0, lo - (hi - limit)), limit
    return lo, hi
