"""What ``cropper crop`` is given to crop: photos, folders, globs, ``@lists`` and URLs."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from cropper.core.errors import ConfigError
from cropper.core.fetch import is_url
from cropper.core.images import PHOTO_SUFFIXES

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Input:
    """A photo to crop, and the name its crop gets under an output folder."""

    path: str
    name: str  # the path under the folder it was found in, else the file name


def expand_inputs(specs: Sequence[str]) -> list[Input]:
    """The photos ``specs`` name, in order.

    A folder gives its photos (subfolders too, sorted), a glob its matches, ``@list.txt``
    its lines (one path or URL a line; blank lines and ``#`` comments skipped), a URL
    itself (a ``?`` in it is no glob; whether it may be fetched is decided when it is
    cropped), and any other spec is a path as given (a missing file is reported when it
    is cropped).
    """
    out: list[Input] = []
    for spec in specs:
        if is_url(spec):
            out.append(Input(spec, _url_name(spec)))
        elif spec.startswith("@"):
            out += _from_list(Path(spec[1:]))
        elif os.path.isdir(spec):
            out += _from_folder(Path(spec))
        elif _GLOB_CHARS & set(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if _is_photo(Path(p)))
            if not found:
                raise ConfigError(f"{spec}: no photos match; check the pattern (quote it)")
            out += [Input(p, Path(p).name) for p in found]
        else:
            out.append(Input(spec, Path(spec).name))
    # A URL whose path names no photo is named by its place in the run.
    return [i if i.name else Input(i.path, f"photo-{n}.jpg") for n, i in enumerate(out, 1)]


def _from_list(path: Path) -> list[Input]:
    # A list may well be a pipe (``@/dev/stdin``, ``@<(find ...)``): it is read as given.
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"@{_shown_path(path)}: cannot read the list of photos ({why}); check its path"
        ) from None
    paths = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [Input(p, _url_name(p) if is_url(p) else Path(p).name) for p in paths]


def _url_name(url: str) -> str:
    """The file name a URL's path ends in, or ``""`` when that is no plain photo name."""
    try:
        name = PurePosixPath(unquote(urlsplit(url).path)).name
    except ValueError:
        return ""
    # The name becomes a file under the output folder: a plain, printable photo name only.
    return name if name.isprintable() and "\\" not in name and _is_photo(Path(name)) else ""


def _from_folder(folder: Path) -> list[Input]:
    # Files are taken by name, never opened here. A FIFO, socket or device with a photo's
    # name is listed like any other, then fails alone as "not a regular file" when it is
    # loaded (its type is checked before it is opened, so nothing waits on it): a user who
    # names a folder expects each photo-named file in it to be cropped or reported, not
    # silently left out.
    photos = sorted(
        Path(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if _is_photo(Path(name))
    )
    if not photos:
        raise ConfigError(
            f"{folder}: no photos in this folder ({', '.join(sorted(PHOTO_SUFFIXES))})"
        )
    return [Input(str(p), p.relative_to(folder).as_posix()) for p in photos]


def _shown_path(path: Path | str) -> str:
    """A path as messages show it, cut short when very long (the images module's rule)."""
    from cropper.core.images import shorten_path

    return shorten_path(str(path))


def _is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES and not path.name.startswith(".")


def output_paths(
    inputs: Sequence[Input], out: str | None, *, top_k: int = 1, ratio_tags: Sequence[str] = ()
) -> list[Path | None]:
    """Where each crop goes: ``out`` itself for one photo, else ``out/<name>``.

    Checked before any work: every file the run would write (each crop, and with
    ``top_k`` its ``NAME.top2.jpg`` ... beside it; with several ratios, each ratio's
    ``NAME.1x1.jpg`` and its extras instead) has an image suffix, overwrites no input
    photo, and is written by one photo only.
    """
    if out is None:
        return [None] * len(inputs)
    target = Path(out)
    try:
        target.is_dir()
    except OSError as exc:  # a name too long, say: stat itself fails
        raise ConfigError(f"-o/--out {_shown_path(out)}: {exc.strerror or exc}; check it") from None
    # One photo to a file name; a name with no suffix (or ending in /) is a folder, so
    # ``cropper crop DIR --out OUT`` writes a folder even when DIR holds a single photo.
    single = (
        len(inputs) == 1
        and not target.is_dir()
        and not out.endswith(os.sep)
        and bool(target.suffix)
    )
    if not single and not target.exists() and target.suffix.lower() in _saveable():
        # -o two.jpg with two photos would make a folder named two.jpg/: surely a mistake.
        raise ConfigError(
            f"-o {out} names a file, but there are {len(inputs)} photos: give a folder, "
            f"e.g. --out {target.with_suffix('')}/"
        )
    if not single and target.exists() and not target.is_dir():
        raise ConfigError(
            f"--out {out} is a file, and {len(inputs)} photos need a folder: choose a folder "
            "for --out"
        )
    paths = [target] if single else [target / i.name for i in inputs]
    if single and target.suffix.lower() not in _saveable():
        raise ConfigError(
            f"-o {out}: the crop needs an image file name (.jpg, .png, .webp, ...), or a "
            "folder ending in /"
        )
    written: dict[str, str] = {}  # every file the run writes: which photo writes it
    for item, path in zip(inputs, paths, strict=True):
        for extra in crop_paths(path, top_k, ratio_tags):
            real = os.path.realpath(extra)
            if real in written:
                raise ConfigError(
                    f"{extra} would be written for both {written[real]} and {item.path}; "
                    "crop them in separate runs (or rename one)"
                )
            written[real] = item.path
    photos = {os.path.realpath(i.path): i.path for i in inputs if not is_url(i.path)}
    for real in written:
        if real in photos:
            raise ConfigError(
                f"output {real} would overwrite the input photo {photos[real]}; choose "
                "another -o/--out"
            )
    return paths


def _saveable() -> set[str]:
    """The suffixes Pillow can save as (what cropper.core.fileio.save_image takes)."""
    from PIL import Image

    return {suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def ratio_path(path: Path, tag: str) -> Path:
    """Where the crop of one ratio of several goes: ``NAME.1x1.jpg`` for ``NAME.jpg``."""
    return path.with_name(f"{path.stem}.{tag}{path.suffix}")


def crop_paths(path: Path, top_k: int, ratio_tags: Sequence[str] = ()) -> list[Path]:
    """Every file a photo cropped to ``path`` writes: its crops, each with its top-k extras."""
    crops = [ratio_path(path, tag) for tag in ratio_tags] or [path]
    return [p for crop in crops for p in (crop, *top_paths(crop, top_k))]


def top_paths(path: Path, top_k: int) -> list[Path]:
    """Where the 2nd to ``top_k``-th crops of a photo cropped to ``path`` are saved."""
    return [path.with_name(f"{path.stem}.top{k}{path.suffix}") for k in range(2, top_k + 1)]


def writes_a_folder(inputs: Sequence[Input], out: str | None, paths: Sequence[Path | None]) -> bool:
    """Whether the crops go into a folder (then ``results.jsonl`` is kept there)."""
    return out is not None and not (len(inputs) == 1 and paths[0] == Path(out))
