"""The wire format of OpenAI's chat API, as pure functions testable without a server.

Where a request goes (:func:`normalize_base_url`, :func:`endpoint_url`) and with which
key (:func:`resolve_api_key`); what it carries (:func:`to_openai_messages`, photos as
data URLs that :class:`ImageURLCache` encodes once, :func:`build_chat_request`); and what
a reply says (:func:`parse_chat_reply`, :func:`parse_retry_after`, the error messages of
OpenAI, vLLM and FastAPI bodies). :mod:`cropper.vlm.openai_server` sends and retries.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from cropper.core.errors import ConfigError
from cropper.core.messages import Conversation, ImagePart, TextPart
from cropper.vlm.base import Sampling

log = logging.getLogger(__name__)

#: Image formats a data URL may carry, with the MIME type each is sent as.
IMAGE_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

#: Environment variables read for the API key, in order, when none is passed.
API_KEY_ENV = ("CROPPER_API_KEY", "OPENAI_API_KEY")

# Server messages longer than this are cut in error lines.
MAX_MESSAGE = 300



def normalize_base_url(url: str) -> str:
    """The API root ending in ``/v1`` or the user's own path.

    ``http://host:8000`` gains ``/v1`` (where vLLM and SGLang serve); a URL
    pasted with ``/chat/completions`` or ``/models`` loses that endpoint; any
    other path (a proxy's ``/openai/v1``) is kept as given.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(
            f"base_url must be a server URL like http://localhost:8000/v1; got {url!r}"
        )
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url {url!r} must look like http://localhost:8000/v1")
    path = parts.path.rstrip("/")
    for endpoint in ("/chat/completions", "/models"):
        path = path.removesuffix(endpoint)
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def endpoint_url(base_url: str, endpoint: str) -> str:
    """The URL of ``endpoint`` (``/chat/completions``) under the API root ``base_url``.

    The endpoint joins the path; a query string (``?api-version=2``) stays after it.
    """
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + endpoint, fragment=""))


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The API key to send: ``api_key``, else the first of :data:`API_KEY_ENV` set.

    Surrounding whitespace is dropped (``"$(cat key.txt)"`` of a file with CRLF line
    ends keeps a carriage return); a key that is empty then counts as not set. A key
    holding a control or non-ASCII character cannot travel in an HTTP header: that is a
    :class:`ConfigError` naming where the key came from, never showing the key.
    """
    sources = [("api_key= (--api-key)", api_key)]
    sources += [(f"${name}", os.environ.get(name)) for name in API_KEY_ENV]
    for source, value in sources:
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError(
                f"the API key in {source} must be a string; got {type(value).__name__}"
            )
        key = value.strip()
        if not key:
            continue
        bad = next((i for i, c in enumerate(key) if not " " <= c <= "~"), None)
        if bad is not None:
            kind = "a non-ASCII" if ord(key[bad]) > 127 else "a control"
            raise ConfigError(
                f"the API key in {source} holds {kind} character (character {bad + 1} of "
                f"{len(key)}; the key is not shown), which an HTTP header cannot carry; set "
                "it again as the plain key, without line breaks or quotes"
            )
        return key
    return None


def encode_image(image: Image.Image, image_format: str = "JPEG", quality: int = 90) -> str:
    """A ``data:`` URL holding the image, base64-encoded in ``image_format``."""
    fmt = image_format.upper()
    if fmt not in IMAGE_MIME:
        raise ConfigError(f"image_format {image_format!r} must be one of {sorted(IMAGE_MIME)}")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha or palette
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt != "PNG" else {}))
    return f"data:{IMAGE_MIME[fmt]};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class ImageURLCache:
    """Data URLs of recently sent photos, least recently used dropped past ``max_bytes``.

    A photo with a ``key`` is known by its key and size (in cropper the same key
    and size mean the same pixels: an exemplar's path and side, a query's path);
    one without by the image object itself, held weakly so that a new image
    reusing a dead one's ``id`` is never mistaken for it. Thread-safe.
    """

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._urls: OrderedDict[Hashable, tuple[str, weakref.ref | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._urls)

    def url(self, part: ImagePart, image_format: str = "JPEG") -> str:
        """The data URL of ``part``'s image, encoded now only if not cached."""
        image = part.image
        if part.key:
            ident: Hashable = ("key", part.key, image.size, image_format)
        else:
            ident = ("object", id(image), image_format)
        with self._lock:
            hit = self._urls.get(ident)
            if hit is not None and (hit[1] is None or hit[1]() is image):
                self._urls.move_to_end(ident)
                return hit[0]
        url = encode_image(image, image_format)  # outside the lock: the slow part
        with self._lock:
            old = self._urls.pop(ident, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._urls[ident] = (url, None if part.key else weakref.ref(image))
            self._bytes += len(url)
            while self._bytes > self.max_bytes and len(self._urls) > 1:
                _, (dropped, _ref) = self._urls.popitem(last=False)
                self._bytes -= len(dropped)
        return url


def to_openai_messages(
    conversation: Conversation,
    image_format: str = "JPEG",
    *,
    cache: ImageURLCache | None = None,
) -> list[dict[str, Any]]:
    """The OpenAI chat ``messages`` of a conversation.

    A message of text alone is sent as a plain string (every server and chat
    template accepts that); one with images as a list of ``text`` and
    ``image_url`` parts. ``cache`` keeps the data URLs, so a photo shared by
    several conversations, or sent again later, is encoded once.
    """
    cache = ImageURLCache() if cache is None else cache
    messages: list[dict[str, Any]] = []
    for message in conversation:
        if all(isinstance(p, TextPart) for p in message.parts):
            messages.append({"role": message.role, "content": message.text})
            continue
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                url = cache.url(part, image_format)
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": message.role, "content": content})
    return messages


def build_chat_request(
    messages: list[dict[str, Any]],
    sampling: Sampling,
    model: str,
    *,
    structured_outputs: bool = True,
) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for one conversation.

    A JSON schema goes in ``response_format`` (OpenAI's form, which vLLM >= 0.12
    honours; it dropped ``guided_json``).
    """
    body: dict[str, Any] = {"model": model, "messages": messages, **sampling.settings()}
    # The OpenAI name, which vLLM, SGLang, llama.cpp and transformers serve read first;
    # max_tokens, deprecated there, stays for servers that know only it (Ollama). top_k is
    # no OpenAI field, but vLLM, SGLang, llama.cpp and transformers serve read it.
    body["max_completion_tokens"] = sampling.max_tokens
    if sampling.json_schema is not None and structured_outputs:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "crops", "schema": sampling.json_schema, "strict": True},
        }
    return body


def parse_chat_reply(body: Any) -> list[str]:
    """The reply texts of a chat completion, by choice index; ``null`` content reads ``""``.

    Raises ``ValueError`` when the body is not a chat completion.
    """
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise ValueError("no 'choices' list")
    texts: list[tuple[int, str]] = []
    for position, choice in enumerate(body["choices"]):
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise ValueError(f"choice {position} has no 'message'")
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"choice {position} content is {type(content).__name__}, not text")
        if choice.get("finish_reason") == "length":
            log.debug("reply %d hit max_tokens and was cut", position)
        index = choice.get("index")
        texts.append((index if isinstance(index, int) else position, content or ""))
    return [text for _, text in sorted(texts, key=lambda t: t[0])]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def body_message(raw: bytes | bytearray, reason: str = "") -> str:
    """The error message in a server's reply body, whole; else the body, else ``reason``."""
    try:
        body = decode_json(raw)
    except NestedTooDeep:
        return "(a JSON body nested too deep to read)"
    except ValueError:
        body = None
    message = _message_in(body) if isinstance(body, dict) else None
    if message:
        return message
    return bytes(raw).decode("utf-8", errors="replace").strip() or reason or "no message"


class NestedTooDeep(ValueError):
    """JSON nested deeper than :func:`json.loads` can follow."""


def decode_json(raw: bytes | bytearray) -> Any:
    """The JSON value of a reply body; ``ValueError`` if it is not JSON.

    JSON nested too deep to decode is :class:`NestedTooDeep`, a ``ValueError`` too,
    rather than the ``RecursionError`` :func:`json.loads` raises.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise NestedTooDeep("JSON nested too deep to read") from None


def error_in_body(body: Any) -> tuple[str, int | None] | None:
    """The message and code of an error object sent in place of a result, else ``None``.

    Some servers and proxies answer HTTP 200 with OpenAI's ``{"error": {...}}`` or vLLM's
    ``{"object": "error", "message": ...}``. The code is an HTTP-like status (400-599)
    when the object carries one.
    """
    if not isinstance(body, dict) or "choices" in body or "data" in body:
        return None
    error = body.get("error")
    if body.get("object") != "error" and not (error and isinstance(error, (dict, str))):
        return None
    message = _message_in(body) or "no message"
    code = error.get("code") if isinstance(error, dict) else body.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else None
    return message, status


def _message_in(body: dict) -> str | None:
    error = body.get("error")
    message: Any = None
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    message = message or body.get("message") or body.get("detail")
    if not message:
        return None
    if isinstance(message, str):
        return message
    try:
        return json.dumps(message)
    except (RecursionError, TypeError, ValueError):
        return type(message).__name__


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
