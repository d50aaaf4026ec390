"""What a figure measured: the protocol of a run, of a published number, and when two agree.

A figure is comparable with another only when both were measured the same way. A run's
protocol is a small dict, recorded in its ``metrics.json``:

- ``task``: how the photos were asked to be cropped (``free``, ``subject``, ``aspect``);
- ``box_metrics``: how IoU and BDE meet several ground truths; ``reference`` is the rule
  of the public reference code (CACNet's evaluation of FCDB and FLMS): both from the one
  truth of highest IoU, ties to the least displaced
  (:func:`cropper.data.metrics.box_metrics`);
- ``ranking`` (GAICD only): how each photo's annotated crops are ranked for Acc, wAcc,
  SRCC and PCC (:data:`RANKINGS`).

The box metrics (``iou``, ``bde``, ``iou_top_k``) depend on ``task`` and ``box_metrics``;
the ranking metrics on ``task`` and ``ranking``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: How ``eval crop`` ranks a photo's annotated crops, and what each means.
RANKINGS: dict[str, str] = {
    "scorer": "every annotated crop scored by the method's own scorer (the terms the run "
    "uses), then ranked: the protocol of the published GAICD numbers",
    "iou": "annotated crops ranked by their IoU with the predicted crop: cropper's own "
    "protocol, which no published number uses",
}
DEFAULT_RANKING = "scorer"

#: The box-metric rule every run since the reference rule was adopted records.
BOX_RULE = "reference"
BOX_RULES: dict[str, str] = {
    BOX_RULE: "IoU and BDE from one ground truth: the one of highest IoU, or on a tie the one "
    "of least displacement (CACNet's reference evaluation of FCDB and FLMS)",
}

#: The metrics each part of the protocol bears on.
_BOX_FIELDS = ("task", "box_metrics")
_RANK_FIELDS = ("task", "ranking")
BOX_KEYS = frozenset({"iou", "bde", "iou_top_k"})

#: What a run made before protocols were recorded is said to have used.
UNRECORDED = "not recorded"


def run_protocol(task: str, ranking: str | None) -> dict[str, Any]:
    """The protocol of a run of ``task``; ``ranking`` None where nothing is ranked."""
    return {"task": task, "box_metrics": BOX_RULE, "ranking": ranking}


def fields_of(metric: str) -> tuple[str, ...]:
    """The parts of the protocol that ``metric`` depends on."""
    return _BOX_FIELDS if metric in BOX_KEYS else _RANK_FIELDS


def for_metric(protocol: Mapping[str, Any] | None, metric: str) -> dict[str, Any]:
    """The parts of ``protocol`` that ``metric`` depends on (unrecorded ones named so)."""
    protocol = protocol or {}
    return {key: protocol.get(key, UNRECORDED) for key in fields_of(metric)}


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, metric: str) -> bool:
    """Whether ``metric`` was measured the same way under protocols ``a`` and ``b``."""
    return for_metric(a, metric) == for_metric(b, metric)


def label(protocol: Mapping[str, Any] | None, metric: str) -> str:
    """A short name for how ``metric`` was measured, e.g. ``free · reference``."""
    return " · ".join(str(v) for v in for_metric(protocol, metric).values())


def legend(protocols: list[Mapping[str, Any] | None]) -> list[str]:
    """One line for each ranking and box rule named in ``protocols``, saying what it is."""
    lines = []
    names = {p.get(key) for p in protocols if p for key in ("box_metrics", "ranking")} - {None}
    if any(not p for p in protocols):
        names.add(UNRECORDED)
    for name in sorted(names, key=str):
        what = BOX_RULES.get(name) or RANKINGS.get(name)
        if name == UNRECORDED:
            what = "a run made before cropper recorded its protocol: compare with care"
        if what:
            lines.append(f"- `{name}`: {what}")
    return lines
