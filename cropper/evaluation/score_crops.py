"""Scores of every annotated crop from cropper's own score terms, for ``eval scores``.

``cropper eval scores --score-with knowledge`` measures one term alone, and
``--score-with aesthetic=1,knowledge=1`` a combination, by ranking each photo's annotated
crops (GAICD's ~90) the way the loop ranks candidates.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError, CropperError
from cropper.core.fileio import atomic_path
from cropper.core.images import load_image
from cropper.evaluation.harness import EvalPhoto
from cropper.scoring.scorer import TERMS, Scorer, Weights

log = logging.getLogger(__name__)

#: Photos whose crops go through the embedder in one batch.
PHOTOS_PER_BATCH = 4


def build_scorer(
    weights: Weights, task: str, *, clip: Any, head: Any, prompts: str | os.PathLike | None
) -> Scorer:
    """A scorer that computes exactly the weighted terms, or says what is missing."""
    from cropper.agent import components
    from cropper.agent.prompts import PromptSet
    from cropper.scoring.knowledge import KNOWLEDGE_DIR, KnowledgeTerm

    wanted = {t for t in TERMS if getattr(weights, t) > 0}
    if not wanted:
        raise ConfigError("--score-with weighs no term: give at least one weight above 0")
    embedder = components.make_embedder(clip)
    head_ = components.make_head(head, embedder) if "aesthetic" in wanted else None
    knowledge = None
    if "knowledge" in wanted and embedder is not None:
        knowledge = KnowledgeTerm.from_folder(embedder, PromptSet(prompts).folder / KNOWLEDGE_DIR)
    scorer = Scorer(embedder, head_, weights={task: weights}, knowledge=knowledge)
    missing = wanted - set(scorer.active_weights(task))
    if missing:  # measuring a different score than asked for would mislead
        raise ConfigError(
            f"cannot compute {', '.join(sorted(missing))}: aesthetic needs --clip and --head, "
            "content and knowledge need --clip"
        )
    return scorer


def write_score_predictions(
    photos: Sequence[EvalPhoto],
    scorer: Scorer,
    task: str,
    path: str | os.PathLike,
    *,
    progress: bool = True,
) -> list[str]:
    """Score every annotated crop of ``photos`` into ``path``, written atomically.

    Each line is ``{"image", "scores", "terms"}``; the photos that could not be read are
    returned, one reason each, and left out.
    """
    failures: list[str] = []
    lines: list[str] = []
    for batch in _batches(_bar(photos, progress), PHOTOS_PER_BATCH):
        items, kept = [], []
        for photo in batch:
            try:
                items.append((load_image(photo.path), list(photo.crops), task, None))
                kept.append(photo)
            except CropperError as exc:
                failures.append(f"{photo.name}: {exc}")
        for photo, scores in zip(kept, scorer.score_many(items), strict=True):
            terms = {t: [round(s.terms[t], 6) for s in scores] for t in scores[0].terms}
            line = {"image": photo.name, "scores": [round(s.total, 6) for s in scores]}
            lines.append(json.dumps({**line, "terms": terms}))
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return failures


def _batches(items: Iterable[EvalPhoto], size: int) -> Iterable[list[EvalPhoto]]:
    batch: list[EvalPhoto] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bar(photos: Sequence[EvalPhoto], enabled: bool) -> Iterable[EvalPhoto]:
    if not enabled:
        return photos
    from tqdm.auto import tqdm

    return tqdm(photos, desc="scoring crops", unit="photo", disable=None)
