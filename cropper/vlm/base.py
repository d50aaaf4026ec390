"""The one small base class every VLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cropper.core.errors import ConfigError, VLMError
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

    def settings(self) -> dict[str, Any]:
        """The sampling settings every backend passes on, in the engines' own names.

        ``n``, ``temperature`` and ``max_tokens`` always; ``seed``, ``top_p`` and ``top_k``
        only when set.
        """
        out: dict[str, Any] = {
            "n": self.n,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        # Sent only when set: an engine's own defaults (the model's generation config) stand.
        for name in ("seed", "top_p", "top_k"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


class VLM(ABC):
    """A vision-language model: a batch of conversations in, ``n`` replies each out.

    A backend implements :meth:`generate`; the rest has defaults. Two things say how it
    takes work, so that callers need not know which backend it is:

    - :attr:`max_in_flight`: how many conversations it takes at once as configured (a
      server's requests in flight, an engine's batch size); ``None``, the default: no
      bound of its own, a call's conversations go together.
    - :attr:`overlaps_calls`: whether a call leaves the caller's thread free while the
      model works (a server keeps requests in flight while the client prepares the next
      ones), so that a batch gains by keeping a second call going; ``False``, the
      default, for engines that compute in the calling thread.

    A caller that wants another bound for one call passes ``concurrency`` to
    :meth:`generate_each`; the backend's configuration is left as it is.
    """

    #: A short name for logs and traces (a model id or a URL).
    name: str = "vlm"
    #: Whether a sampling's ``json_schema`` is meant to hold the replies to it (constrained
    #: decoding, or a server asked for structured outputs). The loop reads replies that are
    #: not JSON then as a sign the schema was ignored, and says so.
    constrains_output: bool = False
    #: Whether calls from several threads overlap usefully: the model works elsewhere (a
    #: server) while the calling thread waits, so a batch runs two chunks at once, one
    #: served while the other's next prompts are built. In-process engines compute in the
    #: calling thread, where a second chunk would only wait its turn.
    overlaps_calls: bool = False

    @property
    def max_in_flight(self) -> int | None:
        """Conversations the backend takes at once as configured; ``None``: no bound.

        A server's requests in flight, an engine's batch size. It is what a call without
        ``concurrency`` gets; a call's ``concurrency`` does not change it.
        """
        return None

    @abstractmethod
    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        """Reply to each conversation ``sampling.n`` times.

        Returns one list of ``n`` reply strings per conversation, in order. Raises
        :class:`cropper.core.errors.VLMError` when the model cannot answer at all.
        """

    def generate_each(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        *,
        concurrency: int | None = None,
    ) -> list[list[str] | VLMError]:
        """:meth:`generate`, where a conversation that fails alone fails alone.

        Returns, per conversation, its replies or the :class:`VLMError` that is its own.
        Backends batch conversations into one call, and one bad conversation (an image the
        processor refuses, a prompt too long) fails such a call for all: then each is
        asked again alone, and only the ones that fail alone get their error. An error that
        every request would meet (``every_request``) is raised, as it is no one photo's.

        ``concurrency`` bounds the conversations this call has at once: requests in flight
        on a server; here, conversations a :meth:`generate` call is given (an engine may
        split them further by its own batch size), each group with a seed of its own.
        ``None``: the backend's own bound (:attr:`max_in_flight`). It holds for this call
        only.
        """
        check_concurrency(concurrency)
        conversations = list(conversations)
        size = concurrency or len(conversations) or 1
        answers: list[list[str] | VLMError] = []
        for start in range(0, len(conversations), size):
            group = conversations[start : start + size]
            if start and sampling.seed is not None:  # groups do not repeat each other's draws
                answers.extend(self._each(group, replace(sampling, seed=sampling.seed + start)))
            else:
                answers.extend(self._each(group, sampling))
        return answers

    def _each(
        self, conversations: list[Conversation], sampling: Sampling
    ) -> list[list[str] | VLMError]:
        """One :meth:`generate` call; when it fails, each conversation asked alone."""
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


def check_concurrency(value: Any, name: str = "concurrency") -> None:
    """Refuse a bound on conversations at once that is not a whole number >= 1 (or None)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1; got {value!r}")
