"""Dataset loaders: the cropping benchmarks and a user's own crops, as exemplars.

Each loader reads a dataset's annotations, finds each photo, reads its size from
the header (EXIF orientation applied) and returns
:class:`~retrieval.exemplars.Exemplar` s with normalized crops, scores where the
dataset has them and subjects where it has them.

- ``gaicd``: the official layout (``images/{train,test}/<id>.jpg`` and
  ``annotations/{train,test}/<id>.txt``, lines ``y1 x1 y2 x2 MOS`` in pixels, y
  first, MOS -2 skipped), or the single-JSON form (``image_crop.json`` with
  ``split.json``, photos under ``images``, subfolders too). The JSON form's boxes
  are on the photos scaled to a 1024-pixel long side, so they are normalized
  against the photo scaled so (the same size for the dataset's own photos).
- ``fcdb``: ``cropping_training_set.json`` (train) and ``cropping_testing_set.json``
  (test), one ``[x, y, w, h]`` crop a photo on the photo at its url, no score; the
  photos in a local folder, found by Flickr photo id (``<id>.jpg`` or any name
  that starts with the id) or by the url's file name.
- ``sacd``: ``annotations/<name>_<k>.json`` (one subject each: ``mask_box``, a JSON
  string of ``[x, y, w, h]``; ``best_box``; ``crop_box``) with ``images/<name>.jpg``;
  ``test.json`` (``{"jsons": [...]}``) names the test split, ``train`` is the
  rest unless a ``train.json`` exists. One exemplar an annotation: the best crop
  first, scored 1.0, then the other crops, scored 0.5, so that picking crops by
  score puts the best first; each crop's subject is the mask box's centre (the
  masks themselves are not read).
- ``flms``: ``500_image_dataset.mat`` (read by :mod:`cropper.data.flms`: up to ten expert
  crops a photo, rows ``y1 x1 y2 x2`` in pixels, negative rows unused) with the photos in
  ``image/`` (default; ``images`` overrides it). One split, all 500 photos: ``test`` or
  none. The crops carry no score: every one is a ground truth.
- ``jsonl``: the user's JSONL (see :mod:`retrieval.exemplars`); root is the file.
- ``folder``: photos with a sidecar JSON each (``a.jpg`` + ``a.json``) holding a
  JSONL record without ``"image"``: ``{"crops": [[l, t, r, b], ...], "scores":
  [...], "subject": [x, y]}`` in pixels; photos without one are skipped.
- ``pro``: uncropped professional photos under root (subfolders too), after ProCrop:
  a professional's framing is itself a good crop, so each whole photo is its own
  first crop (``[0, 0, w, h]``), scored :data:`PRO_WHOLE_SCORE` (5.0, the top of
  the 1-5 MOS scale the free-form prompt shows). An optional sidecar (``a.json``
  beside ``a.jpg``, the ``folder`` format, every key optional) adds sub-crops after
  it, scored as given or :data:`PRO_SUBCROP_SCORE` (4.0) when it gives none, and a
  subject for every crop; without one the whole photo has no subject.

Missing or unreadable photos and malformed annotations are skipped and reported
in one warning; when none is usable, :class:`ExemplarIndexError`. Reading the
annotations (:func:`read_annotations`, or :func:`read_gaicd`, :func:`read_fcdb`,
:func:`read_sacd`) is apart from finding the photos (:class:`PhotoFinder`), so
annotations can be checked, and predictions evaluated, without them (:func:`read_flms`
too).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import reprlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cropper.core.boxes import Box, PixelBox, Size, xywh_to_xyxy, yxyx_to_xyxy
from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.core.images import PHOTO_SUFFIXES
from retrieval.exemplars import (
    PHOTO_ERRORS,
    Exemplar,
    Exemplars,
    Point,
    RecordError,
    first_few,
    parse_record,
    photo_size,
    read_jsonl,
)

log = logging.getLogger(__name__)

#: What a damaged annotation raises while it is read: bad values, a number too large for a
#: float (a 400-digit integer), JSON nested too deep. Each is that entry's or file's fault.
_BAD_DATA = (ValueError, OverflowError, RecursionError)

PathLike = str | os.PathLike

#: GAICD's single-JSON boxes are pixels of the photos scaled to this long side.
GAICD_LONG_SIDE = 1024
#: A GAICD crop with this MOS was not rated: skipped.
GAICD_UNRATED = -2.0
#: SACD's crops have no MOS: the best crop scores higher, so it comes first by score.
SACD_BEST_SCORE = 1.0
SACD_OTHER_SCORE = 0.5
#: A professional photo's whole frame is a top crop: the best MOS the free-form prompt shows.
PRO_WHOLE_SCORE = 5.0
#: Sub-crops of a professional photo given without scores rank below the whole photo.
PRO_SUBCROP_SCORE = 4.0
FCDB_FILES = {"train": "cropping_training_set.json", "test": "cropping_testing_set.json"}
#: Pixels a box may pass the photo's edge (annotation rounding) and be clamped, not refused.
_SLACK = 1.0

# Kinds of problems, each reported with a count and the first few names.
NO_PHOTO = "no photo found"
UNREADABLE = "unreadable photo"
MALFORMED = "malformed annotation"
NOT_FITTING = "annotation outside the photo"
NO_SIDECAR = "no sidecar JSON"


@dataclass(frozen=True)
class Record:
    """One photo's annotations before its photo is looked up.

    Boxes are pixel ``(left, top, right, bottom)`` and the subject a pixel
    ``(x, y)`` of the photo as displayed, or of it scaled to a long side of
    ``long_side`` when that is set.
    """

    name: str  # how reports name it: the photo or annotation file
    keys: tuple[str, ...]  # file names, stems or photo ids to find the photo by
    crops: tuple[PixelBox, ...]
    scores: tuple[float, ...] | None = None
    subject: Point | None = None  # one subject for every crop
    photo: Path | None = None  # where the layout puts the photo, tried first
    long_side: int | None = None


@dataclass
class Annotations:
    """A dataset's records, and the annotations that could not be read as ``(kind, name)``."""

    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- the public entry ------------------------------------------------------------


def load_dataset(
    name: str, root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> list[Exemplar]:
    """Load dataset ``name`` (a key of :data:`DATASETS`) from ``root``; ``split=None`` is all."""
    loader = DATASETS.get(name)
    if loader is None:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return loader(root, split, images=images)


def read_annotations(
    name: str, root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> Annotations:
    """The records of benchmark ``name`` (gaicd, fcdb, sacd or flms) without looking at any photo.

    ``images`` matters to SACD only, whose records name their photo's path. The
    ``jsonl``, ``folder`` and ``pro`` datasets have no annotations apart from their photos
    (their crops are checked against each photo as it is read): :func:`load_dataset`
    reads them.
    """
    readers: dict[str, Callable[[Path], Annotations]] = {
        "gaicd": lambda folder: read_gaicd(folder, split),
        "fcdb": lambda folder: read_fcdb(folder, split),
        "sacd": lambda folder: read_sacd(folder, split, images=photo_folder(name, folder, images)),
        "flms": lambda folder: read_flms(folder, split, images=photo_folder(name, folder, images)),
    }
    if name not in readers:
        if name in DATASETS:
            raise ConfigError(
                f"{name} has no annotations apart from its photos: read it with load_dataset"
            )
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return readers[name](_folder(root, name))


def photo_folder(name: str, root: PathLike, images: PathLike | None = None) -> Path:
    """Where dataset ``name``'s loader looks for photos: ``images`` if given, else its default.

    The default is ``root/images``; FCDB's is ``root`` itself when it has no ``images``;
    FLMS's is ``root/image``, as the official release has it.
    """
    if images is not None:
        return Path(images).expanduser()
    folder = Path(root).expanduser()
    if name == "fcdb" and not (folder / "images").is_dir():
        return folder
    if name == "flms":
        from cropper.data.flms import PHOTO_DIR

        return folder / PHOTO_DIR
    return folder / "images"


def _benchmark(name: str, doc: str, read: Any, expected: str, unit: str = "photos") -> Any:
    """The loader of benchmark ``name``: its annotations joined to its photos.

    ``read(folder, split, photos)`` gives the annotations; ``expected`` (with ``{photos}``)
    says where the photos were looked for, when none is found.
    """

    def load(
        root: PathLike, split: str | None = None, *, images: PathLike | None = None
    ) -> list[Exemplar]:
        folder = _folder(root, name)
        photos = photo_folder(name, folder, images)
        return _exemplars(
            read(folder, split, photos),
            PhotoFinder(photos),
            dataset_label(name, folder, split),
            expected.format(photos=photos),
            unit=unit,
        )

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = doc
    return load


load_gaicd = _benchmark(
    "gaicd",
    "GAICD in either form; photos in ``images`` (default ``root/images``, subfolders too).",
    lambda folder, split, photos: read_gaicd(folder, split),
    "<id>.jpg photos under {photos} (subfolders too)",
)
load_fcdb = _benchmark(
    "fcdb",
    "FCDB; photos in ``images`` (default ``root/images``, else ``root``), by id or url name.",
    lambda folder, split, photos: read_fcdb(folder, split),
    "photos under {photos} named by Flickr id (<id>.jpg, <id>_...) or by the url's file name",
)
load_sacd = _benchmark(
    "sacd",
    "SACD; photos in ``images`` (default ``root/images``) as ``<name>.jpg``.",
    lambda folder, split, photos: read_sacd(folder, split, images=photos),
    "<name>.jpg photos under {photos} for annotations/<name>_<k>.json",
    unit="annotations",
)

load_flms = _benchmark(
    "flms",
    "FLMS; photos in ``images`` (default ``root/image``) as the .mat names them.",
    lambda folder, split, photos: read_flms(folder, split, images=photos),
    "the photos the .mat names, under {photos}",
)


def load_jsonl(
    root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> list[Exemplar]:
    """The user's JSONL (``root`` is the file); see :func:`retrieval.exemplars.read_jsonl`."""
    _no_split_or_images("jsonl", split, images, "photo paths are relative to the JSONL's folder")
    return read_jsonl(Path(root).expanduser())


def load_folder(
    root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> list[Exemplar]:
    """Photos under ``root`` (subfolders too) with a sidecar JSON each; others are skipped."""
    _no_split_or_images("folder", split, images, "the photos are the ones beside their sidecars")
    return _photos_with_sidecars(
        "folder",
        root,
        'photos with a sidecar JSON each (a.jpg + a.json: {"crops": [[l, t, r, b], ...]})',
        lambda photo, size, record: parse_record({**record, "image": photo.name}, photo.parent),
        needs_sidecar=True,
    )


def load_pro(
    root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> list[Exemplar]:
    """Uncropped professional photos under ``root`` (subfolders too), each its own top crop.

    Every photo's first crop is the whole photo, scored :data:`PRO_WHOLE_SCORE`; an
    optional sidecar adds sub-crops and a subject (see the module docstring).
    """
    _no_split_or_images("pro", split, images, "the photos are the ones under root")
    return _photos_with_sidecars(
        "pro",
        root,
        "uncropped photos, each with an optional sidecar of sub-crops "
        '(a.jpg + a.json: {"crops": [[l, t, r, b], ...], "scores": [...], "subject": [x, y]})',
        _pro_exemplar,
        needs_sidecar=False,
    )


def _photos_with_sidecars(
    dataset: str,
    root: PathLike,
    expected: str,
    exemplar_of: Callable[[Path, Size, dict[str, Any]], Exemplar],
    *,
    needs_sidecar: bool,
) -> list[Exemplar]:
    """The photos under ``root`` (subfolders too), each made an exemplar with its sidecar.

    A photo that cannot be read, a sidecar that is missing (when ``needs_sidecar``) or
    damaged, are skipped and reported in one warning.
    """
    folder = _folder(root, dataset)
    label = dataset_label(dataset, folder, None)
    photos = sorted(_photos_under(folder))
    if not photos:
        raise ExemplarIndexError(f"{label}: no photos found; expected {expected}")
    exemplars: list[Exemplar] = []
    skipped = _Skipped()
    for photo in photos:
        name = photo.relative_to(folder).as_posix()
        sidecar = photo.with_suffix(".json")
        if needs_sidecar and not sidecar.is_file():
            skipped.add(NO_SIDECAR, name)
            continue
        try:
            size = photo_size(photo)  # tells an unreadable photo from a bad sidecar
        except PHOTO_ERRORS as exc:
            skipped.add(UNREADABLE, f"{name} ({exc})")
            continue
        try:
            record = _read_sidecar(sidecar) if sidecar.is_file() else {}
            exemplars.append(exemplar_of(photo, size, record))
        except (OSError, UnicodeDecodeError, *_BAD_DATA) as exc:  # RecordError is a ValueError
            skipped.add(MALFORMED, f"{sidecar.relative_to(folder).as_posix()} ({exc})")
    return _finish(exemplars, skipped, len(photos), label, expected, "photos")


def _read_sidecar(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    return record


def _pro_exemplar(photo: Path, size: Size, record: dict[str, Any]) -> Exemplar:
    """The whole photo first, then the sidecar's sub-crops, through the sidecar parser."""
    sub = record.get("crops", [])
    if not isinstance(sub, list):
        raise RecordError('"crops" must be a list of [left, top, right, bottom] pixels')
    scores = record.get("scores")
    if scores is None:
        scores = [PRO_SUBCROP_SCORE] * len(sub)
    elif not isinstance(scores, list) or len(scores) != len(sub):
        raise RecordError(f'"scores" must be a list of one number per crop ({len(sub)} crops)')
    whole = [0, 0, size[0], size[1]]
    kept = [(crop, score) for crop, score in zip(sub, scores, strict=True) if crop != whole]
    return parse_record(
        {
            **record,
            "image": photo.name,
            "crops": [whole, *(crop for crop, _ in kept)],
            "scores": [PRO_WHOLE_SCORE, *(score for _, score in kept)],
        },
        photo.parent,
    )


#: Every loader by name; each is called as ``loader(root, split, images=...)``.
DATASETS: dict[str, Callable[..., list[Exemplar]]] = {
    "gaicd": load_gaicd,
    "fcdb": load_fcdb,
    "sacd": load_sacd,
    "flms": load_flms,
    "jsonl": load_jsonl,
    "folder": load_folder,
    "pro": load_pro,
}


# -- reading annotations (no photos needed) ----------------------------------------


def read_gaicd(root: PathLike, split: str | None = None) -> Annotations:
    """GAICD's records: the official layout if ``annotations/`` exists, else the JSON form."""
    folder = Path(root).expanduser()
    if (folder / "annotations").is_dir():
        return _read_gaicd_official(folder, split)
    if (folder / "image_crop.json").is_file():
        return _read_gaicd_json(folder, split)
    raise ExemplarIndexError(
        f"gaicd at {folder}: found neither annotations/{{train,test}}/<id>.txt (the official "
        "layout) nor image_crop.json (with split.json): point root at the GAICD folder"
    )


def read_fcdb(root: PathLike, split: str | None = None) -> Annotations:
    """FCDB's records from its training and testing JSON files."""
    folder = Path(root).expanduser()
    _check_split("fcdb", folder, split, list(FCDB_FILES))
    files = [folder / FCDB_FILES[split]] if split else [folder / f for f in FCDB_FILES.values()]
    present = [f for f in files if f.is_file()]
    if not present:
        raise ExemplarIndexError(
            f"fcdb at {folder}: no {' or '.join(f.name for f in files)}: "
            "point root at the folder with FCDB's JSON files"
        )
    out = Annotations([])
    for path in present:
        entries = _read_json(path, "fcdb")
        if not isinstance(entries, list):
            raise ExemplarIndexError(f"{path}: expected a JSON list of FCDB entries")
        for number, entry in enumerate(entries):
            try:
                out.records.append(_fcdb_record(entry))
            except _BAD_DATA as exc:
                out.skipped.append((MALFORMED, f"{path.name} entry {number} ({exc})"))
    return out


def read_sacd(
    root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> Annotations:
    """SACD's records, one an annotation file; photos expected as ``images/<name>.jpg``."""
    folder = Path(root).expanduser()
    annotations = folder / "annotations"
    if not annotations.is_dir():
        raise ExemplarIndexError(
            f"sacd at {folder}: no annotations/ folder: expected annotations/<name>_<k>.json, "
            "images/<name>.jpg and test.json"
        )
    photos = Path(images).expanduser() if images is not None else folder / "images"
    every = [p.relative_to(folder).as_posix() for p in sorted(annotations.glob("*.json"))]
    listed = _sacd_splits(folder)
    _check_split("sacd", folder, split, sorted({*listed, "train"}))
    out = Annotations([])
    if split is None:
        chosen = every
    elif split in listed:
        chosen = listed[split]
    else:  # train: whatever no other split lists
        taken = {name for names in listed.values() for name in names}
        chosen = [name for name in every if name not in taken]
    for name in chosen:
        try:
            out.records.append(_sacd_record(folder / name, name, photos))
        except FileNotFoundError:
            out.skipped.append((MALFORMED, f"{name} (listed in {split}.json, no such file)"))
        except (OSError, UnicodeDecodeError, *_BAD_DATA) as exc:
            out.skipped.append((MALFORMED, f"{name} ({exc})"))
    return out


def read_flms(
    root: PathLike, split: str | None = None, *, images: PathLike | None = None
) -> Annotations:
    """FLMS's records from ``500_image_dataset.mat``: every expert crop a ground truth.

    FLMS is one split of 500 photos, so ``split`` is ``test`` or ``None``; photos are
    expected as ``image/<name>`` (or under ``images``).
    """
    from cropper.data.flms import MAT_FILE, PHOTO_DIR, read_flms_mat

    folder = Path(root).expanduser()
    _check_split("flms", folder, split, ["test"])
    photos = Path(images).expanduser() if images is not None else folder / PHOTO_DIR
    out = Annotations([])
    for entry in read_flms_mat(folder / MAT_FILE):
        where = f"{MAT_FILE} record {entry.number}" + (f" ({entry.name})" if entry.name else "")
        try:
            if entry.problem:
                raise ValueError(entry.problem)
            crops = tuple(_pixel_box(row) for row in entry.rows)
        except _BAD_DATA as exc:
            out.skipped.append((MALFORMED, f"{where}: {exc}"))
            continue
        name = str(entry.name)
        out.records.append(Record(name, (name,), crops, photo=photos / name))
    return out


def _read_gaicd_official(folder: Path, split: str | None) -> Annotations:
    annotations = folder / "annotations"
    splits = sorted(p.name for p in annotations.iterdir() if p.is_dir())
    _check_split("gaicd", folder, split, splits)
    files = sorted((annotations / split).glob("*.txt") if split else annotations.rglob("*.txt"))
    out = Annotations([])
    for path in files:
        name = path.relative_to(annotations).with_suffix(".jpg").as_posix()
        try:
            crops, scores = _gaicd_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, *_BAD_DATA) as exc:
            out.skipped.append((MALFORMED, f"{path.relative_to(folder).as_posix()} ({exc})"))
            continue
        out.records.append(
            Record(
                name=name,
                keys=(f"{path.stem}.jpg",),
                crops=crops,
                scores=scores,
                photo=folder / "images" / name,
            )
        )
    return out


def _gaicd_lines(text: str) -> tuple[tuple[PixelBox, ...], tuple[float, ...]]:
    """Crops and MOS of one official annotation file: ``y1 x1 y2 x2 MOS`` a line."""
    crops: list[PixelBox] = []
    scores: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields")
            *yxyx, mos = (_finite(float(v)) for v in fields)
            if mos == GAICD_UNRATED:
                continue
            crops.append(_pixel_box(yxyx_to_xyxy(yxyx)))
            scores.append(mos)
        except _BAD_DATA as exc:
            raise ValueError(f"line {number}: {exc}; expected y1 x1 y2 x2 MOS") from None
    if not crops:
        raise ValueError("no rated crop")
    return tuple(crops), tuple(scores)


def _read_gaicd_json(folder: Path, split: str | None) -> Annotations:
    data = _read_json(folder / "image_crop.json", "gaicd")
    if not isinstance(data, dict):
        raise ExemplarIndexError(
            f"{folder / 'image_crop.json'}: expected an object of photo name -> bbox and score"
        )
    split_file = folder / "split.json"
    if split is None:
        names = list(data)
    elif not split_file.is_file():
        raise ConfigError(
            f"gaicd at {folder} has no split.json, so no {split!r} split: leave split unset"
        )
    else:
        splits = _read_json(split_file, "gaicd")
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise ExemplarIndexError(f"{split_file}: expected an object of split -> photo names")
        _check_split("gaicd", folder, split, sorted(splits))
        names = [str(n) for n in splits[split]]
    out = Annotations([])
    for name in names:
        try:
            if name not in data:
                raise ValueError("not in image_crop.json")
            crops, scores = _gaicd_entry(data[name])
        except _BAD_DATA as exc:
            out.skipped.append((MALFORMED, f"{name} ({exc})"))
            continue
        record = Record(name, (name,), crops, scores, long_side=GAICD_LONG_SIDE)
        out.records.append(record)
    return out


def _gaicd_entry(entry: Any) -> tuple[tuple[PixelBox, ...], tuple[float, ...]]:
    if not isinstance(entry, dict):
        raise ValueError('not an object with "bbox" and "score"')
    boxes, scores = entry.get("bbox"), entry.get("score")
    if not isinstance(boxes, list) or not isinstance(scores, list) or len(boxes) != len(scores):
        raise ValueError('"bbox" and "score" must be lists of the same length')
    kept = [
        (_pixel_box(box), _finite(float(mos)))
        for box, mos in zip(boxes, scores, strict=True)
        if mos != GAICD_UNRATED
    ]
    if not kept:
        raise ValueError("no rated crop")
    return tuple(b for b, _ in kept), tuple(s for _, s in kept)


def _fcdb_record(entry: Any) -> Record:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    crop = entry.get("crop")
    if not _numbers(crop, 4):
        raise ValueError(f'"crop" {crop!r} is not [x, y, w, h]')
    x, y, w, h = crop
    photo_id = entry.get("flickr_photo_id")
    url = entry.get("url")
    keys = []
    if isinstance(photo_id, (int, str)) and not isinstance(photo_id, bool) and str(photo_id):
        keys.append(str(photo_id))
    if isinstance(url, str) and url.rstrip("/"):
        keys.append(url.rstrip("/").rsplit("/", 1)[-1])
    if not keys:
        raise ValueError('neither "flickr_photo_id" nor "url"')
    return Record(name=keys[-1], keys=tuple(keys), crops=(_pixel_box(xywh_to_xyxy((x, y, w, h))),))


def _sacd_splits(folder: Path) -> dict[str, list[str]]:
    """``<split>.json`` files at the root that list annotation files under ``"jsons"``."""
    splits: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.json")):
        data = _read_json(path, "sacd")
        if isinstance(data, dict) and "jsons" in data:
            names = data["jsons"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ExemplarIndexError(f'{path}: "jsons" must be a list of annotation paths')
            splits[path.stem] = [Path(n).as_posix().removeprefix("./") for n in names]
    return splits


def _sacd_record(path: Path, name: str, photos: Path) -> Record:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    best = _box_list(obj.get("best_box"), "best_box")
    others = _box_list(obj.get("crop_box"), "crop_box")
    crops: list[PixelBox] = []
    scores: list[float] = []
    for boxes, score in ((best, SACD_BEST_SCORE), (others, SACD_OTHER_SCORE)):
        for box in boxes:
            if box not in crops:  # crop_box often repeats the best box
                crops.append(box)
                scores.append(score)
    if not crops:
        raise ValueError("no best_box or crop_box")
    raw = obj.get("mask_box")
    try:  # a JSON string in SACD's files; a plain list accepted too
        mask = json.loads(raw) if isinstance(raw, str) else raw
    except _BAD_DATA:
        mask = None
    if not _numbers(mask, 4) or mask[2] <= 0 or mask[3] <= 0:
        raise ValueError(f"mask_box {raw!r} is not [x, y, w, h] of the subject")
    stem = re.sub(r"_\d+$", "", path.stem)  # <name>_<k>.json annotates <name>.jpg
    return Record(
        name=name,
        keys=(f"{stem}.jpg",),
        crops=tuple(crops),
        scores=tuple(scores),
        subject=(mask[0] + mask[2] / 2, mask[1] + mask[3] / 2),
        photo=photos / f"{stem}.jpg",
    )


def _box_list(value: Any, key: str) -> list[PixelBox]:
    if value is None:
        return []
    if _numbers(value, 4):  # one box, not wrapped in a list
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list of [x1, y1, x2, y2]")
    return [_pixel_box(box) for box in value]


def _pixel_box(values: Any) -> PixelBox:
    try:  # a plain unpack: this runs for every one of GAICD's ~100k crops
        if not isinstance(values, (list, tuple)):
            raise TypeError
        left, top, right, bottom = (float(v) for v in values)
    except OverflowError:
        raise ValueError(f"box {reprlib.repr(values)} holds a number too large") from None
    except (TypeError, ValueError):
        raise ValueError(f"box {reprlib.repr(values)} is not four numbers") from None
    # Comparisons are False for NaN, so NaN fails here too.
    if not (0 <= left < right < math.inf and 0 <= top < bottom < math.inf):
        raise ValueError(f"box {list(values)} is empty, negative or not finite")
    return left, top, right, bottom


# -- finding photos and making exemplars -----------------------------------------------


class PhotoFinder:
    """Photos under a folder (subfolders too) by file name, stem or leading photo id.

    The folder is walked once, on the first :meth:`find`; a folder that does not exist
    holds no photos.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._maps: tuple[dict[str, Path], dict[str, Path], dict[str, Path]] | None = None

    def find(self, key: str) -> Path | None:
        """The photo named ``key``, with stem ``key``, or whose name starts with photo id ``key``.

        ``4910188666`` finds ``4910188666_04cf9f487d_b.jpg``; None when nothing matches.
        """
        by_name, by_stem, by_id = self._index()
        suffix = Path(key).suffix.lower()
        stem = Path(key).stem if suffix in PHOTO_SUFFIXES else key
        found = by_name.get(key) or by_stem.get(stem)
        return found or (by_id.get(key) if key.isdigit() else None)

    def _index(self) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
        if self._maps is None:  # built on first use: most layouts name the photo's path
            by_name: dict[str, Path] = {}
            by_stem: dict[str, Path] = {}
            by_id: dict[str, Path] = {}
            for path in sorted(_photos_under(self.folder)):
                by_name.setdefault(path.name, path)
                by_stem.setdefault(path.stem, path)
                leading = re.match(r"\d+(?!\d)", path.stem)  # 4910188666_04cf9f487d_b
                if leading:
                    by_id.setdefault(leading.group(), path)
            self._maps = by_name, by_stem, by_id
        return self._maps


def _photos_under(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            if Path(filename).suffix.lower() in PHOTO_SUFFIXES:
                yield Path(dirpath, filename)


class _Unusable(ValueError):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


class _Skipped:
    """Problems grouped by kind, reported as one line: count and first few names each."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        self.groups: dict[str, list[str]] = {}
        for kind, name in items:
            self.add(kind, name)

    def add(self, kind: str, name: str) -> None:
        self.groups.setdefault(kind, []).append(name)

    def __len__(self) -> int:
        return sum(len(names) for names in self.groups.values())

    def __str__(self) -> str:
        return " | ".join(
            f"{kind} ({len(names)}): {first_few(names)}" for kind, names in self.groups.items()
        )


def _exemplars(
    annotations: Annotations,
    finder: PhotoFinder,
    label: str,
    expected: str,
    unit: str = "photos",
) -> list[Exemplar]:
    skipped = _Skipped(annotations.skipped)
    exemplars: list[Exemplar] = []
    for record in annotations.records:
        try:
            photo = _locate(record, finder)
            if photo is None:
                skipped.add(NO_PHOTO, record.name)
            else:
                exemplars.append(_exemplar(record, photo))
        except _Unusable as exc:
            skipped.add(exc.kind, f"{record.name} ({exc})")
    total = len(annotations.records) + len(annotations.skipped)
    return _finish(exemplars, skipped, total, label, expected, unit)


def _locate(record: Record, finder: PhotoFinder) -> Path | None:
    try:
        if record.photo is not None and record.photo.is_file():
            return record.photo
        for key in record.keys:
            found = finder.find(key)
            if found is not None:
                return found
    except OSError as exc:
        raise _Unusable(UNREADABLE, str(exc)) from None
    return None


def _exemplar(record: Record, photo: Path) -> Exemplar:
    try:
        size = photo_size(photo)
    except PHOTO_ERRORS as exc:
        raise _Unusable(UNREADABLE, str(exc)) from None
    frame = scaled_size(size, record.long_side) if record.long_side else size
    try:
        crops = tuple(normalized_box(box, frame) for box in record.crops)
    except ValueError as exc:
        raise _Unusable(NOT_FITTING, str(exc)) from None
    subject = None
    if record.subject is not None:
        x, y = (_within(v, n) for v, n in zip(record.subject, frame, strict=True))
        if x is None or y is None:
            raise _Unusable(NOT_FITTING, f"subject {list(record.subject)} on {_wxh(frame)}")
        subject = (x / frame[0], y / frame[1])
    return Exemplar(
        image=str(photo.resolve()),
        size=size,
        crops=crops,
        scores=record.scores,
        subjects=(subject,) * len(crops) if subject is not None else None,
    )


def scaled_size(size: Size, long_side: int) -> Size:
    """The photo's size scaled to ``long_side``: the frame the dataset's pixels refer to."""
    scale = long_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def normalized_box(box: PixelBox, frame: Size) -> Box:
    """A pixel box of a ``frame``-sized photo, normalized; within a pixel of the edge is clamped.

    Raises ``ValueError`` naming the box and the frame when it does not fit.
    """
    w, h = frame
    edges = (_within(box[0], w), _within(box[1], h), _within(box[2], w), _within(box[3], h))
    if any(e is None for e in edges) or edges[0] >= edges[2] or edges[1] >= edges[3]:  # type: ignore[operator]
        raise ValueError(f"crop {[round(v, 2) for v in box]} on {_wxh(frame)}")
    left, top, right, bottom = edges
    return Box(left / w, top / h, right / w, bottom / h)  # type: ignore[operator]


def _within(value: float, extent: int) -> float | None:
    """``value`` clamped to ``[0, extent]`` if within the slack of it, else None."""
    if -_SLACK <= value <= extent + _SLACK:
        return min(max(value, 0.0), float(extent))
    return None


def _wxh(frame: Size) -> str:
    return f"the {frame[0]}x{frame[1]} photo"


def _finish(
    exemplars: list[Exemplar],
    skipped: _Skipped,
    total: int,
    label: str,
    expected: str,
    unit: str,
) -> list[Exemplar]:
    if not total:
        raise ExemplarIndexError(f"{label}: no annotations found; expected {expected}")
    if not exemplars:
        raise ExemplarIndexError(
            f"{label}: none of the {total} {unit} could be used; expected {expected} | {skipped}"
        )
    warn_skipped(label, skipped, total, unit)
    return Exemplars(exemplars, skipped=len(skipped))


def warn_skipped(
    label: str, skipped: Iterable[tuple[str, str]], total: int, unit: str = "photos"
) -> None:
    """One warning for everything skipped, as ``(kind, name)``: a count and the first few."""
    problems = skipped if isinstance(skipped, _Skipped) else _Skipped(skipped)
    if problems:
        log.warning(
            "%s: skipped %s of %s %s | %s", label, f"{len(problems)}", f"{total}", unit, problems
        )


# -- small helpers -------------------------------------------------------------------


def _folder(root: PathLike, dataset: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ExemplarIndexError(
            f"{dataset}: {folder} is not a folder: point root at the dataset's folder"
        )
    return folder


def dataset_label(dataset: str, root: Path, split: str | None) -> str:
    """How reports name a dataset: ``gaicd at /data/GAICD (split test)``."""
    return f"{dataset} at {root}" + (f" (split {split})" if split else "")


def _check_split(dataset: str, root: Path, split: str | None, valid: list[str]) -> None:
    if split is None or split in valid:
        return
    if not valid:
        raise ConfigError(f"{dataset} at {root} has no splits, so no {split!r}: leave split unset")
    raise ConfigError(
        f"{dataset} at {root} has no split {split!r}: use one of {', '.join(valid)} "
        "(or none for all)"
    )


def _no_split_or_images(dataset: str, split: str | None, images: Any, why: str) -> None:
    if split is not None:
        raise ConfigError(f"{dataset} has no splits, so no {split!r}: leave split unset")
    if images is not None:
        raise ConfigError(f"{dataset} takes no images folder ({why}): leave images unset")


def _read_json(path: Path, dataset: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *_BAD_DATA) as exc:
        raise ExemplarIndexError(f"{dataset}: cannot read {path} ({exc})") from None


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


def _numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == count
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )
