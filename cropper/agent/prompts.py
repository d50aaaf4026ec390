"""Prompt files: Jinja templates rendered into backend-independent conversations.

A prompt folder holds ``<task>/<stage>.j2`` for each task (``free``, ``subject``,
``aspect``) and stage (``propose``, ``refine``; ``subject/ground``). Templates call
``image(photo)`` to place a photo, ``role("system" | "user" | "assistant")`` to
start a message, ``box(b, size)`` and ``point(p)`` to write coordinates in the
convention in use. prompts/README.md documents every variable.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from PIL import Image

from cropper.core.boxes import COORDS, Box, Size, check_coords, point_to_coords
from cropper.core.errors import ConfigError, CropperError
from cropper.core.messages import Conversation, ImagePart, Message, Part, TextPart

# Placeholders that cannot occur in prompt text: NUL never survives a tokenizer.
_MARK = re.compile(r"\x00(img|role):([a-z0-9]+)\x00")


@dataclass(frozen=True, eq=False)
class PromptPhoto:
    """A photo as the prompt shows it: the image sent and its ``(w, h)``."""

    image: Image.Image = field(repr=False)
    key: str = ""
    # Makes the same image again, so a result need not hold it (see ImagePart.released).
    make: Callable[[], Image.Image] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> Size:
        return self.image.size


def default_prompt_dir() -> Path:
    """The prompt files shipped with cropper (``prompts/`` in a checkout)."""
    try:
        shipped = Path(str(importlib.resources.files("cropper.prompt_files")))
    except ModuleNotFoundError:
        shipped = Path(__file__).resolve().parent.parent / "prompts"
    if not (shipped / "free" / "propose.j2").is_file():
        shipped = Path(__file__).resolve().parent.parent / "prompts"
    return shipped


class PromptSet:
    """The templates of one prompt folder, rendered into conversations."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else default_prompt_dir()
        if not self.folder.is_dir():
            raise ConfigError(f"prompt folder {self.folder} does not exist")
        # Sandboxed, and the loader only sees this folder: templates are data that a
        # user may have downloaded, not code.
        self._env = SandboxedEnvironment(
            loader=FolderLoader(self.folder),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            autoescape=False,
        )

    def has(self, task: str, stage: str) -> bool:
        return (self.folder / task / f"{stage}.j2").is_file()

    def render(self, task: str, stage: str, *, coords: str, **variables: Any) -> Conversation:
        """Render ``<task>/<stage>.j2`` into a conversation of text and images."""
        name = f"{task}/{stage}.j2"
        if not self.has(task, stage):
            raise ConfigError(
                f"prompt file {self.folder / name} is missing; copy it from {default_prompt_dir()}"
            )
        check_coords(coords)
        images: list[PromptPhoto] = []
        size_of_query = variables.get("query").size if variables.get("query") is not None else None

        def image(photo: PromptPhoto) -> str:
            images.append(photo)
            return f"\x00img:{len(images) - 1}\x00"

        def role(who: str) -> str:
            if who not in ("system", "user", "assistant"):
                raise ConfigError(f"role({who!r}): a role must be system, user or assistant")
            return f"\x00role:{who}\x00"

        def box(b: Box, size: Size | None = None) -> str:
            values = b.to_coords(coords, size or size_of_query)
            return ", ".join(_number(v) for v in values)

        def point(p: tuple[float, float], size: Size | None = None) -> str:
            # Like box(): an exemplar's point is written in its own photo's frame.
            values = point_to_coords(p, coords, size or size_of_query)
            return ", ".join(_number(v) for v in values)

        try:
            text = self._env.get_template(name).render(
                task=task,
                coords=coords,
                coords_text=COORDS[coords],
                image=image,
                role=role,
                box=box,
                point=point,
                **variables,
            )
        except jinja2.TemplateError as exc:
            where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
            raise ConfigError(f"prompt {self.folder / name}{where}: {exc.message}") from None
        except _TEMPLATE_FAULTS as exc:
            # A template's own mistake ({{ 1/0 }}, box(3), endless includes): name it, no traceback.
            kind = "" if isinstance(exc, CropperError) else f"{type(exc).__name__}: "
            raise ConfigError(
                f"prompt {self.folder / name}{_where(exc, self.folder, name)}: "
                f"{kind}{' '.join(str(exc).split())[:200]}"
            ) from None
        return _split(text, images)


#: What a faulty template can raise while it renders, besides jinja's own errors.
_TEMPLATE_FAULTS = (
    CropperError,
    ArithmeticError,  # 1/0, and the sandbox's OverflowError for a huge range()
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,  # a template that includes itself
)


def _where(exc: BaseException, folder: Path, name: str) -> str:
    """`` line N`` of template ``name`` (or `` (FILE line N)``, an included one) that raised."""
    root, found = folder.resolve(), None
    tb = exc.__traceback__
    while tb is not None:
        # jinja rewrites tracebacks so that template code shows as the template's own lines.
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2") and Path(filename).resolve().is_relative_to(root):
            found = (Path(filename).resolve(), tb.tb_lineno)
        tb = tb.tb_next
    if found is None:
        return ""
    where = found[0].relative_to(root).as_posix()
    return f" line {found[1]}" if where == name else f" ({where} line {found[1]})"


class FolderLoader(jinja2.FileSystemLoader):
    """Templates from one folder, and nothing outside it.

    jinja's loader already refuses ``..`` and absolute names; this one also refuses a
    file that is, or lies in, a symbolic link leading out of the folder.
    """

    def __init__(self, folder: str | Path):
        super().__init__(str(folder))
        self.root = Path(folder).resolve()

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        """The template's text, file name and up-to-date check, from inside the folder only."""
        try:
            source, filename, uptodate = super().get_source(environment, template)
        except jinja2.TemplateNotFound:
            raise jinja2.TemplateNotFound(
                template,
                f"no template {template!r} in the prompt folder {self.root}: templates may "
                "include only files inside it, named relative to it",
            ) from None
        if not Path(filename).resolve().is_relative_to(self.root):
            raise jinja2.TemplateNotFound(
                template,
                f"{template!r} is a link that leads outside the prompt folder {self.root}: "
                "copy the file into the folder instead",
            )
        return source, filename, uptodate


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) or not float(v).is_integer() else str(int(v))


def _split(text: str, images: list[PromptPhoto]) -> Conversation:
    """Cut rendered text at role and image marks into messages of parts."""
    messages: list[Message] = []
    role, parts, pos = "user", [], 0

    def flush_text(chunk: str) -> None:
        if chunk.strip():
            parts.append(TextPart(chunk))

    def flush_message() -> None:
        nonlocal parts
        if parts:
            messages.append(Message(role, _tidy(parts)))
        parts = []

    for mark in _MARK.finditer(text):
        flush_text(text[pos : mark.start()])
        pos = mark.end()
        kind, value = mark.groups()
        if kind == "role":
            flush_message()
            role = value
        else:
            photo = images[int(value)]
            parts.append(ImagePart(photo.image, key=photo.key, make=photo.make))
    flush_text(text[pos:])
    flush_message()
    return messages


def _tidy(parts: list[Part]) -> tuple[Part, ...]:
    """Strip the blank lines a template leaves at a message's edges."""
    out = list(parts)
    if out and isinstance(out[0], TextPart):
        out[0] = TextPart(out[0].text.lstrip("\n"))
    if out and isinstance(out[-1], TextPart):
        out[-1] = TextPart(out[-1].text.rstrip())
    return tuple(p for p in out if not (isinstance(p, TextPart) and not p.text))
