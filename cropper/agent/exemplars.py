"""Exemplars for a prompt: retrieved, their crops chosen by task, photos sized once."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cropper.agent.prompts import PromptPhoto
from cropper.agent.sizing import PixelBudget, fit_to_budget
from cropper.core.errors import CropperError
from cropper.core.images import load_image
from cropper.core.tasks import Ratio, Subject

log = logging.getLogger(__name__)

#: Cosine similarity from which a banked photo is taken for the query photo itself: the
#: same pixels through the same embedder, up to float rounding. (Distinct photos reach
#: 0.99999 with a tiny random CLIP, so the threshold is tighter than that.)
SAME_PHOTO = 1.0 - 1e-6


@dataclass(frozen=True)
class PromptExemplar:
    """An exemplar as a template sees it: ``photo`` and its task-chosen ``crops``."""

    photo: PromptPhoto
    crops: list[Any]  # retrieval.selection.ExemplarCrop: box, score, subject
    similarity: float


class ExemplarSource:
    """Finds a query's nearest exemplars and prepares them for the prompt.

    Exemplar photos recur across queries and rounds, so each is decoded and sized
    once and kept, keyed by path, modification time and size budget.
    """

    def __init__(self, index: Any, *, cache_size: int = 512):
        self.index = index
        self._photos: OrderedDict[tuple[str, float, int, str], PromptPhoto] = OrderedDict()
        self._cache_size = cache_size
        self._missing: set[str] = set()
        self._lock = threading.Lock()

    def retrieve(
        self,
        embedding: np.ndarray,
        task: str,
        *,
        count: int,
        crops_per_exemplar: int,
        side: int,
        subject: Subject | None = None,
        ratio: Ratio | None = None,
        budget: PixelBudget | None = None,
        query: str | None = None,
    ) -> tuple[list[PromptExemplar], list[str]]:
        """The ``count`` nearest exemplars, and the banked photos left out as the query itself.

        A photo cropped while it is in the bank would be shown its own good crops: the
        bank's copy (the same file, or an embedding as good as identical) is left out, and
        one more exemplar taken in its place.
        """
        each, itself = self.retrieve_each(
            embedding,
            task,
            [ratio],
            count=count,
            crops_per_exemplar=crops_per_exemplar,
            side=side,
            subject=subject,
            budget=budget,
            query=query,
        )
        return each[0], itself

    def retrieve_each(
        self,
        embedding: np.ndarray,
        task: str,
        ratios: Sequence[Ratio | None],
        *,
        count: int,
        crops_per_exemplar: int,
        side: int,
        subject: Subject | None = None,
        budget: PixelBudget | None = None,
        query: str | None = None,
    ) -> tuple[list[list[PromptExemplar]], list[str]]:
        """:meth:`retrieve` for each of ``ratios``, from one search of the bank.

        The nearest photos are the same for every ratio; only the crops shown of each
        (those nearest the ratio) differ.
        """
        from retrieval.selection import select_crops

        each: list[list[PromptExemplar]] = [[] for _ in ratios]
        if count <= 0:
            return each, []
        itself: list[str] = []
        here = os.path.realpath(query) if query else None
        for hit in self.index.search(embedding, k=count + 3):
            if all(len(exemplars) == count for exemplars in each):
                break
            if hit.similarity >= SAME_PHOTO or (here and os.path.realpath(hit.image) == here):
                itself.append(hit.image)
                continue
            photo = self._photo(hit.image, side, budget)
            if photo is None:
                continue
            for exemplars, ratio in zip(each, ratios, strict=True):
                if len(exemplars) == count:
                    continue
                crops = select_crops(
                    hit,
                    task,
                    top=crops_per_exemplar,
                    subject=subject.point if subject else None,
                    ratio=ratio.value if ratio else None,
                )
                if crops:
                    exemplars.append(PromptExemplar(photo, list(crops), float(hit.similarity)))
        return each, itself

    def _photo(self, path: str, side: int, budget: PixelBudget | None) -> PromptPhoto | None:
        # A budget gives other pixels than the plain fit: cached and named apart.
        sizing = (
            "" if budget is None else f"@{budget.factor}:{budget.min_pixels}-{budget.max_pixels}"
        )
        try:
            key = (path, os.path.getmtime(path), side, sizing)
        except OSError:
            self._warn_missing(path, "no such file")
            return None
        with self._lock:
            cached = self._photos.get(key)
            if cached is not None:
                self._photos.move_to_end(key)
                return cached
        try:
            photo = PromptPhoto(
                fit_to_budget(load_image(path), budget, side), key=f"{path}@{side}{sizing}"
            )
        except CropperError as exc:
            self._warn_missing(path, str(exc))
            return None
        with self._lock:  # batches run in two threads (see Cropper.crop_stream)
            self._photos[key] = photo
            if len(self._photos) > self._cache_size:
                self._photos.popitem(last=False)
        return photo

    def _warn_missing(self, path: str, why: str) -> None:
        if path not in self._missing:
            self._missing.add(path)
            log.warning("exemplar photo %s skipped: %s; rebuild the bank or restore it", path, why)
