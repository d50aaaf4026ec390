"""What a crop returns: the chosen box, every candidate with its score terms, the rounds."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cropper.core.boxes import Box, Size
from cropper.core.messages import Conversation, conversation_text
from cropper.core.photos import Photo
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
    # The photo by reference (a path, the caller's own image): its size, and full pixels
    # when the crop is made (a PIL image given here is taken as the photo itself).
    photo: Photo = field(repr=False)
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
    # Normalized (x, y) of the photo where the crop's interest lies (cropper.agent.focus).
    focus: tuple[float, float] | None = None
    # The faces found when faces were protected (largest first); None: not looked for.
    faces: tuple[Box, ...] | None = None
    keep: tuple[Box, ...] = ()  # the regions the request kept
    avoid: tuple[Box, ...] = ()  # the regions it avoided
    output_size: Size | None = None  # the (w, h) :attr:`image` is resized to; None: as cut

    def __post_init__(self) -> None:
        if isinstance(self.photo, Image.Image):
            object.__setattr__(self, "photo", Photo.of(self.photo))

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
        """The cropped photo at full resolution, or at :attr:`output_size` when one was asked.

        Made when asked, from the photo's own pixels (resized in one step, Lanczos); the
        result holds no pixels of its own.
        """
        return self.photo.crop(self.pixels, self.output_size)

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
        if self.focus is not None:
            summary["focus"] = list(self.focus)
        if self.faces is not None:
            summary["faces"] = [list(f.to_pixels(self.size)) for f in self.faces]
        if self.output_size is not None:
            summary["size"] = list(self.output_size)
        summary["fallback"] = self.fallback
        summary["notes"] = list(self.notes)
        return summary

    @property
    def top_images(self) -> list[Image.Image]:
        """The crops of :attr:`top`, best first."""
        return [self.photo.crop(c.box.to_pixels(self.size)) for c in self.top]

    def preview(self, max_side: int | None = 1024) -> Image.Image:
        """The photo decoded at least ``max_side`` on its longer side (None: all of it)."""
        return self.photo.load_pixels(max_side)


@dataclass(frozen=True)
class RatioCrops(Mapping[str, CropResult]):
    """One crop per requested ratio, keyed by the ratio as written: ``r["4:5"].box``.

    What the ratios share (the photo, the subject, the faces) is found once; each ratio's
    :class:`CropResult` has its own rounds. ``fallback`` and ``notes`` gather theirs, each
    named by its ratio.
    """

    crops: dict[str, CropResult]
    source: str | None = None
    notes: tuple[str, ...] = ()  # the photo's own, beside each ratio's

    def __getitem__(self, ratio: str) -> CropResult:
        try:
            return self.crops[ratio]
        except KeyError:
            raise KeyError(
                f"no crop of ratio {ratio!r}: the ratios are {', '.join(self.crops)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.crops)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def task(self) -> str:
        return "aspect"

    @property
    def photo(self) -> Photo:
        return next(iter(self.crops.values())).photo

    @property
    def size(self) -> Size:
        return self.photo.size

    @property
    def faces(self) -> tuple[Box, ...] | None:
        return next(iter(self.crops.values())).faces

    @property
    def fallback(self) -> str | None:
        """Each ratio's fallback, named by its ratio; None when none fell back."""
        said = [f"{text}: {r.fallback}" for text, r in self.crops.items() if r.fallback]
        return "; ".join(said) or None

    def to_json(self, top: bool | None = None) -> dict[str, Any]:
        """The summary a command line writes: ``ratios`` holds each ratio's crop and score.

        ``{"image", "task", "ratios": {"1:1": {"box": [l, t, r, b], "score": s, "focus":
        [x, y]}, ...}, "fallback", "notes"}``; each ratio's notes are named by it.
        """
        ratios = {}
        for text, result in self.crops.items():
            one = result.to_json(top=top)
            ratios[text] = {
                k: v
                for k, v in one.items()
                if k not in ("image", "task", "fallback", "notes", "faces")
            }
        summary: dict[str, Any] = {"image": self.source, "task": self.task, "ratios": ratios}
        if self.faces is not None:
            summary["faces"] = [list(f.to_pixels(self.size)) for f in self.faces]
        summary["fallback"] = self.fallback
        summary["notes"] = list(self.notes) + [
            f"{text}: {note}"
            for text, result in self.crops.items()
            for note in result.notes
            if note not in self.notes
        ]
        return summary

    def draw(self, *, labels: bool = True, max_side: int | None = 1024) -> Image.Image:
        """The photo with each ratio's crop outlined and labelled, faces and focus marked."""
        from cropper.views.drawing import draw_ratio_crops

        return draw_ratio_crops(self, labels=labels, max_side=max_side)

    def write_debug(self, folder: str | Path, images: str | Path | None = None) -> Path:
        """Each ratio's debug folder (see :meth:`CropResult.write_debug`) under ``folder``."""
        root = Path(folder)
        for text, result in self.crops.items():
            result.write_debug(root / ("ratio-" + ratio_file_tag(text)), images=images)
        return root

    def _repr_html_(self) -> str:
        return "".join(
            f"<h3>ratio {text}</h3>{result._repr_html_()}" for text, result in self.crops.items()
        )


def ratio_file_tag(text: str) -> str:
    """A ratio as written (``"16:9"``) as it goes in a file name (``16x9``)."""
    return re.sub(r"[^0-9A-Za-z.]+", "x", text.strip()).strip("x") or "ratio"


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
