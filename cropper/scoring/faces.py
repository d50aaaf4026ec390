"""Faces in a photo, found by OpenCV's Haar cascade: what ``protect="faces"`` keeps whole.

:func:`detect_faces` runs the cascade whose weights ship inside ``opencv-python-headless``
(``cv2.data.haarcascades``), so nothing is downloaded at run time; it sits behind the extra
``cropper[faces]``. OpenCV 4.x is needed: the 5.x wheels on PyPI ship no cascades.

Why ``haarcascade_frontalface_alt2`` and these thresholds (``python benchmarks/faces.py
--compare`` measures the cascades: 33 photos with no face, from scikit-image, cropper's
synthetic ones and three GAICD photos, each at 512, 768 and 1024 px and mirrored, 198 runs;
and the 100 LFW faces that scikit-image ships):

- ``alt2`` found no false face in those runs and 98 of the 100 LFW faces. ``default`` found
  the same 98, but 24 false faces (gravel, a cell, a retina, coffee, a cat), and a second
  "face" on the astronaut's suit at 768 and 1024 px. ``alt`` did as well as ``alt2``, a
  little slower; ``alt_tree`` found only 57 of the faces.
- No profile cascade: it would find faces seen side-on (the cameraman of
  ``skimage.data.camera()``), but two more passes (one mirrored) cost about 0.55 s each at
  1024 px, and its boxes would have to be merged with the frontal ones. Faces seen
  side-on are not protected.
- :data:`MIN_NEIGHBORS`: a face must be found by at least 5 overlapping windows (the usual
  value). Asking for one, a like survey (up to 1536 px) gave 144 false faces, none with
  over 6 windows; LFW faces of 32 px or more get a median of 13 to 48, and 94 to 98 of the
  100 get 5 or more.
- :data:`MIN_FACE`: faces smaller than 3% of the photo's shorter side are not looked for.
  Such faces are passers-by, and a crowd of them would leave no crop that cuts none; the
  cascade could not see most of them anyway (its 20 px window is 2% of the long side at
  1024 px); and the smallest windows are the most numerous, so the slowest and the likeliest
  to see a face in texture. It also makes the answer nearly the same at any resolution.
- No histogram equalization: in a like survey it added four false faces and found no more.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, MissingDependencyError

#: The cascade: one of OpenCV's frontal face cascades (see the module's docstring for why).
CASCADE = "haarcascade_frontalface_alt2.xml"

#: Detection runs on a grey copy whose longer side is at most this many pixels.
MAX_SIDE = 1024

#: The smallest face looked for, as a fraction of the photo's shorter side.
MIN_FACE = 0.03

#: Overlapping detector windows needed to call a place a face (OpenCV's ``minNeighbors``).
MIN_NEIGHBORS = 5

#: Each scale of the search is this much larger than the one before (OpenCV's usual value).
SCALE_FACTOR = 1.1

#: A face that lies over half inside a larger face is a second find of the same face.
NESTED = 0.5

_INSTALL_PURPOSE = 'protect="faces"'
_local = threading.local()  # one cascade a thread: a CascadeClassifier is not thread-safe


@dataclass(frozen=True, slots=True)
class Face:
    """A face found in a photo.

    ``box`` is normalized in the photo as given (pass the EXIF-corrected photo, as
    :func:`cropper.core.images.load_image` returns it). ``neighbors`` is the detector's
    confidence: how many overlapping windows found this face (at least
    :data:`MIN_NEIGHBORS`). Real faces usually get 10 to 50, and more the larger they are;
    false ones seldom over 6.
    """

    box: Box
    neighbors: int

    def __str__(self) -> str:
        return f"{self.box} ({self.neighbors} windows)"


def detect_faces(
    image: Image.Image,
    *,
    max_side: int = MAX_SIDE,
    min_face: float = MIN_FACE,
    min_neighbors: int = MIN_NEIGHBORS,
) -> list[Face]:
    """The frontal faces in ``image``, largest first.

    Runs on a grey copy whose longer side is at most ``max_side`` pixels (a 12-megapixel
    photo takes a few tenths of a second). No window smaller than ``min_face`` of the
    shorter side is tried, so faces under it are not found (one up to about a fifth smaller
    may still be, in a box larger than the face). ``min_neighbors``: the windows needed to
    call a place a face. A face found again inside a larger one is dropped. No face: ``[]``.

    Raises:
        MissingDependencyError: OpenCV is not installed (``pip install 'cropper[faces]'``).
        ConfigError: a bad ``max_side``, ``min_face`` or ``min_neighbors``.
    """
    _check_settings(max_side, min_face, min_neighbors)
    cascade = _cascade()
    grey = _grey(image, max_side)
    w, h = grey.size
    window = cascade.getOriginalWindowSize()
    smallest = max(window[0], window[1], math.ceil(min_face * min(w, h)))
    if smallest > min(w, h):
        return []
    rects, counts = cascade.detectMultiScale2(
        np.asarray(grey),
        scaleFactor=SCALE_FACTOR,
        minNeighbors=min_neighbors,
        minSize=(smallest, smallest),
    )
    found = [
        Face(_to_box(rect, (w, h)), int(count))
        for rect, count in zip(np.reshape(rects, (-1, 4)), np.ravel(counts), strict=True)
    ]
    found.sort(key=lambda f: (-f.box.area, -f.neighbors, f.box.y0, f.box.x0))
    return _drop_nested(found)


def face_boxes(faces: list[Face] | tuple[Face, ...]) -> np.ndarray:
    """The faces' boxes as an ``(N, 4)`` float array of normalized ``x0, y0, x1, y1``."""
    return np.array([f.box.as_array() for f in faces], dtype=np.float64).reshape(-1, 4)


def _check_settings(max_side: Any, min_face: Any, min_neighbors: Any) -> None:
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 64:
        raise ConfigError(f"max_side must be a whole number of pixels >= 64, got {max_side!r}")
    if (
        isinstance(min_face, bool)
        or not isinstance(min_face, (int, float))
        or not 0 <= min_face < 1
    ):
        raise ConfigError(
            f"min_face is a fraction of the photo's shorter side in [0, 1), got {min_face!r}"
        )
    if isinstance(min_neighbors, bool) or not isinstance(min_neighbors, int) or min_neighbors < 1:
        raise ConfigError(f"min_neighbors must be a whole number >= 1, got {min_neighbors!r}")


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(
            "opencv-python-headless", extra="faces", purpose=_INSTALL_PURPOSE
        ) from None
    return cv2


def _cascade() -> Any:
    """The cascade of the calling thread, loaded once from the XML that ships with OpenCV."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        cv2 = _import_cv2()
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        loader = getattr(cv2, "CascadeClassifier", None)
        if folder is None or loader is None:  # OpenCV 5 dropped both
            raise ConfigError(
                f"{_INSTALL_PURPOSE} needs OpenCV 4, which ships the face cascade; found "
                f"{getattr(cv2, '__version__', 'another version')}: run pip install "
                "'cropper[faces]'"
            )
        cascade = loader(str(Path(folder) / CASCADE))
        if cascade.empty():
            raise ConfigError(
                f"{_INSTALL_PURPOSE} needs OpenCV's {CASCADE}, not found in {folder}: run "
                "pip install --force-reinstall 'cropper[faces]'"
            )
        _local.cascade = cascade
    return cascade


def _grey(image: Image.Image, max_side: int) -> Image.Image:
    """A grey copy of ``image`` no larger than ``max_side`` on its longer side."""
    grey = image if image.mode == "L" else image.convert("L")
    w, h = grey.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    return grey


def _to_box(rect: np.ndarray, size: tuple[int, int]) -> Box:
    x, y, w, h = (int(v) for v in rect)
    left, top = max(0, x), max(0, y)
    right, bottom = min(size[0], x + w), min(size[1], y + h)
    return Box.from_pixels((left, top, right, bottom), size)


def _drop_nested(faces: list[Face]) -> list[Face]:
    """Keep each face (largest first) unless over :data:`NESTED` of it lies in a kept one."""
    kept: list[Face] = []
    for face in faces:
        b = face.box
        inside = (
            max(0.0, min(b.x1, k.box.x1) - max(b.x0, k.box.x0))
            * max(0.0, min(b.y1, k.box.y1) - max(b.y0, k.box.y0))
            for k in kept
        )
        if all(share <= NESTED * b.area for share in inside):
            kept.append(face)
    return kept
