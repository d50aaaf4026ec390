"""Atomic writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image


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
