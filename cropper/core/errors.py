"""The errors cropper raises: one small hierarchy, each message saying what to do."""

from __future__ import annotations

import reprlib
from typing import Any


class CropperError(Exception):
    """Base of every error cropper raises on purpose.

    An error that ends one photo's crop carries, as ``partial``, what was done before it
    (a :class:`cropper.agent.result.PartialCrop`: the photo and the rounds so far), so a debug
    folder can show it; ``None`` otherwise.
    """

    partial: object = None


class ConfigError(CropperError, ValueError):
    """A bad argument, option or setting."""


class MissingDependencyError(ConfigError, ImportError):
    """An optional package is not installed."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = ""):
        hint = f"pip install 'cropper[{extra}]'" if extra else f"pip install {package}"
        why = f" for {purpose}" if purpose else ""
        super().__init__(f"{package} is needed{why} but is not installed: run {hint}")
        self.package = package


class WeightsNotFoundError(ConfigError):
    """Model weights are neither cached nor downloadable (typically offline)."""


class ImageError(CropperError, ValueError):
    """A photo that cannot be read: missing, truncated, not an image, too large."""


class VLMError(CropperError):
    """The VLM failed to answer.

    ``retryable`` says whether trying again may help; ``every_request`` that every request
    would fail the same way (a wrong key, model name or URL, a server that cannot be
    reached, every request in flight failing), so a batch stops rather than failing each
    photo alike. Any other VLM error belongs to its photo alone.
    """

    def __init__(self, message: str, *, retryable: bool = False, every_request: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.every_request = every_request

    @property
    def stops_batch(self) -> bool:
        """The server is gone, or would refuse every photo: going on cannot help."""
        return self.every_request



class ExemplarIndexError(CropperError):
    """An exemplar bank that is missing, corrupt or built for another embedder."""


def shown(value: Any, limit: int = 60) -> str:
    """A value as a one-line message shows it: cut short however long, nested or large.

    A JSON integer may run to thousands of digits (past which ``repr`` itself refuses),
    and a list may nest thousands deep: neither may make a message unreadable.
    """
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxlong, short.maxstring = 3, 6, 24, 40
    short.maxother = limit
    try:
        text = short.repr(value)
    except ValueError:  # an integer past Python's digit limit for str()
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
