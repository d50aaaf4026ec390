"""FLMS's official annotation file, ``500_image_dataset.mat``, read with scipy.

FLMS (Fang et al., 2014) is 500 photos (``image/<name>.jpg``), each cropped by up to ten
experts. The ``.mat`` holds ``img_gt``, a struct array of shape (500, 1): record ``i`` has
the photo's file name (``img_gt[i, 0][0][0]``) and its crops (``img_gt[i, 0][1]``), one
row a crop as ``y1 x1 y2 x2`` in pixels of the photo (y first). A row holding a negative
value is unused (the file pads with ``-1``) and is dropped, as the public reference code
(CACNet's evaluation) drops it.

This module reads the file alone; :mod:`cropper.data.datasets` makes records of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropper.core.errors import ExemplarIndexError

#: The official annotation file, and the folder of photos beside it.
MAT_FILE = "500_image_dataset.mat"
PHOTO_DIR = "image"


@dataclass(frozen=True)
class FlmsEntry:
    """One record of the file: the photo's name and its used crop rows as ``x1 y1 x2 y2``."""

    number: int  # the record's row in img_gt, for messages
    name: str | None  # None when the record names no photo
    rows: tuple[tuple[float, float, float, float], ...]  # unused rows dropped
    problem: str = ""  # why the record cannot be used, when it cannot


def read_flms_mat(path: Path) -> list[FlmsEntry]:
    """Every record of ``path`` (an FLMS ``.mat``), in file order.

    A file that is not such a ``.mat`` raises :class:`ExemplarIndexError` in one line; a
    record that cannot be read comes back with its ``problem``, so the others are used.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(str(path))
    except FileNotFoundError:
        raise ExemplarIndexError(
            f"flms: no {path}: point root at the FLMS folder holding {MAT_FILE} and {PHOTO_DIR}/"
        ) from None
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as exc:
        raise ExemplarIndexError(
            f"flms: cannot read {path} ({exc}): expected the official {MAT_FILE}"
        ) from None
    table = mat.get("img_gt")
    if not isinstance(table, np.ndarray) or table.ndim != 2 or table.dtype.names is None:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise ExemplarIndexError(
            f"flms: {path} holds no img_gt struct array (it holds {found}): expected the "
            f"official {MAT_FILE}"
        )
    return [_entry(number, table[number, 0]) for number in range(table.shape[0])]


def _entry(number: int, record: Any) -> FlmsEntry:
    try:
        name = _name(record[0])
    except (IndexError, TypeError, ValueError) as exc:
        return FlmsEntry(number, None, (), f"no photo name ({exc})")
    try:
        crops = np.asarray(record[1], dtype=np.float64)
    except (IndexError, TypeError, ValueError):
        return FlmsEntry(number, name, (), "its crops are not a table of numbers")
    if crops.size == 0:
        return FlmsEntry(number, name, (), "no crop")
    if crops.ndim != 2 or crops.shape[1] != 4:
        return FlmsEntry(number, name, (), f"crops of shape {crops.shape}, not rows of y1 x1 y2 x2")
    used = crops[~(crops < 0).any(axis=1)]
    rows = tuple((x1, y1, x2, y2) for y1, x1, y2, x2 in used.tolist())
    return FlmsEntry(number, name, rows, "" if rows else "every crop row is unused (negative)")


def _name(value: Any) -> str:
    """The photo's name: scipy gives a 1-element array of str (a MATLAB char array)."""
    array = np.asarray(value)
    if array.size != 1 or not isinstance(array.item(), str) or not array.item().strip():
        raise ValueError(f"{array!r} is not a file name")
    return array.item().strip()
