"""Diverse good crops (after Jia et al., CVPR 2022): the best k that overlap little."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cropper.agent.result import Candidate
from cropper.core.boxes import iou_matrix
from cropper.core.errors import ConfigError


def diverse_top(
    candidates: Sequence[Candidate], k: int, max_iou: float, first: Candidate | None = None
) -> tuple[Candidate, ...]:
    """Up to ``k`` candidates, best first, no two overlapping by more than ``max_iou``.

    Greedy suppression, as in non-maximum suppression: take the best candidate left, drop
    every one that overlaps it by more than ``max_iou`` IoU, repeat. ``first`` (the crop the
    loop chose) leads the list when given. Fewer than ``k`` come back when the candidates
    are too alike.
    """
    if k < 1 or isinstance(k, bool):
        raise ConfigError(f"top_k must be a whole number >= 1, got {k!r}")
    if not 0.0 <= max_iou <= 1.0:
        raise ConfigError(f"diversity_iou must be between 0 and 1, got {max_iou!r}")
    pool = sorted(candidates, key=lambda c: -c.score)
    if first is not None:
        pool = [first] + [c for c in pool if c is not first]
    if not pool:
        return ()
    overlap = iou_matrix(*[np.array([c.box.as_array() for c in pool])] * 2)
    kept: list[int] = []
    for i in range(len(pool)):
        if all(overlap[i, j] <= max_iou for j in kept):
            kept.append(i)
            if len(kept) == k:
                break
    return tuple(pool[i] for i in kept)
