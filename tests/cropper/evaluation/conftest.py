"""The scripted cropping method the evaluation tests run."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cropper.agent.result import CropResult
from cropper.evaluation.truth import load_truth


@pytest.fixture(scope="module")
def gaicd_test(shared_data: Path):
    """GAICD's real test split, read from ../shared/data."""
    return load_truth("gaicd", shared_data / "gaicd", "test")


@pytest.fixture(scope="module")
def layout(shared_data: Path) -> Path:
    """GAICD's official folder layout, three real photos."""
    return shared_data / "gaicd" / "official_layout"


class Scripted:
    """Crops with a rule per photo path; counts its calls; can fail on chosen photos."""

    def __init__(self, choose, fail: dict[str, Exception] | None = None, stop_after=None,
                 score=None):  # fmt: skip
        self.choose = choose
        self.score = score or (lambda box: box.x0)  # what it ranks boxes by
        self.fail = fail or {}
        self.stop_after = stop_after
        self.calls: list[tuple[str, str, dict]] = []
        self.scored: list[int] = []  # how many boxes each score_boxes call was given
        self.found = None  # the Subject a result reports, as a VLM that grounded one would

    def crop(self, image, task="free", *, subject=None, ratio=None):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run
        self.calls.append((str(image), task, {"subject": subject, "ratio": ratio}))
        if Path(image).name in self.fail:
            raise self.fail[Path(image).name]
        photo = Image.new("RGB", (8, 8))
        box = self.choose(str(image))
        return CropResult(box=box, score=0.5, task=task, photo=photo, candidates=(), rounds=(),
                          subject=self.found)  # fmt: skip

    def score_boxes(self, image, boxes, task="free"):
        self.scored.append(len(boxes))
        return [self.score(box) for box in boxes]


@pytest.fixture
def scripted() -> type[Scripted]:
    """The :class:`Scripted` class: ``scripted(choose, fail=..., stop_after=...)``."""
    return Scripted
