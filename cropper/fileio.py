"""Atomic writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back, once
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` at once."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file owner-only; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_image(image: Image.Image, path: str | os.PathLike, quality: int = 95) -> None:
    """Save in the format the file name asks for (JPEG, PNG, WebP, ...)."""
    target = Path(path)
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None:
        from cropper.errors import ConfigError

        raise ConfigError(f"{target}: unknown image extension; use .jpg, .png or .webp")
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(target) as tmp:
        image.save(tmp, format=fmt, **options)


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSONL file that a run appends to, one a line.

    A last line torn by a kill (no newline) is cut off the file, so that the next
    append starts a whole line; a line that is not a JSON object is skipped, with a
    warning. A missing file has no lines.
    """
    target = Path(path)
    if not target.is_file():
        return []
    data = target.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(target, "r+b") as handle:
            handle.truncate(cut)
        log.warning("%s: dropped a line torn by an interrupted run", target)
        data = data[:cut]
    out = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            out.append(record)
        elif line.strip():
            log.warning("%s:%d: not a JSON object; ignored", target, number)
    return out


class JsonLines:
    """Appends objects to a JSONL file, each line flushed and synced as it is written."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())  # a kill after this loses nothing

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
