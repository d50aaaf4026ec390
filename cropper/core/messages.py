"""Backend-independent chat messages: interleaved text and images.

Rendering a prompt yields a :data:`Conversation`; each VLM backend turns it into
its own payload in a pure function (the OpenAI wire format, a chat template's
input, vLLM's ``LLM.chat`` list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Union

from PIL import Image

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    text: str


class ImagePart:
    """A photo in a prompt. ``key`` names it stably (path or id) for caching encodings.

    ``make``, when given, makes the same pixels again: :meth:`released` gives the part
    without its pixels held, for a result kept long after its prompt was sent (the query's
    copy and each candidate crop are made again from the photo when a view asks).
    """

    __slots__ = ("_image", "_make", "key")

    def __init__(
        self,
        image: Image.Image | None = None,
        key: str = "",
        *,
        make: Callable[[], Image.Image] | None = None,
    ):
        if image is None and make is None:
            raise TypeError("ImagePart needs an image, or make= to make it")
        self._image, self._make, self.key = image, make, key

    @property
    def image(self) -> Image.Image:
        if self._image is not None:
            return self._image
        assert self._make is not None
        return self._make()

    @property
    def held(self) -> bool:
        """Whether the part holds its pixels (not made again when asked)."""
        return self._image is not None

    def released(self) -> ImagePart:
        """The part holding no pixels, when it can make them again; else itself."""
        if self._make is None or self._image is None:
            return self
        return ImagePart(key=self.key, make=self._make)

    def __repr__(self) -> str:
        return f"ImagePart(key={self.key!r})"


Part = Union[TextPart, ImagePart]  # noqa: UP007 (runtime alias, Python 3.10 too)


@dataclass(frozen=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The message's text with images shown as ``<image>``."""
        return "".join(p.text if isinstance(p, TextPart) else "<image>" for p in self.parts)

    @property
    def images(self) -> list[Image.Image]:
        return [p.image for p in self.parts if isinstance(p, ImagePart)]


Conversation = list[Message]


def conversation_text(conversation: Conversation) -> str:
    """A readable transcript: each message headed by its role, images as ``<image>``."""
    return "\n".join(f"[{m.role}]\n{m.text}" for m in conversation)


def conversation_images(conversation: Conversation) -> list[Image.Image]:
    return [img for m in conversation for img in m.images]


def released(conversation: Conversation) -> Conversation:
    """``conversation`` with each image that can be made again holding no pixels."""
    return [
        Message(m.role, tuple(p.released() if isinstance(p, ImagePart) else p for p in m.parts))
        for m in conversation
    ]
