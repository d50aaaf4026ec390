"""Baselines that crop without a VLM, called exactly like :meth:`cropper.agent.loop.Cropper.crop`.

- ``whole``: the whole photo (for a ratio, the largest centred crop of it);
- ``centre``: a centred crop keeping :data:`CENTRE_SCALE` of each side;
- ``saliency``: the sweep of candidates that best keeps the spectral-residual saliency;
- ``head``: GAICD's grid candidates ranked by the aesthetic head alone. ``Cropper(vlm=None)``
  crops with this one;
- ``smartcrop``: the smartcrop package (smartcrop.py, after smartcrop.js), a widely used
  classical cropper, behind the ``smartcrop`` extra.

Each returns a :class:`~cropper.agent.result.CropResult` whose ``candidates`` are its ranked boxes
(``source`` the baseline's name, ``round`` 0) and whose ``rounds`` are empty. Without a VLM a
subject given as a phrase cannot be found; a subject left out is the most salient point.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from cropper.agent import components
from cropper.agent.constraints import DEFAULT_MIN_SIDE, Constraints, avoid_shares
from cropper.agent.grid import (
    COMMON_RATIOS,
    SCALES,
    STEPS,
    containing,
    grid_candidates,
    largest_fitting,
    ratio_candidates,
    sweep_candidates,
)
from cropper.agent.narrowing import NARROW, SEEDS, cheap_scores, check_narrow, search
from cropper.agent.result import Candidate, CropResult
from cropper.core.boxes import Box, fit_aspect
from cropper.core.errors import ConfigError, MissingDependencyError
from cropper.core.images import ImageInput, load_image
from cropper.core.photos import Photo
from cropper.core.tasks import TASKS, Ratio, Subject, check_request, subject_from_spec
from cropper.scoring.saliency import (
    CUT_WEIGHT,
    main_subject,
    saliency_crop_scores,
    saliency_map,
    saliency_share,
)
from cropper.scoring.scorer import Scorer, Weights

log = logging.getLogger(__name__)

DEFAULT = components.DEFAULT

#: The side share the centre crop keeps: GAICD's best crops (top MOS) keep on average 0.81
#: of the width and 0.78 of the height, centred within 0.01 of the middle.
CENTRE_SCALE = 0.8

#: The head baseline's weights: the aesthetic head alone, for every task.
HEAD_WEIGHTS: dict[str, Weights] = {task: Weights(aesthetic=1) for task in TASKS}

Ranked = list[tuple[Box, float, dict[str, float]]]

#: The score terms that need the crops' embeddings (the rest, area, costs nothing).
EMBEDDED_TERMS = frozenset({"aesthetic", "content", "knowledge"})


class Baseline:
    """A cropper without a VLM: subclasses say how to rank boxes for a task."""

    name: ClassVar[str]

    @classmethod
    def build(cls, *, clip: Any = DEFAULT, head: Any = DEFAULT) -> Baseline:
        """The baseline with its default settings; ``clip`` and ``head`` matter to ``head``."""
        return cls()

    def crop(
        self,
        image: ImageInput,
        task: str = "free",
        *,
        subject: Any = None,
        ratio: Any = None,
        allow_urls: bool = False,
        min_side: float = DEFAULT_MIN_SIDE,
        keep: Sequence[Box] = (),
        avoid: Sequence[Box] = (),
        faces: Sequence[Box] = (),
        reference: Photo | None = None,
    ) -> CropResult:
        """Crop one photo; the arguments and their errors are those of ``Cropper.crop``.

        Candidates that break the request (sides under ``min_side`` of the photo's, a
        subject or keep region left out, a face cut) are left out; when none is left, the
        best one is repaired. ``faces`` are the photo's, found by the caller. With regions
        to ``avoid``, the share of them a candidate holds is taken off its score.
        ``reference``: ``image`` is a smaller copy of this photo (see
        :class:`cropper.core.photos.Photo`); crops are ranked on the copy and cut from it.
        """
        task, ratio_ = check_request(task, subject=subject, ratio=ratio)
        photo = load_image(image, allow_urls=allow_urls)
        ref = reference or Photo.of(photo)
        subject_ = _subject(subject, photo, ref.size) if task == "subject" else None
        constraints = Constraints(
            ref.size,
            min_side,
            subject_,
            ratio_.value if ratio_ else None,
            keep=tuple(keep),
            faces=tuple(faces),
        )
        constraints.check_keep()
        found, how = self.rank_request(photo, task, subject_, ratio_, constraints, avoid)
        ranked = _avoiding(found, avoid)
        notes = [*self.notes(task), *how]
        if ratio_ is not None and ref.size != photo.size:
            # Ranked on the copy: each crop snapped to the exact ratio in the photo's pixels.
            ranked = [(fit_aspect(b, ratio_.value, ref.size), s, t) for b, s, t in ranked]
        valid = [r for r in ranked if not constraints.check(r[0])]
        if valid:
            repairs = [""] * len(valid)
            if len(valid) < len(ranked):
                n = len(ranked) - len(valid)
                notes.append(
                    f"{n} candidate{'s' * (n > 1)} broke the request (under min_side, without the "
                    "subject or a keep region, or through a face)"
                )
        else:
            # Every candidate breaks the request (no candidate of a strip is wide enough):
            # the best one, repaired, stands alone, scored as the baseline scores.
            fixed = constraints.repair(max(ranked, key=lambda r: r[1])[0])
            valid = _avoiding(self.rank_boxes(photo, task, [fixed.box]), avoid)
            repairs = [fixed.change]
            notes.append(f"no candidate satisfied the request: the best was {fixed.change}")
        candidates = sorted(
            (
                Candidate(box, float(score), terms, 0, self.name, repair)
                for (box, score, terms), repair in zip(valid, repairs, strict=True)
            ),
            key=lambda c: -c.score,
        )
        best = candidates[0]
        return CropResult(
            box=best.box,
            score=best.score,
            task=task,
            photo=ref,
            candidates=tuple(candidates),
            rounds=(),
            subject=subject_,
            ratio=ratio_,
            source=str(image) if isinstance(image, (str, os.PathLike)) else None,
            notes=tuple(notes),
        )

    def rank(
        self, photo: Image.Image, task: str, subject: Subject | None, ratio: Ratio | None
    ) -> Ranked:
        """``(box, score, terms)`` for each candidate of ``photo``, in any order."""
        raise NotImplementedError

    def rank_request(
        self,
        photo: Image.Image,
        task: str,
        subject: Subject | None,
        ratio: Ratio | None,
        constraints: Constraints,
        avoid: Sequence[Box],
    ) -> tuple[Ranked, list[str]]:
        """:meth:`rank`, knowing the whole request, and notes on how this photo was ranked.

        A baseline that ranks only some of its candidates (the head baseline, narrowed)
        chooses among those ``constraints`` allow, away from the ``avoid`` regions.
        """
        return self.rank(photo, task, subject, ratio), []

    def rank_boxes(self, photo: Image.Image, task: str, boxes: list[Box]) -> Ranked:
        """``(box, score, terms)`` for given boxes: by area, unless a baseline knows better."""
        return [(b, b.area, {"area": b.area}) for b in boxes]

    def score_boxes(self, image: ImageInput, boxes: Any, task: str = "free") -> list[float]:
        """The score this baseline ranks each of ``boxes`` by, as ``Cropper.score_boxes``."""
        ranked = self.rank_boxes(load_image(image), task, list(boxes))
        return [float(score) for _, score, _ in ranked]

    def notes(self, task: str) -> tuple[str, ...]:
        """What a user should know about how this baseline ranks ``task``'s crops."""
        return ()

    def close(self) -> None:
        """Nothing to release; here so a baseline stands in for a ``Cropper``."""

    def __enter__(self) -> Baseline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WholePhoto(Baseline):
    """The whole photo; for a ratio, the largest centred crop of that ratio."""

    name = "whole"

    def rank(self, photo, task, subject, ratio) -> Ranked:
        box = Box.whole() if ratio is None else fit_aspect(Box.whole(), ratio.value, photo.size)
        return [(box, box.area, {"area": box.area})]


class CentreCrop(Baseline):
    """A centred crop keeping ``scale`` of each side (see :data:`CENTRE_SCALE`).

    For a subject the same size is centred on the subject, moved inside the photo when it
    would stick out; for a ratio, the largest centred crop of that ratio.
    """

    name = "centre"

    def __init__(self, scale: float = CENTRE_SCALE):
        if not (isinstance(scale, (int, float)) and 0 < scale <= 1):
            raise ConfigError(f"centre crop scale must be in (0, 1], got {scale!r}")
        self.scale = float(scale)

    def rank(self, photo, task, subject, ratio) -> Ranked:
        if ratio is not None:
            box = fit_aspect(Box.whole(), ratio.value, photo.size)
        else:
            cx, cy = subject.point if subject is not None else (0.5, 0.5)
            half = self.scale / 2
            x0 = min(max(cx - half, 0.0), 1.0 - self.scale)
            y0 = min(max(cy - half, 0.0), 1.0 - self.scale)
            box = Box(x0, y0, x0 + self.scale, y0 + self.scale)
        return [(box, box.area, {"area": box.area})]


class SaliencyCrop(Baseline):
    """The candidate that best keeps the photo's spectral-residual saliency.

    Candidates: free-form, GAICD's grid and a sweep of common ratios; aspect, that ratio's
    sweep; subject, grid and sweep boxes holding the subject. The objective is
    :func:`cropper.scoring.saliency.saliency_crop_scores` with ``cut_weight``.
    """

    name = "saliency"

    def __init__(
        self,
        cut_weight: float = CUT_WEIGHT,
        *,
        scales: tuple[float, ...] = SCALES,
        steps: int = STEPS,
    ):
        self.cut_weight = cut_weight
        self.scales = scales
        self.steps = steps

    def rank(self, photo, task, subject, ratio) -> Ranked:
        size = photo.size
        if ratio is not None:
            boxes = ratio_candidates(size, ratio.value, scales=self.scales, steps=self.steps)
        else:
            boxes = grid_candidates(size) + sweep_candidates(
                size, scales=self.scales, steps=self.steps
            )
            if subject is not None:
                boxes = _holding(boxes, subject)
        return self.rank_boxes(photo, task, boxes)

    def notes(self, task: str) -> tuple[str, ...]:
        return ("ranked by spectral-residual saliency (no model): what stands out is kept",)

    def rank_boxes(self, photo: Image.Image, task: str, boxes: list[Box]) -> Ranked:
        sal = saliency_map(photo)
        scores = saliency_crop_scores(sal, boxes, cut_weight=self.cut_weight)
        kept = saliency_share(sal, boxes)  # the score's terms, for the trace
        cut = 1.0 - np.array([b.area for b in boxes])
        return [
            (b, float(s), {"saliency": float(k), "cut": float(c)})
            for b, s, k, c in zip(boxes, scores, kept, cut, strict=True)
        ]


class HeadGridCrop(Baseline):
    """GAICD-style grid candidates ranked by the aesthetic head alone.

    Candidates: free-form, GAICD's grid; aspect, the ratio's sweep; subject, grid boxes and
    the photo's own ratio's sweep, those holding the subject. ``scorer`` lends its embedder
    and head. Without either, the ranking falls back to area (the largest candidate wins).

    ``narrow`` (default :data:`~cropper.agent.narrowing.NARROW`) is how many candidates are
    embedded and ranked: a cheap first pass (saliency, composition, size) picks the first
    ones and a search over their neighbours the rest (:mod:`cropper.agent.narrowing`); the
    result's notes say so. ``narrow=None`` ranks every candidate (87-90 for the grid), in
    one embedder call. Either way the crops are embedded from a copy of the photo reduced
    as far as every candidate keeps :func:`scoring_side` pixels on its short side, so a
    12-megapixel photo costs what a small one does.
    """

    name = "head"

    def __init__(self, scorer: Scorer, *, narrow: int | None = NARROW):
        # Without a head the aesthetic weight goes to the knowledge or content term (see
        # cropper.scoring.scorer); without an embedder, to area alone: crop by saliency instead.
        self.scorer = Scorer(
            scorer.embedder, scorer.head, weights=HEAD_WEIGHTS, knowledge=scorer.knowledge
        )
        self.narrow = check_narrow(narrow)
        if scorer.embedder is None:
            log.warning(
                "head baseline without an embedder: candidates are ranked by area alone, so "
                "the largest wins; pass clip=, or crop by saliency"
            )

    @classmethod
    def build(cls, *, clip: Any = DEFAULT, head: Any = DEFAULT) -> HeadGridCrop:
        from cropper.agent.prompts import default_prompt_dir
        from cropper.scoring.knowledge import KNOWLEDGE_DIR

        embedder = components.make_embedder(clip)
        head_ = components.make_head(head, embedder)
        folder = default_prompt_dir() / KNOWLEDGE_DIR
        knowledge = components.make_knowledge(embedder, folder, HEAD_WEIGHTS, head_)
        return cls(Scorer(embedder, head_, knowledge=knowledge))

    def candidates(
        self, size: tuple[int, int], subject: Subject | None, ratio: Ratio | None
    ) -> list[Box]:
        """The boxes this baseline chooses among for a photo of ``size``."""
        if ratio is not None:
            return ratio_candidates(size, ratio.value)
        # A panorama or a strip has no grid crop within GAICD's ratio limits: its own
        # ratio's sweep stands in, so every photo gets candidates.
        boxes = grid_candidates(size) or ratio_candidates(size, size[0] / size[1], steps=3)
        if subject is not None:
            own = ratio_candidates(size, size[0] / size[1], steps=3)
            boxes = _holding(boxes + own, subject)
        return boxes

    def rank(self, photo, task, subject, ratio) -> Ranked:
        return self.rank_boxes(photo, task, self.candidates(photo.size, subject, ratio))

    def rank_request(self, photo, task, subject, ratio, constraints, avoid):
        # In the photo's own pixels (constraints.size), as the crop is cut: ``photo`` may be
        # a smaller copy of it.
        boxes = self.candidates(constraints.size, subject, ratio)
        work = scoring_copy(photo, boxes, scoring_side(self.scorer.embedder))
        embeds = bool(set(self.scorer.active_weights(task)) & EMBEDDED_TERMS)
        if self.narrow is None or len(boxes) <= self.narrow or not embeds:
            return self._scored(work, task, boxes), []
        # The budget goes to crops the request allows; when none does, the best of all is
        # repaired (Baseline.crop), so all of them are searched.
        allowed = [b for b in boxes if not constraints.check(b)] or boxes
        if len(allowed) <= self.narrow:
            return self._scored(work, task, allowed), []
        found: dict[int, tuple[float, dict[str, float]]] = {}

        def rank(indices: list[int]) -> list[float]:
            # The search climbs the score the crop is chosen by: the avoid share taken off.
            picked = [allowed[i] for i in indices]
            shares = avoid_shares(picked, avoid)
            out = []
            for i, (_, score, terms), share in zip(
                indices, self._scored(work, task, picked), shares, strict=True
            ):
                found[i] = (score, terms)
                out.append(score - float(share))
            return out

        cheap = cheap_scores(saliency_map(work), allowed) - avoid_shares(allowed, avoid)
        search(allowed, cheap, rank, budget=self.narrow)
        ranked = [(allowed[i], score, terms) for i, (score, terms) in found.items()]
        kind = "grid crops" if task == "free" and ratio is None else "candidate crops"
        seeds = min(SEEDS, self.narrow)
        note = (
            f"ranked {len(ranked)} of the {len(boxes)} {kind}: the {seeds} that saliency and "
            f"composition put first, then {len(ranked) - seeds} beside the best of them; the "
            f"other {len(boxes) - len(ranked)} were not embedded (narrow=None ranks them all)"
        )
        return ranked, [note]

    def rank_boxes(self, photo: Image.Image, task: str, boxes: list[Box]) -> Ranked:
        work = scoring_copy(photo, boxes, scoring_side(self.scorer.embedder))
        return self._scored(work, task, boxes)

    def _scored(self, work: Image.Image, task: str, boxes: list[Box]) -> Ranked:
        scores = self.scorer.score(work, boxes, task)
        return [(b, s.total, dict(s.terms)) for b, s in zip(boxes, scores, strict=True)]

    def notes(self, task: str) -> tuple[str, ...]:
        note = self.scorer.scoring_note(task)
        return (note,) if note else ()


#: The fewest pixels on its short side a crop is embedded from, whatever the embedder's
#: input: CLIP's usual 224, the least a crop is seen at.
MIN_SCORING_SIDE = 224


def scoring_side(embedder: Any) -> int:
    """The short side, in pixels, a crop should keep for ``embedder``: its input, at least 224."""
    try:
        size = (getattr(embedder, "preprocess_info", None) or {}).get("image_size")
    except (AttributeError, TypeError, ValueError):
        size = None
    sides = [size] if isinstance(size, int) else list(size) if isinstance(size, list) else []
    sides = [int(s) for s in sides if isinstance(s, (int, float)) and s > 0]
    return max([MIN_SCORING_SIDE, *sides])


def scoring_copy(photo: Image.Image, boxes: Sequence[Box], side: int) -> Image.Image:
    """``photo`` reduced by the largest whole factor that leaves every box ``side`` pixels.

    Each box keeps at least ``side`` pixels on its short side, which the embedder shrinks
    to its input anyway. :meth:`PIL.Image.Image.reduce` averages blocks of pixels, fast even
    on a 12-megapixel photo; boxes are normalized, so they mean the same crops in the copy.
    The photo itself when no reduction is possible.
    """
    if not boxes:
        return photo
    w, h = photo.size
    short = min(min(b.width * w, b.height * h) for b in boxes)
    factor = int(short // side)
    return photo.reduce(factor) if factor >= 2 else photo


#: The long side, in pixels, smartcrop analyses a photo at: as its own ``crop()``, the
#: photo is scaled down first (smartcrop is slow on large photos); boxes map back exactly.
SMARTCROP_SIDE = 256
#: smartcrop's step between windows, in pixels of the analysed photo, and the window
#: scales it tries (each a share of the largest window of the ratio): its own defaults.
SMARTCROP_STEP = 8
SMARTCROP_SCALES = (1.0, 0.9)


class SmartcropCrop(Baseline):
    """The smartcrop package: windows scored by edges, skin and saturation, rule of thirds.

    smartcrop searches windows of one ratio, from the largest down to ``min(scales)`` of
    it, scoring each by its features per unit area (``SmartCrop.analyse``). Free-form, it
    is asked for the photo's own ratio and the common ones
    (:data:`~cropper.agent.grid.COMMON_RATIOS`), and its best window of all wins; aspect,
    the ratio asked, each window snapped to the exact ratio in the photo's pixels (its
    short side kept); subject, the free-form windows holding the subject. Its own defaults
    stand (windows of 1.0 and 0.9 of the largest, 8 px apart), so it crops as people who
    use it know it.
    Needs ``pip install 'cropper[smartcrop]'``.
    """

    name = "smartcrop"

    def __init__(
        self,
        *,
        scales: tuple[float, ...] = SMARTCROP_SCALES,
        side: int = SMARTCROP_SIDE,
        step: int = SMARTCROP_STEP,
    ):
        try:
            import smartcrop
        except ImportError:
            raise MissingDependencyError(
                "smartcrop", "smartcrop", "the smartcrop baseline"
            ) from None
        self.engine = smartcrop.SmartCrop()
        self.scales = tuple(sorted(scales, reverse=True))
        self.side = side
        self.step = step

    def rank(self, photo, task, subject, ratio) -> Ranked:
        small = self._analysed(photo)
        wanted = [ratio.value] if ratio is not None else _free_ratios(photo.size)
        ranked: Ranked = []
        for value in wanted:
            width, height = largest_fitting(small.size, value)
            found = self.engine.analyse(
                small,
                width,
                height,
                max_scale=self.scales[0],
                min_scale=self.scales[-1],
                num_scale_steps=len(self.scales),
                step=self.step,
            )
            for window in found["crops"]:
                box = _window_box(window, small.size)
                if ratio is not None:
                    box = _snapped(box, ratio.value, photo.size)
                score = float(window["score"])
                ranked.append((box, score, {"smartcrop": score}))
        return ranked

    def rank_boxes(self, photo: Image.Image, task: str, boxes: list[Box]) -> Ranked:
        """The score smartcrop gives each box, computed as ``SmartCrop.analyse`` does."""
        engine = self.engine
        small = self._analysed(photo)
        features = engine.prepare_features_image(small)
        down = engine.score_down_sample
        sampled = features.resize(
            (math.ceil(small.size[0] / down), math.ceil(small.size[1] / down)),
            Image.Resampling.LANCZOS,
        )
        cells = engine.precompute_features(sampled)
        prescore = float(np.sum(cells)) * engine.outside_importance
        out: Ranked = []
        for box in boxes:
            left, top, right, bottom = box.to_pixels(small.size)
            x, y, w, h = (int(v / down) for v in (left, top, right - left, bottom - top))
            importance = engine.get_importance(height=max(h, 1), width=max(w, 1))
            score = engine.score(
                cells,
                prescore,
                (x, y, max(w, 1), max(h, 1)),
                importance - engine.outside_importance,
            )
            out.append((box, float(score), {"smartcrop": float(score)}))
        return out

    def notes(self, task: str) -> tuple[str, ...]:
        return ("ranked by smartcrop (edges, skin, saturation, rule of thirds; no model)",)

    def _analysed(self, photo: Image.Image) -> Image.Image:
        """The photo as smartcrop analyses it: RGB, its long side at most :attr:`side`."""
        rgb = photo.convert("RGB")
        scale = self.side / max(rgb.size)
        if scale >= 1:
            return rgb
        size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
        return rgb.resize(size, Image.Resampling.LANCZOS)


def _free_ratios(size: tuple[int, int]) -> list[float]:
    """The photo's own ratio, then the common ones that differ from it by more than 1%."""
    own = size[0] / size[1]
    return [own] + [r for r in COMMON_RATIOS if abs(r / own - 1) > 0.01]


def _snapped(box: Box, ratio: float, size: tuple[int, int]) -> Box:
    """``box`` at exactly ``ratio`` in whole pixels: its short side kept, the long one set.

    The long side is the whole number nearest the ratio's (as the other baselines'
    candidates, :func:`~cropper.agent.grid.largest_fitting`), about the same centre; a box
    that would not fit is the largest that does.
    """
    w_img, h_img = size
    left, top, right, bottom = box.to_pixels(size)
    if ratio >= 1:
        h = bottom - top
        w = round(h * ratio)
    else:
        w = right - left
        h = round(w / ratio)
    if w > w_img or h > h_img or min(w, h) < 1:
        w, h = largest_fitting(size, ratio)
    x = min(max(round((left + right - w) / 2), 0), w_img - w)
    y = min(max(round((top + bottom - h) / 2), 0), h_img - h)
    return Box.from_pixels((x, y, x + w, y + h), size)


def _window_box(window: dict[str, Any], size: tuple[int, int]) -> Box:
    """One of smartcrop's windows (``x, y, width, height`` in pixels) as a box of the photo."""
    w, h = size
    right = min(window["x"] + window["width"], w)
    bottom = min(window["y"] + window["height"], h)
    return Box(window["x"] / w, window["y"] / h, right / w, bottom / h)


#: The baselines by name, as ``cropper eval crop --baseline NAME`` takes them.
BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (WholePhoto, CentreCrop, SaliencyCrop, HeadGridCrop, SmartcropCrop)
}


def make_baseline(name: str, *, clip: Any = DEFAULT, head: Any = DEFAULT) -> Baseline:
    """The baseline called ``name`` with its defaults; ``clip`` and ``head`` serve ``head``."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}: use one of {', '.join(BASELINES)}")
    return BASELINES[name].build(clip=clip, head=head)


def _subject(spec: Any, photo: Image.Image, size: tuple[int, int]) -> Subject:
    """The subject as given (a mask of the photo's ``size``); else the most salient point."""
    found = subject_from_spec(spec, size)
    if isinstance(found, Subject):
        return found
    if isinstance(found, str):
        raise ConfigError(
            f"subject {found!r} is a phrase, and finding it needs a VLM: give a point x,y, a "
            "box x0,y0,x1,y1 or a mask, or crop with a VLM"
        )
    return main_subject(photo)


def _avoiding(ranked: Ranked, avoid: Sequence[Box]) -> Ranked:
    """The ranked boxes with the share of ``avoid`` each holds taken off its score."""
    if not avoid:
        return ranked
    shares = avoid_shares([box for box, _, _ in ranked], avoid)
    return [
        (box, score - float(share), {**terms, "avoid": round(float(share), 6)})
        for (box, score, terms), share in zip(ranked, shares, strict=True)
    ]


def _holding(boxes: list[Box], subject: Subject) -> list[Box]:
    kept, note = containing(boxes, subject.point)
    if note:
        log.warning("%s", note)
    return kept
