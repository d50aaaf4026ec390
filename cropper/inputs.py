"""What ``cropper crop`` is given to crop: photos, folders, globs, ``@lists`` and URLs."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from cropper.errors import ConfigError
from cropper.fetch import is_url

#: File suffixes taken as photos when a folder or glob is given.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"@{path}: cannot read the list of photos ({exc})") from None
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


def _is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES and not path.name.startswith(".")


def output_paths(inputs: Sequence[Input], out: str | None) -> list[Path | None]:
    """Where each crop goes: ``out`` itself for one photo, else ``out/<name>``.

    Refuses outputs that would overwrite an input photo or each other.
    """
    if out is None:
        return [None] * len(inputs)
    target = Path(out)
    single = len(inputs) == 1 and not target.is_dir() and not out.endswith(os.sep)
    paths = [target] if single else [target / i.name for i in inputs]
    if len({os.path.realpath(p) for p in paths}) < len(paths):
        raise ConfigError(
            f"several photos share a file name, so their crops would overwrite each other in "
            f"{target}; crop them in separate runs"
        )
    photos = {os.path.realpath(i.path) for i in inputs}
    for path in paths:
        if os.path.realpath(path) in photos:
            raise ConfigError(f"output {path} would overwrite an input photo; choose another -o")
    return paths


def writes_a_folder(inputs: Sequence[Input], out: str | None, paths: Sequence[Path | None]) -> bool:
    """Whether the crops go into a folder (then ``results.jsonl`` is kept there)."""
    return out is not None and not (len(inputs) == 1 and paths[0] == Path(out))
