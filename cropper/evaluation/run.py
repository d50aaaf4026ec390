"""Evaluate a cropper or a baseline on a benchmark split: crop, measure, report.

>>> from cropper import Cropper
>>> from cropper.evaluation.run import evaluate_crops
>>> report = evaluate_crops(Cropper(vlm="http://localhost:8000/v1", index="banks/gaicd"),
...                         "gaicd", "~/data/GAICD", "test", "runs/qwen3-8b")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError
from cropper.evaluation.harness import (
    PREDICTIONS,
    EvalPhoto,
    Method,
    check_subjects,
    dataset_task,
    eval_photos,
    read_predictions,
    run_split,
    score_predictions,
    summarize,
)
from cropper.evaluation.protocol import DEFAULT_RANKING, RANKINGS, run_protocol
from cropper.evaluation.report import write_report
from cropper.evaluation.truth import RANKED_DATASETS

log = logging.getLogger(__name__)


def evaluate_crops(
    method: Method,
    dataset: str,
    root: str | os.PathLike,
    split: str | None,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    images: str | os.PathLike | None = None,
    limit: int | None = None,
    progress: bool = True,
    gallery: int = 6,
    settings: Mapping[str, Any] | None = None,
    ranking: str = DEFAULT_RANKING,
) -> dict[str, Any]:
    """Crop the split's photos not yet done in ``out``, then write and return the report.

    ``limit`` takes the split's first photos only, for a quick look. ``settings`` (the
    method's description, never secrets) are recorded in the report as given. On GAICD's
    free-form task ``ranking`` says how the annotated crops are ranked
    (:data:`~cropper.evaluation.protocol.RANKINGS`); elsewhere nothing is ranked.
    """
    from cropper.data.datasets import dataset_label

    if ranking not in RANKINGS:
        raise ConfigError(f"unknown ranking {ranking!r}: use one of {', '.join(RANKINGS)}")
    root = Path(root).expanduser()
    task_ = dataset_task(dataset, task)
    photos = eval_photos(dataset, root, split, images=images, per_truth=task_ == "aspect")
    if limit is not None:
        photos = photos[: max(limit, 0)]
    found = check_subjects(method, photos, task_, dataset_label(dataset, root, split))
    _warn_if_the_bank_holds_test_photos(method, photos)
    ranking_ = ranking if dataset in RANKED_DATASETS and task_ == "free" else None
    outcome = run_split(
        method, photos, task_, out, progress=progress, score_crops=ranking_ == "scorer"
    )
    predictions = read_predictions(Path(out) / PREDICTIONS)
    scored = score_predictions(photos, predictions, ranking=ranking_)
    summary = summarize(scored, ranked=ranking_ is not None)
    record = {
        "dataset": dataset,
        "root": str(root),
        "split": split,
        "task": task_,
        "protocol": run_protocol(task_, ranking_),
        **dict(settings or {}),
        "photos": len(photos),
        "measured": len(scored),
        # Which photos were measured, as a digest: runs over other photos do not compare.
        "photo_set": photo_set(s.photo.name for s in scored),
        "cropped_now": outcome.cropped,
        "resumed": outcome.resumed,
        "failed": [f"{name}: {why}" for name, why in outcome.failures],
        # Photos whose crop is a fallback (no valid box from the VLM), measured all the same.
        "fell_back": sum(1 for p in predictions.values() if p.get("fallback")),
    }
    if ranking_ is not None:
        record["ranked"] = sum(1 for s in scored if "srcc" in s.values)
        if record["ranked"] < len(scored):  # lines of an older run, without crop scores
            log.warning(
                "%d of %d measured photos could not be ranked by %s (their lines in %s have "
                "no crop_scores): the ranking metrics are over the other %d",
                len(scored) - record["ranked"], len(scored), ranking_, PREDICTIONS,
                record["ranked"],
            )  # fmt: skip
    if found:  # no annotated subject: the VLM's, and how often it found none (the centre)
        record["subjects_found_by_vlm"] = found
        record["subjects_not_found"] = sum(
            1 for p in predictions.values() if p.get("subject_found") == "fallback"
        )
    return write_report(out, summary, scored, settings=record, gallery=gallery)


def photo_set(names: Iterable[str]) -> str:
    """A short digest of a set of photo names: equal for the same photos, in any order."""
    text = "\n".join(sorted(set(names)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _warn_if_the_bank_holds_test_photos(method: Any, photos: list[EvalPhoto]) -> None:
    """A bank built from the split it is measured on would show the answers: say so."""
    index = getattr(method, "index", None)
    exemplars = getattr(index, "exemplars", None)
    if not exemplars:
        return
    banked = {Path(e.image).name for e in exemplars}
    shared = sorted({p.name.split("#")[0] for p in photos} & banked)
    if shared:
        log.warning(
            "the exemplar bank holds %d of the photos being measured (e.g. %s): it shows the "
            "model their answers; build the bank from another split (e.g. --split train)",
            len(shared),
            ", ".join(shared[:3]),
        )
