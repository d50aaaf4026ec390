"""Which of an exemplar's crops go into the prompt, chosen by task (paper, section 3).

- ``free``: its best crops by score (in their order when unscored);
- ``subject``: the crop whose subject lies nearest the query's subject;
- ``aspect``: the crops whose pixel ratio lies nearest the requested one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError

TASKS = ("free", "subject", "aspect")


@dataclass(frozen=True)
class ExemplarCrop:
    """One crop of an exemplar as the prompt shows it."""

    box: Box
    score: float | None
    subject: tuple[float, float] | None  # normalized subject centre in the photo


def select_crops(
    exemplar: Any,
    task: str,
    *,
    top: int = 5,
    subject: tuple[float, float] | None = None,
    ratio: float | None = None,
) -> list[ExemplarCrop]:
    """The crops of ``exemplar`` (an Exemplar or a Hit) to show for ``task``.

    ``subject`` is the query's normalized ``(x, y)`` subject centre (task
    ``subject``); ``ratio`` the requested width over height in pixels (task
    ``aspect``); ``top`` caps how many crops ``free`` and ``aspect`` return.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    crops = _crops(exemplar)
    if task == "free":
        return _best(crops)[:top]
    if task == "subject":
        return [_nearest_subject(crops, subject)]
    if ratio is None or not (math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"task 'aspect' needs a positive ratio (w/h), got {ratio!r}")
    target = math.log(ratio)
    # Distance on the log scale, so 2:1 and 1:2 are equally far from 1:1.
    ranked = sorted(crops, key=lambda c: abs(math.log(c.box.aspect(exemplar.size)) - target))
    return ranked[:top]


def _crops(exemplar: Any) -> list[ExemplarCrop]:
    n = len(exemplar.crops)
    scores = exemplar.scores or (None,) * n
    subjects = exemplar.subjects or (None,) * n
    return [ExemplarCrop(*row) for row in zip(exemplar.crops, scores, subjects, strict=True)]


def _best(crops: list[ExemplarCrop]) -> list[ExemplarCrop]:
    """By score, highest first; unscored crops keep their order (the stable sort)."""
    if any(c.score is None for c in crops):
        return list(crops)
    return sorted(crops, key=lambda c: -c.score)


def _nearest_subject(
    crops: list[ExemplarCrop], subject: tuple[float, float] | None
) -> ExemplarCrop:
    placed = [c for c in crops if c.subject is not None]
    if subject is None or not placed:
        return _best(crops)[0]
    sx, sy = subject
    return min(placed, key=lambda c: math.hypot(c.subject[0] - sx, c.subject[1] - sy))
