"""A run's predictions (JSONL), measured against a dataset's ground truth.

Two kinds of lines, one object a line:

- scores: ``{"image": name, "scores": [...]}``, one predicted score per annotated crop,
  in annotation order (GAICD: per rated crop; lines with MOS -2 are no crops);
- boxes: ``{"image": name, "box": [left, top, right, bottom]}`` in pixels of the
  original photo, with ``"size": [w, h]`` when the photo is not at hand (the output
  of ``cropper crop --json`` is such a file).

A line that cannot be used (not JSON, an unknown photo, a wrong number of scores, a
box that is not a box) is skipped with its reason (``file:line: why``) and the rest
are measured; a photo predicted twice is measured by its last line. When no photo
can be measured at all, :class:`~cropper.core.errors.ConfigError` says why.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cropper.core.boxes import PixelBox, Size
from cropper.core.errors import ConfigError, shown
from cropper.data import metrics
from cropper.evaluation.truth import GroundTruth, TruthSet

if TYPE_CHECKING:
    from cropper.data.datasets import PhotoFinder

#: How many problems (and photos without a prediction) a result names.
NAMED = 10
#: The counts every result has besides its metrics.
COUNT_KEYS = ("photos", "missing", "skipped", "duplicates")


@dataclass(frozen=True)
class _Line:
    """A line that names a known photo: where it is, and its object."""

    where: str  # "file:line", for reports
    truth: GroundTruth
    obj: dict[str, Any]


@dataclass
class _Problems:
    """Lines not measured, and why; reports name the first :data:`NAMED`."""

    skipped: int = 0
    duplicates: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons.append(reason)

    def duplicate(self, reason: str) -> None:
        self.duplicates += 1
        self.reasons.append(reason)


class _Unusable(ValueError):
    """Why one photo's prediction cannot be measured."""


def evaluate_scores(truths: TruthSet, predictions_path: str | os.PathLike) -> dict[str, Any]:
    """Acc, wAcc, SRCC and PCC of predicted crop scores (:func:`cropper.data.metrics.score_keys`).

    Returns the metrics, then ``photos`` (measured), ``missing`` (photos of the
    split without a prediction), ``skipped`` and ``duplicates`` (lines), then
    ``reasons`` (the first problems, one line each) and ``missing_names``.
    """
    if not truths.ranked:
        raise ConfigError(
            f"{truths.label}: its crops carry no ratings to rank (FCDB has one crop a photo, "
            "FLMS unrated expert crops; SACD marks its best crop only): measure boxes with "
            "eval boxes instead"
        )

    def measure(line: _Line) -> dict[str, float]:
        truth, scores = line.truth, line.obj.get("scores")
        if truth.scores is None:
            raise _Unusable("the dataset gives this photo's crops no scores")
        if not isinstance(scores, list):
            raise _Unusable('no "scores" list (one predicted score per annotated crop)')
        if len(scores) != len(truth.crops):
            raise _Unusable(
                f"{len(scores)} scores for its {len(truth.crops)} annotated crops; "
                "give one per crop, in annotation order"
            )
        for value in scores:
            if not _finite_number(value):
                raise _Unusable(f"score {shown(value)} is not a finite number")
        try:
            return metrics.photo_score_metrics(truth.scores, scores)
        except ValueError as exc:
            raise _Unusable(str(exc)) from None

    rows, problems, missing = _measure_each(truths, predictions_path, measure)
    return _result(metrics.mean_score_metrics(rows), len(rows), problems, missing)


def evaluate_boxes(
    truths: TruthSet,
    predictions_path: str | os.PathLike,
    images: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """IoU and BDE of predicted boxes against the best annotated crops, in original pixels.

    A photo's size comes from the photo (looked for in ``images`` first, then where
    the dataset keeps it), else from the line's ``"size"``. A box past the photo's
    edge is clipped to it. Returns ``iou`` and ``bde``, then the counts and lists of
    :func:`evaluate_scores`.
    """
    finder = None
    if images is not None:
        from cropper.data.datasets import PhotoFinder

        finder = PhotoFinder(Path(images).expanduser())

    def measure(line: _Line) -> dict[str, float]:
        size = _size(truths, line, finder)
        box = _clipped(line.obj.get("box"), size)
        try:
            gts = line.truth.crops_at(size, best=True)
        except ValueError as exc:
            raise _Unusable(f"its annotated {exc}: is the photo's size right?") from None
        return metrics.box_metrics(box, gts, size)

    rows, problems, missing = _measure_each(truths, predictions_path, measure)
    return _result(metrics.mean_box_metrics(rows), len(rows), problems, missing)


# -- reading and matching lines ------------------------------------------------------------


def _measure_each(
    truths: TruthSet,
    path: str | os.PathLike,
    measure: Callable[[_Line], dict[str, float]],
) -> tuple[list[dict[str, float]], _Problems, list[str]]:
    """Each photo's metrics by its last line; the problems; the photos with no line."""
    problems = _Problems()
    lines = _read_lines(truths, Path(path).expanduser(), problems)
    rows = []
    for line in lines.values():
        try:
            rows.append(measure(line))
        except _Unusable as exc:
            problems.skip(f"{line.where}: {line.truth.name}: {exc}")
    if not rows:
        why = "; ".join(problems.reasons[:3]) or "the file has no predictions"
        raise ConfigError(
            f"{path}: no photo of {truths.label} could be measured "
            f"({problems.skipped} lines skipped): {why}"
        )
    missing = [truth.name for truth in truths if truth not in lines]
    return rows, problems, missing


def _read_lines(truths: TruthSet, path: Path, problems: _Problems) -> dict[GroundTruth, _Line]:
    """The lines that name a known photo, the last one for each, by the photo's truth."""
    try:
        raw_lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such predictions file: give the JSONL your run wrote"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the predictions ({exc.strerror or exc})") from None
    found: dict[GroundTruth, _Line] = {}
    for number, raw in enumerate(raw_lines, start=1):
        where = f"{path.name}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.skip(f"{where}: not UTF-8 text")
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            problems.skip(f"{where}: not JSON ({exc})")
            continue
        except RecursionError:  # deeper than Python's parser goes (no prediction is)
            problems.skip(f"{where}: not JSON that can be read (nested too deeply)")
            continue
        image = obj.get("image") if isinstance(obj, dict) else None
        if isinstance(image, int) and not isinstance(image, bool):  # FCDB's Flickr photo id
            image = str(image)
        if not isinstance(image, str) or not image.strip():
            problems.skip(f'{where}: not an object with an "image" name')
            continue
        truth = truths.find(image)
        if truth is None:
            problems.skip(f"{where}: {truths.why_not_found(image)}")
            continue
        earlier = found.get(truth)
        if earlier is not None:
            problems.duplicate(
                f"{earlier.where}: {truth.name} is predicted again on line {number}; "
                "the last line counts"
            )
        found[truth] = _Line(where, truth, obj)
    return found


# -- boxes ---------------------------------------------------------------------------------


def _size(truths: TruthSet, line: _Line, finder: PhotoFinder | None) -> Size:
    """The photo's ``(w, h)``: from the photo if it can be found, else the line's ``size``."""
    from retrieval.exemplars import PHOTO_ERRORS, photo_size

    truth, given = line.truth, line.obj.get("size")
    if given is not None and not _is_size(given):
        raise _Unusable(f'"size" {shown(given)} is not [width, height] in pixels')
    try:
        photo = None
        if finder is not None:
            photo = next(filter(None, (finder.find(key) for key in truth.keys)), None)
        photo = photo or truths.photo_of(truth)
        size = photo_size(photo) if photo is not None else truth.size
    except PHOTO_ERRORS as exc:
        raise _Unusable(f"unreadable photo ({exc})") from None
    if size is None:
        if given is None:
            where = f" under {truths.photos}" if truths.photos else ""
            raise _Unusable(f'no photo found{where} and no "size": [w, h] in the line')
        return int(given[0]), int(given[1])
    if given is not None and tuple(given) != tuple(size):
        raise _Unusable(
            f'"size" {list(given)} differs from its photo\'s {size[0]}x{size[1]} '
            f"({photo}): fix or drop it"
        )
    return size


def _clipped(value: Any, size: Size) -> PixelBox:
    """A predicted ``[l, t, r, b]`` clipped to the photo; ``_Unusable`` if it is no box."""
    if not (isinstance(value, list) and len(value) == 4 and all(map(_finite_number, value))):
        raise _Unusable(f'"box" {shown(value)} is not [left, top, right, bottom] in pixels')
    left, top, right, bottom = (float(v) for v in value)
    if not (left < right and top < bottom):
        raise _Unusable(f'"box" {value} is empty or inverted: need left < right, top < bottom')
    w, h = size
    left, right = max(left, 0.0), min(right, float(w))
    top, bottom = max(top, 0.0), min(bottom, float(h))
    if not (left < right and top < bottom):
        raise _Unusable(f'"box" {value} lies outside the {w}x{h} photo')
    return left, top, right, bottom


# -- small helpers -------------------------------------------------------------------------


def _result(
    means: dict[str, float], photos: int, problems: _Problems, missing: list[str]
) -> dict[str, Any]:
    return {
        **means,
        "photos": photos,
        "missing": len(missing),
        "skipped": problems.skipped,
        "duplicates": problems.duplicates,
        "reasons": problems.reasons[:NAMED],
        "missing_names": missing[:NAMED],
    }


def _finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits: beyond any float
        return False


def _is_size(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(_finite_number(v) and v >= 1 and float(v).is_integer() for v in value)
    )
