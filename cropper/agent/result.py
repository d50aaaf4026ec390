"""What a crop returns: the chosen box, every candidate with its score terms, the rounds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cropper.core.boxes import Box, Size
from cropper.core.messages import Conversation, conversation_text
from cropper.core.tasks import Ratio, Subject


@dataclass(frozen=True)
class Candidate:
    """A proposed crop and its score; ``source`` says where it came from."""

    box: Box
    score: float
    terms: dict[str, float]
    round: int
    source: str = "vlm"  # vlm, fallback, or a baseline's name
    repair: str = ""  # how the proposal was changed to satisfy the request ("" if not)


@dataclass(frozen=True)
class Round:
    """One call of the VLM: the prompt, its raw replies, the boxes read and their scores."""

    index: int
    stage: str  # propose, refine or ground
    prompt: Conversation = field(repr=False)
    replies: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    notes: tuple[str, ...] = ()  # retries, repairs, drops and fallbacks, in words
    dropped: tuple[str, ...] = ()  # why each proposal left out was left out

    @property
    def prompt_text(self) -> str:
        return conversation_text(self.prompt)

    @property
    def boxes(self) -> list[Box]:
        return [c.box for c in self.candidates]

    @property
    def scores(self) -> list[float]:
        return [c.score for c in self.candidates]


@dataclass(frozen=True)
class CropResult:
    """The best crop of a photo, with the trace that led to it."""

    box: Box
    score: float
    task: str
    photo: Image.Image = field(repr=False)
    candidates: tuple[Candidate, ...] = field(repr=False)
    rounds: tuple[Round, ...] = field(repr=False)
    subject: Subject | None = None
    ratio: Ratio | None = None
    source: str | None = None  # the photo's path, when it came from a file
    composition: str | None = None  # what the composition step chose (compose=True)
    # The best crops of all rounds that overlap little (top_k), the chosen one first.
    top: tuple[Candidate, ...] = field(default=(), repr=False)
    # What stood in for what the request asked, and why (the whole photo for a round with
    # no valid box, an assumed subject, ...); None when nothing did.
    fallback: str | None = None
    # Everything a user should know about how this crop came about: fallbacks, repaired and
    # dropped proposals, the score terms used, why the chosen crop is not the best scored.
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> Size:
        """The photo's ``(w, h)``, EXIF-corrected."""
        return self.photo.size

    @property
    def pixels(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` in pixels of the photo."""
        return self.box.to_pixels(self.size)

    @property
    def image(self) -> Image.Image:
        """The cropped photo."""
        return self.photo.crop(self.pixels)

    def draw(
        self,
        *,
        rounds: Iterable[int] | None = None,
        labels: bool = True,
        max_side: int | None = 1024,
    ) -> Image.Image:
        """The photo with every candidate outlined and the chosen crop highlighted.

        Candidates get a colour a round and a label with their score; see
        :func:`cropper.views.drawing.draw_result`.
        """
        from cropper.views.drawing import draw_result

        return draw_result(self, rounds=rounds, labels=labels, max_side=max_side)

    def write_debug(self, folder: str | Path, images: str | Path | None = None) -> Path:
        """Save the overlays, exact prompts and raw replies under ``folder``.

        See :func:`cropper.views.debug.write_debug` for the layout.
        """
        from cropper.views.debug import write_debug

        return write_debug(self, folder, images=images)

    def _repr_html_(self) -> str:
        # Jupyter shows this: before and after, then each round's candidates.
        from cropper.views.display import result_html

        return result_html(self)

    def to_json(self, top: bool | None = None) -> dict[str, Any]:
        """The summary a command line writes: image, task, box in pixels, score.

        ``fallback`` (``null``, or what stood in and why) and ``notes`` are always there.

        ``top`` lists the diverse crops of :attr:`top` (box in pixels, score) when ``top``
        is true, or by default when there are several; ``composition`` names the one the
        composition step chose.
        """
        summary: dict[str, Any] = {
            "image": self.source,
            "task": self.task,
            "box": list(self.pixels),
            "score": round(self.score, 6),
        }
        if top or (top is None and len(self.top) > 1):
            summary["top"] = [
                {"box": list(c.box.to_pixels(self.size)), "score": round(c.score, 6)}
                for c in self.top
            ]
        if self.composition:
            summary["composition"] = self.composition
        summary["fallback"] = self.fallback
        summary["notes"] = list(self.notes)
        return summary

    @property
    def top_images(self) -> list[Image.Image]:
        """The crops of :attr:`top`, best first."""
        return [self.photo.crop(c.box.to_pixels(self.size)) for c in self.top]


@dataclass(frozen=True)
class PartialCrop:
    """What a crop that failed got done: its photo (once loaded) and its rounds so far.

    A :class:`~cropper.core.errors.CropperError` that ends a photo's crop carries one as
    ``partial``, so that a debug folder shows where it stopped.
    """

    source: str | None
    task: str
    photo: Image.Image | None = field(repr=False)
    rounds: tuple[Round, ...] = field(repr=False)
    error: str = ""
