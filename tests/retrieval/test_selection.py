"""Task-aware choice of an exemplar's crops."""

from __future__ import annotations

import pytest

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from retrieval.exemplars import Exemplar
from retrieval.index import Hit
from retrieval.selection import ExemplarCrop, select_crops

# A 200x100 photo: pixel ratios A 2:1, B 1:1, C 1:2, D 4:1.
A = Box(0.0, 0.0, 1.0, 1.0)
B = Box(0.0, 0.0, 0.5, 1.0)
C = Box(0.5, 0.0, 0.75, 1.0)
D = Box(0.0, 0.5, 1.0, 1.0)
SUBJECTS = ((0.5, 0.5), (0.25, 0.5), (0.6, 0.4), (0.5, 0.75))
SCORED = Exemplar("p.jpg", (200, 100), (A, B, C, D), scores=(1.0, 4.0, 3.0, 2.0), subjects=SUBJECTS)
PLAIN = Exemplar("p.jpg", (200, 100), (A, B, C, D))


def _boxes(crops: list[ExemplarCrop]) -> list[Box]:
    return [c.box for c in crops]


@pytest.mark.parametrize(
    ("exemplar", "task", "kwargs", "expected"),
    [
        (SCORED, "free", {}, [B, C, D, A]),
        (SCORED, "free", {"top": 2}, [B, C]),
        (PLAIN, "free", {"top": 3}, [A, B, C]),
        (SCORED, "subject", {"subject": (0.3, 0.5)}, [B]),
        (SCORED, "subject", {"subject": (0.62, 0.38)}, [C]),
        (SCORED, "subject", {"subject": (0.5, 0.9), "top": 3}, [D]),
        (SCORED, "subject", {}, [B]),  # no query subject: the best crop
        (PLAIN, "subject", {"subject": (0.6, 0.4)}, [A]),  # no exemplar subjects: the first
        (SCORED, "aspect", {"ratio": 1.0, "top": 1}, [B]),
        (SCORED, "aspect", {"ratio": 0.5, "top": 2}, [C, B]),
        (SCORED, "aspect", {"ratio": 3.5, "top": 2}, [D, A]),
        (SCORED, "aspect", {"ratio": 16 / 9}, [A, B, D, C]),
    ],
)
def test_select_crops(exemplar: Exemplar, task: str, kwargs: dict, expected: list[Box]) -> None:
    assert _boxes(select_crops(exemplar, task, **kwargs)) == expected


def test_crops_carry_their_score_and_subject() -> None:
    [crop] = select_crops(SCORED, "free", top=1)
    assert crop == ExemplarCrop(B, 4.0, (0.25, 0.5))
    assert select_crops(PLAIN, "free", top=1) == [ExemplarCrop(A, None, None)]


def test_hits_work_like_exemplars() -> None:
    hit = Hit("p.jpg", (200, 100), (A, B, C, D), SCORED.scores, SUBJECTS, 0.9, 0)
    assert select_crops(hit, "aspect", ratio=1.0, top=1)[0].box == B
    assert hit.exemplar == SCORED


@pytest.mark.parametrize(
    ("task", "kwargs", "words"),
    [
        ("fancy", {}, "unknown task"),
        ("free", {"top": 0}, "top must be"),
        ("aspect", {}, "needs a positive ratio"),
        ("aspect", {"ratio": -1.0}, "needs a positive ratio"),
    ],
)
def test_bad_arguments(task: str, kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        select_crops(SCORED, task, **kwargs)
