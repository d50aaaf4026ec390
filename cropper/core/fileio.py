"""Atomic writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import re
import tempfile
import time
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


#: Formats whose files carry an ICC profile and an EXIF block, as Pillow writes them.
METADATA_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "AVIF"})
#: Formats saved with a quality (1-100); the others are lossless or have none.
QUALITY_FORMATS = frozenset({"JPEG", "WEBP", "AVIF"})
#: Formats that record a resolution (dots per inch).
_DPI_FORMATS = frozenset({"JPEG", "PNG", "TIFF"})
#: JPEG keeps full-resolution colour (4:4:4) from this quality up, else halves it (4:2:0).
FULL_CHROMA_QUALITY = 90
#: The most EXIF bytes a JPEG can hold (one APP1 marker).
_JPEG_MAX_EXIF = 65533
_MAKER_NOTE = 0x927C


def save_image(
    image: Image.Image, path: str | os.PathLike, quality: int = 95, *, keep_gps: bool = False
) -> None:
    """Save in the format the file name asks for (JPEG, PNG, WebP, ...), atomically.

    What the photo had comes along where the format can hold it (JPEG, PNG, WebP, TIFF,
    AVIF): its ICC profile (when it describes the image's pixels) and its EXIF block,
    camera details kept, as :func:`cropper.core.images.upright_exif` gives it: no
    orientation tag (so 1: the pixels are upright), no thumbnail (it shows the whole
    photo), the pixel dimensions of the image saved, and no GPS position unless
    ``keep_gps``. XMP is not written (it can repeat the position and describes the whole
    photo). The resolution (DPI) is kept too.

    ``quality`` (1-100) is that of JPEG, WebP and AVIF; from
    :data:`FULL_CHROMA_QUALITY` up a JPEG keeps its colour at full resolution (4:4:4), as
    a crop is often viewed larger and its photo's colour was already halved once.
    """
    from cropper.core.errors import ConfigError

    target = Path(path)
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{target}: unknown image extension; use .jpg, .png or .webp")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality {quality!r}: expected a whole number from 1 to 100")
    options = _save_options(image, fmt, quality, keep_gps=keep_gps, name=target)
    with atomic_path(target) as tmp:
        image.save(tmp, format=fmt, **options)


def _save_options(
    image: Image.Image, fmt: str, quality: int, *, keep_gps: bool, name: object
) -> dict:
    """What Pillow's writer for ``fmt`` is given: quality, profile, EXIF, resolution."""
    options: dict = {}
    if fmt in QUALITY_FORMATS:
        options["quality"] = quality
    if fmt == "JPEG":
        options["subsampling"] = 0 if quality >= FULL_CHROMA_QUALITY else 2
        options["optimize"] = True  # smaller Huffman tables, the same pixels
    if fmt in _DPI_FORMATS:
        dpi = image.info.get("dpi")
        if _is_dpi(dpi):
            options["dpi"] = tuple(dpi)
    if fmt not in METADATA_FORMATS:
        return options
    from cropper.core.errors import ImageError
    from cropper.core.images import icc_profile_of, upright_exif

    # Given always, so that a profile in image.info that misdescribes the pixels is not
    # written by the formats that would take it from there (PNG, TIFF, AVIF).
    options["icc_profile"] = icc_profile_of(image)
    try:
        exif = upright_exif(image, keep_gps=keep_gps)
    except ImageError as exc:
        log.warning("%s: saved without the photo's %s", name, exc)
        exif = None
    if exif and fmt == "JPEG" and len(exif) > _JPEG_MAX_EXIF:
        exif = _without_maker_note(exif)
        if len(exif) > _JPEG_MAX_EXIF:
            log.warning("%s: saved without the photo's EXIF block (too long for JPEG)", name)
            exif = None
    if exif:
        options["exif"] = exif
    return options


def _is_dpi(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
        and all(0 < v < 65536 for v in value)
    )


def _without_maker_note(exif_bytes: bytes) -> bytes:
    """The EXIF block without its maker note (the camera's private, often largest, part)."""
    exif = Image.Exif()
    exif.load(exif_bytes)
    exif.get_ifd(0x8769).pop(_MAKER_NOTE, None)
    return exif.tobytes()


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
        if _is_json_object(data[cut:]):
            # A whole line whose newline never came (an editor, or a kill between the two
            # writes): it is kept, and given its newline so the next append starts afresh.
            with open(target, "ab") as handle:
                handle.write(b"\n")
            data += b"\n"
        else:
            with open(target, "r+b") as handle:
                handle.truncate(cut)
            log.warning("%s: dropped a line torn by an interrupted run", target)
            data = data[:cut]
    out = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
            record = None
        if isinstance(record, dict):
            out.append(record)
        elif line.strip():
            log.warning("%s:%d: not a JSON object; ignored", target, number)
    return out


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (ValueError, RecursionError):
        return False


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


#: What :func:`atomic_path` names its temporary files: ``.NAME.RANDOM.tmp``.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporary files a killed run left in ``folder`` and below; how many.

    Only names that :func:`atomic_path` makes are touched. Call it while holding the
    folder's :class:`FolderLock`, so no live writer's temporary file is taken.
    """
    removed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            if _TEMPORARY.match(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
                    removed += 1
    if removed:
        log.info("%s: removed %d temporary files an interrupted run left", folder, removed)
    return removed


#: The lock file in an output folder or bank while a run writes it.
LOCK_NAME = ".cropper.lock"


class FolderLock:
    """One writer per folder: an exclusive lock on ``folder/.cropper.lock`` naming its holder.

    The lock is the operating system's (``flock``), so a run killed by any signal releases
    it at once and no stale lock is ever left to clear by hand; the file itself stays, with
    the last holder's description. A second run is refused in one line naming the holder,
    or waits for it when ``wait`` is true.

        with FolderLock(out, "cropper crop --out OUT"):
            ...
    """

    def __init__(self, folder: str | os.PathLike, command: str, *, wait: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        from cropper.core.errors import ConfigError

        try:
            import fcntl
        except ImportError:  # not POSIX: no lock to take, as before
            log.debug("no fcntl here: %s is not locked", self.folder)
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Close-on-exec: no program this run starts holds the lock after it is gone.
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o666 & ~_UMASK)
        except OSError as exc:
            raise ConfigError(
                f"cannot write in {self.folder} ({exc.strerror or exc}): choose another folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                holder = _read_holder(fd)
                os.close(fd)
                raise ConfigError(
                    f"{self.folder} is being written by another run ({holder}); wait for it "
                    "to finish, or add --wait to start when it does"
                ) from None
            log.warning("%s is being written by %s: waiting for it", self.folder, _read_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()} on {_host()}, {self.command}, since {since}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode("utf-8", errors="replace") + b"\n", 0)
        self._fd = fd
        _HELD_LOCKS.add(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            _HELD_LOCKS.discard(self._fd)
            os.close(self._fd)  # closing releases the lock
            self._fd = None


#: Descriptors of the locks this process holds.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker, say), close the parent's lock descriptors.

    An flock lasts while any process keeps its file open: a run killed with kill -9
    would otherwise stay "running" until its orphaned children exit. Closing (never
    unlocking) the child's copies leaves the parent's lock as it is.
    """
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 500, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a cropper run"


def _host() -> str:
    import socket

    return socket.gethostname() or "this machine"
