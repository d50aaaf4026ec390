"""The one small base class every VLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cropper.core.errors import VLMError
from cropper.core.messages import Conversation


@dataclass(frozen=True)
class Sampling:
    """How to sample replies; the same for every conversation of a batch."""

    n: int = 1  # replies per conversation
    temperature: float = 0.05  # the paper's setting
    max_tokens: int = 512  # enough for a dozen boxes as JSON
    json_schema: dict[str, Any] | None = None  # constrain replies to this schema when set
    seed: int | None = None  # for reproducible sampling where the backend supports it
    top_p: float | None = None  # nucleus sampling; None: the backend's default, not sent
    top_k: int | None = None  # sample from the k likeliest tokens; None: not sent


class VLM(ABC):
    """A vision-language model: a batch of conversations in, ``n`` replies each out."""

    #: A short name for logs and traces (a model id or a URL).
    name: str = "vlm"
    #: Whether a sampling's ``json_schema`` is meant to hold the replies to it (constrained
    #: decoding, or a server asked for structured outputs). The loop reads replies that are
    #: not JSON then as a sign the schema was ignored, and says so.
    constrains_output: bool = False

    @abstractmethod
    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        """Reply to each conversation ``sampling.n`` times.

        Returns one list of ``n`` reply strings per conversation, in order. Raises
        :class:`cropper.core.errors.VLMError` when the model cannot answer at all.
        """

    def generate_each(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str] | VLMError]:
        """:meth:`generate`, where a conversation that fails alone fails alone.

        Returns, per conversation, its replies or the :class:`VLMError` that is its own.
        Backends batch conversations into one call, and one bad conversation (an image the
        processor refuses, a prompt too long) fails such a call for all: then each is
        asked again alone, and only the ones that fail alone get their error. An error that
        every request would meet (``every_request``) is raised, as it is no one photo's.
        """
        try:
            return list(self.generate(conversations, sampling))
        except VLMError as exc:
            if exc.every_request or len(conversations) < 2:
                raise
        answers: list[list[str] | VLMError] = []
        for conversation in conversations:
            try:
                answers.append(self.generate([conversation], sampling)[0])
            except VLMError as exc:
                if exc.every_request:
                    raise
                answers.append(exc)
        return answers

    def close(self) -> None:  # noqa: B027 (optional to override)
        """Release what the backend holds (connections, GPU memory)."""

    def __enter__(self) -> VLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
