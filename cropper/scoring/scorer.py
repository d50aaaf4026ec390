"""Score candidate crops: a weighted mean of terms in [0, 1].

Terms: *aesthetic* (the aesthetic head over the crop's embedding), *area* (the crop's share
of the photo), *content* (cosine of the crop's and the photo's embeddings, clipped at 0) and
*knowledge* (CLIP's similarity to good minus bad composition prompts; see
:mod:`cropper.scoring.knowledge`, off unless weighted). A term whose model is missing is dropped
with a one-time warning; the rest are re-weighted.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, shown
from cropper.core.tasks import TASKS, check_task
from retrieval.embedder import Embedder, unit_rows

if TYPE_CHECKING:
    from PIL import Image

    from cropper.scoring.head import AestheticHead
    from cropper.scoring.knowledge import KnowledgeTerm

logger = logging.getLogger(__name__)

TERMS = ("aesthetic", "area", "content", "knowledge")
#: Terms computed from the crops' embeddings.
_EMBEDDED = ("aesthetic", "content", "knowledge")


@dataclass(frozen=True)
class Weights:
    """How much each term counts; a zero weight leaves the term out."""

    aesthetic: float = 0
    area: float = 0
    content: float = 0
    knowledge: float = 0

    @classmethod
    def parse(cls, text: str) -> Weights:
        """``"aesthetic=1,area=1,knowledge=0.5"``; terms left out weigh 0."""
        values: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, sep, value = item.partition("=")
            try:
                number = float(value) if sep else 1.0
            except ValueError:
                number = -1.0
            if name.strip() not in TERMS or not (np.isfinite(number) and number >= 0):
                raise ConfigError(
                    f"score weights {text!r}: write TERM=WEIGHT pairs separated by commas, "
                    f"TERM one of {', '.join(TERMS)} and WEIGHT >= 0, e.g. aesthetic=1,knowledge=1"
                )
            values[name.strip()] = number
        return cls(**values)

    def __post_init__(self) -> None:
        bad = [t for t in TERMS if not _usable_weight(getattr(self, t))]
        if bad:
            raise ConfigError(
                f"score weights must be finite numbers >= 0 (at most about 1e308), got "
                f"{', '.join(f'{t}={shown(getattr(self, t))}' for t in bad)}"
            )


def _usable_weight(value: Any) -> bool:
    if not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return False
    return math.isfinite(number) and number >= 0


#: The paper's choice: aesthetics and area for free-form and subject-aware crops,
#: content preservation alone for aspect-ratio crops.
TASK_WEIGHTS: dict[str, Weights] = {
    "free": Weights(aesthetic=1, area=1),
    "subject": Weights(aesthetic=1, area=1),
    "aspect": Weights(content=1),
}


def weights_by_task(spec: Any) -> dict[str, Weights]:
    """``score_weights`` as a Weights a task: one for all tasks, or a dict by task."""
    if spec is None:
        return {}
    if isinstance(spec, (str, Weights)):
        return {task: _as_weights(spec) for task in TASKS}
    if isinstance(spec, dict):
        for task in spec:
            check_task(task)
        return {task: _as_weights(w) for task, w in spec.items()}
    raise ConfigError(
        f"score_weights must be 'term=weight,...', a Weights or a dict of them by task; "
        f"got {type(spec).__name__}"
    )


def _as_weights(spec: Any) -> Weights:
    if isinstance(spec, Weights):
        return spec
    if isinstance(spec, str):
        return Weights.parse(spec)
    if isinstance(spec, dict):
        return Weights.parse(",".join(f"{k}={v}" for k, v in spec.items()))
    raise ConfigError(f"score weights {spec!r}: write 'aesthetic=1,knowledge=1' or a Weights")


@dataclass(frozen=True)
class Score:
    """A crop's score: ``total`` is the weighted mean of ``terms`` (each in [0, 1])."""

    total: float
    terms: dict[str, float]


class Scorer:
    """Scores crops of one photo, or of many, with one batched embedder pass per call."""

    def __init__(
        self,
        embedder: Embedder | None = None,
        head: AestheticHead | str | None = None,
        weights: Mapping[str, Weights] | None = None,
        knowledge: KnowledgeTerm | None = None,
    ):
        from cropper.scoring.head import load_head, same_embedder

        if isinstance(head, str):
            head = load_head(head)
        if head is not None and embedder is not None:
            if head.embedder is not None and not same_embedder(head.embedder, embedder.name):
                raise ConfigError(
                    f"aesthetic head {head.source or ''} was trained on {head.embedder!r} "
                    f"embeddings, but the CLIP in use is {embedder.name!r}: pass --clip "
                    f"{head.embedder} (clip=) to use this head, or --head with a head made for "
                    f"{embedder.name!r} (head=), or --head none (head=None)"
                )
            if head.dim != embedder.dim:
                raise ConfigError(
                    f"aesthetic head reads {head.dim}-d embeddings but embedder "
                    f"{embedder.name!r} gives {embedder.dim}-d: use a matching head"
                )
        self.embedder = embedder
        self.head = head
        self.knowledge = knowledge
        self.weights: dict[str, Weights] = {**TASK_WEIGHTS, **(weights or {})}
        self._noted: set[str] = set()

    def _note_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._noted:
            self._noted.add(key)
            logger.warning(message, *args)

    def active_weights(self, task: str) -> dict[str, float]:
        """The weighted terms this scorer can compute for ``task`` (area as the last resort).

        Weights are relative, so they are given scaled by the largest one asked for (a
        weighted mean means the same at any scale; ``1e308`` weights do not overflow).

        Without an aesthetic head, the aesthetic weight goes to the knowledge term (CLIP's
        sense of good composition) when there is one, else to the content term, so that the
        crops are not ranked by area alone. Each change is logged once.
        """
        weights, reasons = self._resolve(task)
        for reason in reasons:
            self._note_once(reason, "%s", reason)
        return weights

    def scoring_note(self, task: str) -> str | None:
        """In words, which terms score ``task``'s crops when they are not the ones asked for."""
        weights, reasons = self._resolve(task)
        if not reasons:
            return None
        return f"scored with {', '.join(sorted(weights))}: {'; '.join(reasons)}"

    def _resolve(self, task: str) -> tuple[dict[str, float], list[str]]:
        if task not in self.weights:
            raise ConfigError(
                f"no score weights for task {task!r}: use one of {sorted(self.weights)}"
            )
        wanted = {t: float(getattr(self.weights[task], t)) for t in TERMS}
        wanted = {t: w for t, w in wanted.items() if w > 0}
        if wanted:  # relative to the largest: the same at any scale, and no sum overflows
            largest = max(wanted.values())
            wanted = {t: w / largest for t, w in wanted.items()}
        reasons: list[str] = []
        if self.embedder is None and (set(_EMBEDDED) & set(wanted)):
            reasons.append(
                "no embedder, so no aesthetic, content or knowledge term (they need image "
                "embeddings; pass clip=)"
            )
            for term in _EMBEDDED:
                wanted.pop(term, None)
        if self.head is None and "aesthetic" in wanted:
            weight = wanted.pop("aesthetic")
            stand_in = "knowledge" if self.knowledge is not None else "content"
            wanted[stand_in] = wanted.get(stand_in, 0.0) + weight
            name = getattr(self.embedder, "name", None)
            reasons.append(
                f"no aesthetic head for embedder {name!r}, so its weight goes to the "
                f"{stand_in} term (pass head= a head trained on {name!r} embeddings)"
            )
        if self.knowledge is None and "knowledge" in wanted:
            reasons.append(
                "no knowledge prompts, so no knowledge term (the embedder needs a text tower)"
            )
            wanted.pop("knowledge")
        if not wanted:
            reasons.append(f"no usable weighted score term for task {task!r}: area only")
            wanted = {"area": 1.0}
        return wanted, reasons

    def score(
        self,
        image: Image.Image,
        boxes: Sequence[Box],
        task: str,
        *,
        image_embedding: np.ndarray | None = None,
    ) -> list[Score]:
        """Score each box of ``image`` for ``task``; one embedder call covers all of them."""
        return self.score_many([(image, boxes, task, image_embedding)])[0]

    def score_many(
        self, items: Sequence[tuple[Image.Image, Sequence[Box], str, np.ndarray | None]]
    ) -> list[list[Score]]:
        """Score the boxes of several photos, ``(image, boxes, task, image_embedding)`` each.

        One embedder call covers every crop of every photo, so a batch of photos costs
        one batched forward pass instead of one per photo.
        """
        weights = [self.active_weights(task) for _, _, task, _ in items]
        needs = [
            bool(boxes) and bool(set(_EMBEDDED) & set(w))
            for (_, boxes, _, _), w in zip(items, weights, strict=True)
        ]
        wants_whole = [need and "content" in w for need, w in zip(needs, weights, strict=True)]
        crops, wholes = self._embed(items, needs, wants_whole)
        out: list[list[Score]] = []
        for i, (_, boxes, _, _) in enumerate(items):
            terms: dict[str, np.ndarray] = {}
            if "area" in weights[i]:
                terms["area"] = np.array([box.area for box in boxes], dtype=np.float64)
            if needs[i] and "aesthetic" in weights[i]:
                assert self.head is not None  # active_weights keeps aesthetic only with a head
                terms["aesthetic"] = self.head.score(crops[i])
            if needs[i] and "content" in weights[i]:
                terms["content"] = np.clip(crops[i] @ wholes[i], 0.0, 1.0)
            if needs[i] and "knowledge" in weights[i]:
                assert self.knowledge is not None  # kept only with prompts, as above
                terms["knowledge"] = self.knowledge.score(crops[i])
            norm = sum(weights[i].values())
            scores = []
            for j in range(len(boxes)):
                row = {t: float(v[j]) for t, v in terms.items()}
                total = sum(weights[i][t] * row[t] for t in row) / norm
                scores.append(Score(total=float(total), terms=row))
            out.append(scores)
        return out

    def _embed(
        self,
        items: Sequence[tuple[Image.Image, Sequence[Box], str, np.ndarray | None]],
        needs: Sequence[bool],
        wants_whole: Sequence[bool],
    ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        """Unit embeddings of each photo's crops and (when wanted) of the photo, in one call."""
        crops_of: list[np.ndarray | None] = [None] * len(items)
        whole_of: list[np.ndarray | None] = [None] * len(items)
        if not any(needs):
            return crops_of, whole_of
        assert self.embedder is not None
        dim = self.embedder.dim
        side = input_side(self.embedder)
        # What to embed, as ways to make each image: crops are cut a batch at a time, so a
        # chunk of large photos never holds all its crops at once.
        images: list[Callable[[], Image.Image]] = []
        spans: list[tuple[int, int, int]] = []  # item, first crop row, whole's row or -1
        for i, (image, boxes, _, given) in enumerate(items):
            if not needs[i]:
                continue
            first = len(images)
            images += [functools.partial(scoring_crop, image, box, side) for box in boxes]
            whole_row = -1
            if wants_whole[i] and given is not None:
                whole = np.asarray(given, dtype=np.float64).reshape(-1)
                if whole.shape != (dim,):
                    raise ConfigError(
                        f"image_embedding must have {dim} values (the embedder's dim), "
                        f"got shape {np.shape(given)}"
                    )
                whole_of[i] = unit_rows(whole[None])[0]
            elif wants_whole[i]:
                whole_row = len(images)
                images.append(functools.partial(scoring_crop, image, Box.whole(), side))
            spans.append((i, first, whole_row))
        batch = max(1, int(getattr(self.embedder, "batch_size", EMBED_BATCH)))
        parts = [
            np.asarray(
                self.embedder.embed([make() for make in images[at : at + batch]]), dtype=np.float64
            )
            for at in range(0, len(images), batch)
        ]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if out.shape != (len(images), dim):
            raise ConfigError(
                f"embedder {self.embedder.name!r} returned shape {out.shape} for {len(images)} "
                f"images, expected ({len(images)}, {dim})"
            )
        out = unit_rows(out)
        for i, first, whole_row in spans:
            crops_of[i] = out[first : first + len(items[i][1])]
            if whole_row >= 0:
                whole_of[i] = out[whole_row]
        return crops_of, whole_of


#: Crops cut and embedded at a time when the embedder does not say its batch size.
EMBED_BATCH = 32


#: The longest side a crop is embedded from: several times any embedder's input (224 to
#: 518 px), so nothing it sees is lost, while a crop of a 12000-px photo costs no 200 MB.
SCORING_SIDE = 1024


def input_side(embedder: Any) -> int | None:
    """The short side an open_clip-style embedder resizes every image to, when it says so.

    Known only for the usual preprocessing: bicubic, the shortest side to a square input.
    """
    try:
        info = getattr(embedder, "preprocess_info", None) or {}
        size = info.get("image_size")
        mode, interpolation = info.get("resize_mode"), info.get("interpolation")
    except (AttributeError, TypeError, ValueError):
        return None
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return None
    if mode not in (None, "shortest") or interpolation not in (None, "bicubic"):
        return None
    return size


def scoring_crop(image: Image.Image, box: Box, side: int | None = None) -> Image.Image:
    """The crop of ``box`` as the embedder gets it.

    ``side``: the embedder's :func:`input_side`. The crop is cut at that short side (the
    long side rounded down, as torchvision does), so the embedder's own resize is a copy;
    whole blocks of pixels are averaged first (``reducing_gap=1``), then bicubic takes it
    the rest of the way: cheaper than bicubic from the whole region (a 700x525 crop to 224
    px, 3.8 ms against 4.5; to a 32-px input, far less), and within a median 64 dB PSNR
    of it (least 36 dB; 165 crops of 10 real photos). Without ``side``,
    a crop is at most :data:`SCORING_SIDE` a side. Either way a large crop is resized
    straight from the photo's region (``resize(box=...)``), so its full-resolution pixels
    are never copied out.
    """
    from PIL import Image as PILImage

    left, top, right, bottom = box.to_pixels(image.size)
    region = (left, top, right, bottom)
    w, h = right - left, bottom - top
    if side is not None and min(w, h) > side:
        size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        return image.resize(size, PILImage.Resampling.BICUBIC, box=region, reducing_gap=1.0)
    if max(w, h) <= SCORING_SIDE:
        return image.crop(region)
    scale = SCORING_SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, PILImage.Resampling.BICUBIC, box=region)
