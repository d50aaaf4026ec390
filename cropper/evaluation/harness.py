"""``cropper eval crop``: run a cropper (or a baseline) over a dataset split and measure it.

The run is resumable: each photo's prediction is appended to ``predictions.jsonl`` (one
line, flushed and synced) as soon as it is done, and a run started again with the same
folder skips the photos already there. A line torn by a kill is dropped on restart.

The protocol, since the paper publishes none:

- Each photo is cropped with the dataset's task: GAICD and FLMS free-form, FCDB
  aspect-ratio (the ratio of its ground-truth crop), SACD subject-aware (the centre of the
  annotated subject, as a point).
- No ground truth enters a request but the ratio the aspect task asks for: a photo
  without an annotated subject is cropped for the subject task with the subject the VLM
  finds, and a method without a VLM is refused that task (:func:`check_subjects`).
- Aspect-ratio-aware cropping asks one crop per ground-truth box, with that box's ratio,
  and measures it against that box alone (FLMS's ten expert crops are ten requests; FCDB's
  one crop, one).
- ``iou`` and ``bde`` compare the predicted crop with the ground truth in pixels of the
  original photo: against several ground truths (GAICD's crops tied for the highest MOS)
  both from one of them, chosen as the reference code of FCDB and FLMS chooses it
  (:func:`cropper.data.metrics.box_metrics`).
- On GAICD the ranking metrics (Acc, wAcc, SRCC, PCC) rank the photo's annotated crops one
  of two ways (:data:`cropper.evaluation.protocol.RANKINGS`): ``scorer``, every annotated
  crop scored by the method's own scorer (``score_boxes``: the terms the run uses), the
  protocol of the published numbers; or ``iou``, by their IoU with the predicted crop, as
  if that IoU were each one's score, a protocol of cropper's own. A ``scorer`` run keeps
  the scores in ``predictions.jsonl`` (``crop_scores``), so it can be measured by IoU rank
  too without cropping again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cropper.agent.result import CropResult
from cropper.core.boxes import Box, Size
from cropper.core.errors import ConfigError, CropperError, VLMError
from cropper.core.fileio import JsonLines, read_json_lines
from cropper.data import metrics

log = logging.getLogger(__name__)

#: The task each benchmark measures, as in the paper.
DATASET_TASKS = {"gaicd": "free", "fcdb": "aspect", "sacd": "subject", "flms": "free"}
PREDICTIONS = "predictions.jsonl"


class Method(Protocol):
    """What a run crops with: a :class:`~cropper.agent.loop.Cropper` or a baseline."""

    def crop(
        self, image: Any, task: str = "free", *, subject: Any = None, ratio: Any = None
    ) -> CropResult: ...

    def score_boxes(self, image: Any, boxes: Sequence[Box], task: str = "free") -> list[float]:
        """The method's own score of each box: what it ranks its candidates by."""
        ...


@dataclass(frozen=True)
class EvalPhoto:
    """One photo of the split with its annotated crops (normalized) and their scores."""

    name: str  # how predictions and reports call it: the file name, made unique
    path: str
    size: Size
    crops: tuple[Box, ...]
    scores: tuple[float, ...] | None = None
    subject: tuple[float, float] | None = None  # normalized, for subject-aware cropping

    def pixels(self, box: Box) -> tuple[float, float, float, float]:
        """``box`` in (unrounded) pixels of the original photo."""
        w, h = self.size
        return (box.x0 * w, box.y0 * h, box.x1 * w, box.y1 * h)

    @property
    def truths(self) -> list[Box]:
        """The ground truth for the box metrics: the best-scored crops, ties included."""
        return metrics.best_crops(self.crops, self.scores)  # type: ignore[return-value]

    def per_truth(self) -> list[EvalPhoto]:
        """One photo a ground-truth box, each measured against its box alone."""
        return [replace(self, crops=(truth,), scores=None) for truth in self.truths]

    def request(self, task: str) -> dict[str, Any]:
        """The ``subject=`` and ``ratio=`` a crop of this photo is asked with for ``task``."""
        if task == "aspect":
            left, top, right, bottom = self.pixels(self.truths[0])
            return {"subject": None, "ratio": (right - left) / (bottom - top)}
        if task == "subject":  # None when not annotated: the VLM finds the subject
            return {"subject": self.subject, "ratio": None}
        return {"subject": None, "ratio": None}


def eval_photos(
    dataset: str,
    root: str | os.PathLike,
    split: str | None,
    *,
    images: Any = None,
    per_truth: bool = False,
) -> list[EvalPhoto]:
    """The split's photos with their ground truth, named uniquely by file name.

    With ``per_truth`` a photo is one item a ground-truth box (:meth:`EvalPhoto.per_truth`),
    as aspect-ratio-aware cropping measures it.
    """
    from cropper.data.datasets import load_dataset

    photos: list[EvalPhoto] = []
    seen: dict[str, int] = {}
    for exemplar in load_dataset(dataset, root, split, images=images):
        subjects = [s for s in exemplar.subjects or () if s is not None]
        photo = EvalPhoto(
            name=Path(exemplar.image).name,
            path=exemplar.image,
            size=exemplar.size,
            crops=exemplar.crops,
            scores=exemplar.scores,
            subject=subjects[0] if subjects else None,
        )
        for item in photo.per_truth() if per_truth else [photo]:
            # SACD annotates one photo several times, one subject each; FLMS's aspect
            # requests are one a truth: the second and later are name#2, name#3, ...
            seen[item.name] = seen.get(item.name, 0) + 1
            count = seen[item.name]
            photos.append(replace(item, name=f"{item.name}#{count}") if count > 1 else item)
    return photos


def finds_subjects(method: Any) -> bool:
    """Whether ``method`` finds a photo's subject itself: a cropper with a VLM does."""
    return getattr(method, "vlm", None) is not None


def check_subjects(method: Any, photos: Sequence[EvalPhoto], task: str, label: str) -> int:
    """How many photos the VLM must find the subject of; a method that cannot is refused.

    A subject taken from the ground truth (its crop's centre) would show the method part
    of the answer, so it is never used.
    """
    unannotated = sum(1 for p in photos if p.subject is None) if task == "subject" else 0
    if unannotated and not finds_subjects(method):
        raise ConfigError(
            f"{label}: {unannotated} of {len(photos)} photos have no annotated subject, and "
            "only a VLM finds one: crop with --vlm, or measure the subject task on sacd"
        )
    return unannotated


def dataset_task(dataset: str, task: str | None) -> str:
    """The task to crop ``dataset`` with: ``task`` if given, else the benchmark's own."""
    from cropper.core.tasks import check_task

    return check_task(task) if task else DATASET_TASKS.get(dataset, "free")


# -- running -------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What a run did: how many photos it cropped now, found done, and could not crop."""

    cropped: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def run_split(
    method: Method,
    photos: Sequence[EvalPhoto],
    task: str,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    score_crops: bool = False,
) -> RunOutcome:
    """Crop every photo not yet in ``out/predictions.jsonl``, appending each as it is done.

    With ``score_crops`` each line also holds the method's score of every annotated crop
    (``crop_scores``, in annotation order), for the ``scorer`` ranking. A photo that
    cannot be cropped or scored (a bad file, a reply with no box) is reported and left
    out, so a later run tries it again; a server that stays unreachable stops the run.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    done = read_predictions(folder / PREDICTIONS)
    todo = [p for p in photos if p.name not in done]
    outcome = RunOutcome(resumed=len(photos) - len(todo))
    top_k = getattr(getattr(method, "config", None), "top_k", 1)  # a Cropper's; baselines: 1
    if outcome.resumed:
        log.info("resuming: %d of %d photos already done", outcome.resumed, len(photos))
    with JsonLines(folder / PREDICTIONS) as sink:
        for photo in _progress(todo, progress):
            try:
                result = method.crop(photo.path, task=task, **photo.request(task))
                scores = method.score_boxes(result.photo, photo.crops, task) if score_crops else []
            except VLMError as exc:
                if exc.stops_batch:
                    raise  # the server is gone, or refuses every photo: stop now, resume later
                outcome.failures.append((photo.name, str(exc)))
                continue
            except CropperError as exc:
                outcome.failures.append((photo.name, str(exc)))
                continue
            line = {
                "image": photo.name,
                "task": task,
                "box": [round(v, 2) for v in photo.pixels(result.box)],
                "score": round(float(result.score), 6),
            }
            if getattr(result, "fallback", None):  # measured, but marked: it is no VLM crop
                line["fallback"] = result.fallback
            if task == "subject" and photo.subject is None:  # found by the VLM: say how
                line["subject_found"] = getattr(result.subject, "source", "unknown")
            if score_crops:  # the method's score of each annotated crop, for its ranking
                line["crop_scores"] = [round(float(v), 6) for v in scores]
            if top_k > 1 and result.top:  # the diverse crops, for iou_top_k
                line["top"] = [[round(v, 2) for v in photo.pixels(c.box)] for c in result.top]
            sink.append(line)
            outcome.cropped += 1
    return outcome


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """The predictions written so far, by image name; a torn last line is cut off."""
    out: dict[str, dict[str, Any]] = {}
    for record in read_json_lines(path):
        box = record.get("box")
        if isinstance(record.get("image"), str) and isinstance(box, list) and len(box) == 4:
            out[record["image"]] = record
        else:
            log.warning("%s: %s is not a prediction; ignored (it will be redone)", path, record)
    return out


def _progress(items: Sequence[EvalPhoto], enabled: bool) -> Iterable[EvalPhoto]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="cropping", unit="photo", disable=None)  # None: off when no terminal


# -- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoScore:
    """One photo's prediction and its metrics."""

    photo: EvalPhoto
    box: tuple[float, float, float, float]  # predicted, pixels of the original photo
    values: dict[str, float]  # iou, bde, and the ranking metrics where they apply


def score_predictions(
    photos: Sequence[EvalPhoto],
    predictions: dict[str, dict[str, Any]],
    *,
    ranking: str | None = None,
) -> list[PhotoScore]:
    """Each predicted photo's metrics; ``ranking`` adds Acc, wAcc, SRCC and PCC.

    ``ranking`` is ``scorer`` (the line's ``crop_scores``; a line without them is not
    ranked) or ``iou`` (each annotated crop's IoU with the predicted crop); None ranks
    nothing. A photo with fewer annotated crops than Acc needs is not ranked either.
    """
    scored: list[PhotoScore] = []
    for photo in photos:
        record = predictions.get(photo.name)
        if record is None:
            continue
        box = tuple(float(v) for v in record["box"])
        truths = [photo.pixels(t) for t in photo.truths]
        values = metrics.box_metrics(box, truths, photo.size)
        if record.get("top"):  # the best of the k diverse crops, as diverse cropping measures
            values["iou_top_k"] = max(
                metrics.box_metrics(tuple(map(float, b)), truths, photo.size)["iou"]
                for b in record["top"]
            )
        predicted = _ranking_scores(photo, record, box, ranking)
        if predicted is not None:
            values |= metrics.photo_score_metrics(photo.scores, predicted)  # type: ignore[arg-type]
        scored.append(PhotoScore(photo, box, values))  # type: ignore[arg-type]
    return scored


def _ranking_scores(
    photo: EvalPhoto, record: dict[str, Any], box: tuple[float, ...], ranking: str | None
) -> list[float] | None:
    """What ranks the photo's annotated crops under ``ranking``; None when it cannot."""
    if ranking is None or photo.scores is None or len(photo.crops) < max(metrics.TOP_K):
        return None
    if ranking == "iou":
        return [metrics.iou(box, photo.pixels(c)) for c in photo.crops]  # type: ignore[arg-type]
    given = record.get("crop_scores")
    if not isinstance(given, list) or len(given) != len(photo.crops):
        return None  # a line from a run that did not score the crops
    return [float(v) for v in given]


def summarize(scored: Sequence[PhotoScore], *, ranked: bool) -> dict[str, float]:
    """The means over photos of each photo's metrics.

    ``iou`` and ``bde``; ``iou_top_k`` (the best IoU among a photo's top-k crops) over the
    photos that have them; with ``ranked``, the ranking metrics over the photos ranked.
    """
    if not scored:
        raise ConfigError("no photo was cropped, so there is nothing to measure")
    out = metrics.mean_box_metrics(s.values for s in scored)
    tops = [s.values["iou_top_k"] for s in scored if "iou_top_k" in s.values]
    if tops:
        out["iou_top_k"] = float(sum(tops) / len(tops))
    rows = [s.values for s in scored if "srcc" in s.values]
    if ranked and rows:
        keys = [k for k in rows[0] if k not in ("iou", "bde")]
        out |= metrics.mean_score_metrics({k: row[k] for k in keys} for row in rows)
    return out
