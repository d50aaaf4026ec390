"""What every returned crop must satisfy, and the repair of proposals that do not.

A request's crops must:

- have sides of at least ``min_side`` of the photo's sides (default
  :data:`DEFAULT_MIN_SIDE`), so that no sliver is ever returned;
- for subject crops, hold the subject: its point, and its box when it has one;
- for aspect crops, have exactly the requested pixel ratio (within 1 px);
- hold every ``keep`` region;
- with faces protected, hold each face wholly or leave it wholly out, and hold the largest
  face whenever a crop of the request can.

A VLM proposes what it likes. :meth:`Constraints.repair` turns a proposal into the
nearest crop that satisfies the request (grown around its centre, widened to the
subject and the keep regions, snapped to the ratio, then moved or grown until no face is
cut) and says what it changed; :meth:`Constraints.apply`
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

from cropper.core.boxes import Box, PixelBox, Size, dedupe, fit_aspect, fit_box, iou_matrix
from cropper.core.errors import ConfigError
from cropper.core.tasks import Subject

#: The smallest side a crop may have, as a share of the photo's side.
DEFAULT_MIN_SIDE = 0.1
#: A detected face's box grown by this share of its size on every side: a detector frames
#: brows to chin, and a crop through the forehead or the hair cuts the head all the same.
FACE_MARGIN = 0.25


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
    keep: tuple[Box, ...] = ()  # regions every crop holds
    faces: tuple[Box, ...] = ()  # detected faces, largest first: none may be cut

    def __post_init__(self) -> None:
        check_min_side(self.min_side)

    def check_keep(self) -> None:
        """Refuse, in one line, keep regions that no crop of the request can hold."""
        held = self._held_pixels()
        if held is None or not self.keep:
            return
        if fit_box(held, self.size, ratio=self.ratio, hold=held, least=self._least()) is None:
            w, h = self.size
            what = f"a crop of ratio {self.ratio:g}" if self.ratio else "a crop"
            raise ConfigError(
                f"the keep regions (with the subject) span {held[2] - held[0]:g}x"
                f"{held[3] - held[1]:g} px of this {w}x{h} photo, which {what} cannot hold: "
                "give smaller keep regions"
            )

    # -- regions in pixels ---------------------------------------------------
    @functools.cached_property
    def _face_pixels(self) -> tuple[PixelBox, ...]:
        """Each face as a crop must treat it: its box grown by :data:`FACE_MARGIN`."""
        w, h = self.size
        grown = []
        for face in self.faces:
            left, top, right, bottom = face.to_pixels(self.size)
            dx, dy = FACE_MARGIN * (right - left), FACE_MARGIN * (bottom - top)
            grown.append(
                (
                    max(0, math.floor(left - dx)),
                    max(0, math.floor(top - dy)),
                    min(w, math.ceil(right + dx)),
                    min(h, math.ceil(bottom + dy)),
                )
            )
        # Largest first: the largest face is the one a crop holds whenever it can.
        return tuple(sorted(grown, key=lambda f: -(f[2] - f[0]) * (f[3] - f[1])))

    def _held_pixels(self) -> PixelBox | None:
        """The span every crop must cover: the subject's and the keep regions' together."""
        spans = [self._subject_pixels()] + [k.to_pixels(self.size) for k in self.keep]
        spans = [s for s in spans if s is not None]
        if not spans:
            return None
        return (
            min(s[0] for s in spans),
            min(s[1] for s in spans),
            max(s[2] for s in spans),
            max(s[3] for s in spans),
        )

    def _least(self) -> tuple[int, int]:
        """The narrowest crop, as :meth:`check` takes it (a ratio's largest crop is valid)."""
        min_w, min_h = self.min_pixels
        if self.ratio is not None:
            largest = self._largest_of_ratio.to_pixels(self.size)
            min_w = min(min_w, largest[2] - largest[0])
            min_h = min(min_h, largest[3] - largest[1])
        return min_w, min_h

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
        if held is not None and not _holds((left, top, right, bottom), held):
            return "misses the subject"
        if any(not _holds((left, top, right, bottom), k.to_pixels(self.size)) for k in self.keep):
            return "misses a keep region"
        if any(_cuts((left, top, right, bottom), f) for f in self._face_pixels):
            return "cuts through a face"
        if self._face_pixels and not _holds((left, top, right, bottom), self._face_pixels[0]):
            if self._can_hold_largest_face:
                return "leaves out the largest face"
        return ""

    @functools.cached_property
    def _can_hold_largest_face(self) -> bool:
        """Whether any crop of the request holds the largest face with what it must hold."""
        face = self._face_pixels[0]
        held = _union(self._held_pixels(), face)
        return (
            fit_box(held, self.size, ratio=self.ratio, hold=held, least=self._least()) is not None
        )

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
        if held is not None and not _holds((left, top, right, bottom), held):
            left, top = min(left, held[0]), min(top, held[1])
            right, bottom = max(right, held[2]), max(bottom, held[3])
            changes.append("widened to hold the subject")
        if self.ratio is not None:
            proposed = Box.from_pixels((left, top, right, bottom), self.size)
            fitted = fit_aspect(proposed, self.ratio, self.size)
            repaired = self._grow_to_ratio(fitted)
            if repaired != fitted:
                changes.append(f"grown to min_side {self.min_side:g} at ratio {self.ratio:g}")
        else:
            min_w, min_h = self.min_pixels
            if right - left < min_w or bottom - top < min_h:
                before = f"{right - left}x{bottom - top} px"
                left, right = _grow_span(left, right, min_w, w_img)
                top, bottom = _grow_span(top, bottom, min_h, h_img)
                changes.append(f"grown from {before} to min_side {self.min_side:g}")
            repaired = Box.from_pixels((left, top, right, bottom), self.size)
        if self.keep or self.faces:
            repaired = self._hold_regions(repaired, changes)
        return Repaired(repaired, ", ".join(changes))

    def _hold_regions(self, box: Box, changes: list[str]) -> Box:
        """``box`` moved or grown to hold the keep regions and to cut no face.

        The crop must hold the subject, the keep regions and (when any crop of the request
        can) the largest face. Each face it still cuts, the largest first, is then either
        taken in whole or left out whole (the crop kept to one side of it), whichever keeps
        the crop nearer the proposal by IoU. A face taken in stays in and a face left out
        stays out, so this ends after a step a face.
        """
        proposal = box.to_pixels(self.size)
        least = self._least()
        held = self._held_pixels()
        faces = list(self._face_pixels)
        if faces and self._can_hold_largest_face:
            held = _union(held, faces[0])
        window: PixelBox = (0, 0, *self.size)
        current = fit_box(proposal, self.size, ratio=self.ratio, hold=held, least=least)
        if current is None:  # the keep regions fit no crop: check_keep refuses that first
            return box
        if self.keep and any(not _holds(proposal, k.to_pixels(self.size)) for k in self.keep):
            changes.append("widened to hold the keep regions")
        if faces and held is not None and _holds(held, faces[0]) and not _holds(proposal, faces[0]):
            changes.append("moved to hold the largest face")
        taken = left_out = 0
        while True:
            cut = [f for f in faces if _cuts(current, f)]
            if not cut:
                break
            face = max(cut, key=lambda f: (f[2] - f[0]) * (f[3] - f[1]))
            faces.remove(face)
            options = []
            with_face = _union(held, face)
            taking = fit_box(
                proposal, self.size, ratio=self.ratio, hold=with_face, within=window, least=least
            )
            if taking is not None:
                options.append((_iou(taking, proposal), taking, with_face, window, "in"))
            for side in _sides_without(face, held, window):
                leaving = fit_box(
                    proposal, self.size, ratio=self.ratio, hold=held, within=side, least=least
                )
                if leaving is not None:
                    options.append((_iou(leaving, proposal), leaving, held, side, "out"))
            if not options:
                changes.append("cuts a face that no crop of the request can hold or leave out")
                continue
            _, current, held, window, way = max(options, key=lambda o: o[0])
            if way == "in":
                taken += 1
            else:
                left_out += 1
        if taken:
            changes.append(f"widened to hold {taken} face{'s' * (taken > 1)} whole")
        if left_out:
            changes.append(f"moved to leave {left_out} face{'s' * (left_out > 1)} out whole")
        return Box.from_pixels(current, self.size)

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


def _holds(box: PixelBox, region: PixelBox) -> bool:
    return (
        box[0] <= region[0] and box[1] <= region[1] and box[2] >= region[2] and box[3] >= region[3]
    )


def _cuts(box: PixelBox, region: PixelBox) -> bool:
    """Whether ``box`` holds part of ``region`` but not all of it."""
    overlaps = min(box[2], region[2]) > max(box[0], region[0]) and min(box[3], region[3]) > max(
        box[1], region[1]
    )
    return overlaps and not _holds(box, region)


def _union(a: PixelBox | None, b: PixelBox) -> PixelBox:
    if a is None:
        return b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _iou(a: PixelBox, b: PixelBox) -> float:
    return float(iou_matrix(np.array([a], dtype=float), np.array([b], dtype=float))[0, 0])


def _sides_without(face: PixelBox, held: PixelBox | None, window: PixelBox) -> list[PixelBox]:
    """The parts of ``window`` on each side of ``face`` that still hold ``held``."""
    x0, y0, x1, y1 = window
    sides = [
        (x0, y0, min(x1, face[0]), y1),  # left of the face
        (max(x0, face[2]), y0, x1, y1),  # right of it
        (x0, y0, x1, min(y1, face[1])),  # above it
        (x0, max(y0, face[3]), x1, y1),  # below it
    ]
    return [s for s in sides if s[2] > s[0] and s[3] > s[1] and (held is None or _holds(s, held))]


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


def avoid_shares(boxes: Sequence[Box], avoid: Sequence[Box]) -> np.ndarray:
    """For each crop, the share of the ``avoid`` regions it holds, averaged over them.

    0 for a crop that leaves every region out, 1 for one that holds them all whole; a crop
    through a region counts the part it holds. The loop takes it from the crop's score.
    """
    if not avoid or not boxes:
        return np.zeros(len(boxes))
    a = np.array([b.as_array() for b in boxes])
    r = np.array([b.as_array() for b in avoid])
    lt = np.maximum(a[:, None, :2], r[None, :, :2])
    rb = np.minimum(a[:, None, 2:], r[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    areas = np.prod(r[:, 2:] - r[:, :2], axis=1)
    return (inter / areas[None, :]).mean(axis=1)
