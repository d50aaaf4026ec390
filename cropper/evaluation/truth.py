"""A dataset split's ground truth, photo by photo, as predictions are measured against it.

The benchmarks' annotations are read without their photos (:func:`load_truth`), so
predicted scores can be measured with the annotation files alone. Box metrics need
each photo's size: the photo's header, when the photo is at hand, says it
(:meth:`TruthSet.photo_of`); otherwise the prediction does.

A prediction names its photo as the user has it: ``265813.jpg``, ``test/265813.jpg``,
``/data/GAICD/images/test/265813.jpg`` or ``265813`` all find GAICD's ``265813.jpg``;
FCDB's photos are found by Flickr photo id or by their url's file name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cropper.core.boxes import PixelBox, Size
from cropper.core.errors import ExemplarIndexError
from cropper.data import metrics

log = logging.getLogger(__name__)


#: Suffixes dropped to get the stem a prediction may name a photo (or annotation) by.
_STRIPPED_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".json", ".txt"}
)
#: A Flickr-style name: the photo id, then nothing or ``_`` and more (``4910188666_04cf_b``).
_PHOTO_ID = re.compile(r"(\d+)(?:_.*)?")
#: Benchmarks whose scores are people's ratings, so that ranking crops by them means something.
RANKED_DATASETS = frozenset({"gaicd"})


@dataclass(frozen=True)
class GroundTruth:
    """One photo's annotated crops, in pixels of the frame the dataset gives them in.

    The frame is the photo scaled to a long side of ``long_side`` when that is set
    (GAICD's single-JSON form), else the photo of ``size`` when that is known, else the
    photo itself, whatever its size.
    """

    name: str  # how reports name it: the photo or annotation file, as the dataset does
    keys: tuple[str, ...]  # other names a prediction may call it by (file name, photo id, ...)
    crops: tuple[PixelBox, ...]  # (left, top, right, bottom) in pixels of the frame
    scores: tuple[float, ...] | None = None  # one a crop (GAICD's MOS); None: all equally good
    long_side: int | None = None
    photo: Path | None = None  # where the photo is, or where the dataset's layout puts it
    size: Size | None = None  # the photo's (w, h), when already read

    def crops_at(self, size: Size, *, best: bool = False) -> list[PixelBox]:
        """The crops in pixels of the original photo of ``size`` (``best``: the ground truth).

        The ground truth for box metrics is the best-scored crops, ties included
        (:func:`cropper.data.metrics.best_crops`). Raises ``ValueError`` when a crop does not
        fit the photo (beyond a pixel of rounding): the size is likely wrong.
        """
        from cropper.data.datasets import normalized_box, scaled_size

        crops = metrics.best_crops(self.crops, self.scores) if best else self.crops
        if self.long_side:
            frame = scaled_size(size, self.long_side)
        else:
            frame = self.size or size
        w, h = size
        out: list[PixelBox] = []
        for crop in crops:
            box = normalized_box(crop, frame)
            out.append((box.x0 * w, box.y0 * h, box.x1 * w, box.y1 * h))
        return out


class TruthSet:
    """The ground truth of a dataset split, found by the names predictions give photos."""

    def __init__(
        self,
        truths: Sequence[GroundTruth],
        label: str,
        *,
        ranked: bool,
        photos: Path | None = None,
    ):
        self.truths = tuple(truths)
        self.label = label  # e.g. "gaicd at /data/GAICD (split test)"
        self.ranked = ranked  # whether the scores are ratings to rank crops by
        self.photos = photos  # the folder searched for photos not where the layout puts them
        self._finder = None
        self._index: dict[str, list[int]] = {}
        for number, truth in enumerate(self.truths):
            names = {alias for key in (truth.name, *truth.keys) for alias in _aliases(key)}
            for alias in names:
                self._index.setdefault(alias, []).append(number)

    def __len__(self) -> int:
        return len(self.truths)

    def __iter__(self) -> Iterator[GroundTruth]:
        return iter(self.truths)

    def find(self, image: str) -> GroundTruth | None:
        """The truth a prediction's ``image`` names; None when it names none, or several."""
        return self._match(image)[0]

    def why_not_found(self, image: str) -> str:
        """Why :meth:`find` found nothing for ``image``: one line for a report."""
        return self._match(image)[1]

    def photo_of(self, truth: GroundTruth) -> Path | None:
        """The truth's photo: where the layout puts it, else found under :attr:`photos`.

        Raises ``OSError`` when the folder cannot be read.
        """
        if truth.photo is not None and truth.photo.is_file():
            return truth.photo
        if self.photos is None:
            return None
        if self._finder is None:
            from cropper.data.datasets import PhotoFinder

            self._finder = PhotoFinder(self.photos)
        for key in truth.keys:
            found = self._finder.find(key)
            if found is not None:
                return found
        return None

    def _match(self, image: str) -> tuple[GroundTruth | None, str]:
        for alias in _aliases(image, photo_id=True):
            numbers = self._index.get(alias, [])
            if len(numbers) == 1:
                return self.truths[numbers[0]], ""
            if numbers:
                names = ", ".join(self.truths[n].name for n in numbers[:3])
                more = ", ..." if len(numbers) > 3 else ""
                return None, (
                    f"{image!r} names {len(numbers)} photos ({names}{more}): "
                    "name one by its full name"
                )
        example = self.truths[0].name if self.truths else "?"
        return None, f"{image!r} names no photo of the split (they are named like {example})"


def load_truth(
    dataset: str,
    root: str | os.PathLike,
    split: str | None = None,
    images: str | os.PathLike | None = None,
) -> TruthSet:
    """The ground truth of ``dataset`` (a :data:`cropper.data.datasets.DATASETS` key) at ``root``.

    GAICD, FCDB and SACD are read from their annotation files alone; their photos are
    looked up only when a photo's size is needed, in ``images`` (default: where the
    dataset's loader looks). ``jsonl`` and ``folder`` datasets come with their photos,
    so they are loaded whole. Annotations that cannot be read are skipped and reported
    in one warning; when none can be, :class:`~cropper.core.errors.ExemplarIndexError`.
    """
    from cropper.data.datasets import (
        dataset_label,
        photo_folder,
        read_annotations,
        warn_skipped,
    )
    from retrieval.exemplars import first_few

    folder = Path(root).expanduser()
    label = dataset_label(dataset, folder, split)
    try:
        if dataset in ("jsonl", "folder", "pro"):
            return _from_exemplars(dataset, root, split, images)
        annotations = read_annotations(dataset, root, split, images=images)
    except (RecursionError, OverflowError) as exc:
        # The loaders skip a damaged file or entry with its reason, these two included; a
        # loader that let one through still gets one line here, never a traceback.
        raise ExemplarIndexError(
            f"{label}: an annotation file is damaged ({_damage(exc)}); check the dataset's "
            "files (or download it again)"
        ) from None
    total = len(annotations.records) + len(annotations.skipped)
    if not annotations.records:
        detail = first_few([f"{kind}: {name}" for kind, name in annotations.skipped])
        raise ExemplarIndexError(
            f"{label}: no usable annotations"
            + (f" (all {total} skipped: {detail})" if total else " found")
        )
    unit = "annotations" if dataset == "sacd" else "photos"
    warn_skipped(label, annotations.skipped, total, unit)
    truths = [
        GroundTruth(
            name=record.name,
            keys=record.keys,
            crops=record.crops,
            scores=record.scores,
            long_side=record.long_side,
            photo=record.photo,
        )
        for record in annotations.records
    ]
    return TruthSet(
        truths,
        label,
        ranked=dataset in RANKED_DATASETS,
        photos=photo_folder(dataset, folder, images),
    )


def _damage(exc: RecursionError | OverflowError) -> str:
    if isinstance(exc, RecursionError):
        return "its JSON is nested too deeply to read"
    return "it holds a number too large for a pixel or a score"


def _from_exemplars(
    dataset: str, root: str | os.PathLike, split: str | None, images: str | os.PathLike | None
) -> TruthSet:
    from cropper.data.datasets import dataset_label, load_dataset

    exemplars = load_dataset(dataset, root, split, images=images)
    source = Path(root).expanduser()
    base = (source.parent if dataset == "jsonl" else source).resolve()
    truths = []
    for exemplar in exemplars:
        photo = Path(exemplar.image)
        w, h = exemplar.size
        keys = [photo.name]
        if photo.is_relative_to(base):  # as the JSONL (or the folder) names it
            keys.insert(0, photo.relative_to(base).as_posix())
        truths.append(
            GroundTruth(
                name=exemplar.image,
                keys=tuple(keys),
                crops=tuple((c.x0 * w, c.y0 * h, c.x1 * w, c.y1 * h) for c in exemplar.crops),
                scores=exemplar.scores,
                photo=photo,
                size=exemplar.size,
            )
        )
    ranked = any(truth.scores is not None for truth in truths)
    return TruthSet(truths, dataset_label(dataset, source, split), ranked=ranked)


def _aliases(name: str, *, photo_id: bool = False) -> list[str]:
    """The names ``name`` may match by, most exact first: itself, its file name, its stem.

    With ``photo_id``, last the leading Flickr photo id of a name like ``4910188666_04cf_b``.
    """
    path = PurePosixPath(name.strip().replace("\\", "/"))
    aliases = [path.as_posix(), path.name]
    stem = path.stem if path.suffix.lower() in _STRIPPED_SUFFIXES else path.name
    aliases.append(stem)
    if photo_id:
        match = _PHOTO_ID.fullmatch(stem)
        if match:
            aliases.append(match.group(1))
    return list(dict.fromkeys(a for a in aliases if a))
