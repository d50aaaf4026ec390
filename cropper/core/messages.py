"""Backend-independent chat messages: interleaved text and images.

Rendering a prompt yields a :data:`Conversation`; each VLM backend turns it into
its own payload in a pure function (the OpenAI wire format, a chat template's
input, vLLM's ``LLM.chat`` list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from PIL import Image

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True, eq=False)
class ImagePart:
    """A photo in a prompt. ``key`` names it stably (path or id) for caching encodings."""

    image: Image.Image = field(repr=False)
    key: str = ""


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
