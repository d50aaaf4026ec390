"""The one small base class every VLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cropper.messages import Conversation


@dataclass(frozen=True)
class Sampling:
    """How to sample replies; the same for every conversation of a batch."""

    n: int = 1  # replies per conversation
    temperature: float = 0.05  # the paper's setting
    max_tokens: int = 512  # enough for a dozen boxes as JSON
    json_schema: dict[str, Any] | None = None  # constrain replies to this schema when set
    seed: int | None = None  # for reproducible sampling where the backend supports it


class VLM(ABC):
    """A vision-language model: a batch of conversations in, ``n`` replies each out."""

    #: A short name for logs and traces (a model id or a URL).
    name: str = "vlm"

    @abstractmethod
    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        """Reply to each conversation ``sampling.n`` times.

        Returns one list of ``n`` reply strings per conversation, in order. Raises
        :class:`cropper.errors.VLMError` when the model cannot answer at all.
        """

    def close(self) -> None:  # noqa: B027 (optional to override)
        """Release what the backend holds (connections, GPU memory)."""

    def __enter__(self) -> VLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
