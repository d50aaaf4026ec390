"""The OpenAI-compatible server backend: vLLM, SGLang or any ``/v1/chat/completions``.

One ``POST /chat/completions`` per conversation asks for ``n`` replies; requests
run concurrently (up to ``max_concurrency`` in flight) so a server with many
replicas behind one URL stays busy. Failures that may pass (connection errors,
timeouts, 408, 429, 5xx) are retried with exponential backoff and jitter,
honouring ``Retry-After``; the rest fail at once with the server's own message.

The payload is built by pure functions (:func:`to_openai_messages`,
:func:`build_chat_request`), testable without a server.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import email.utils
import io
import json
import logging
import os
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import tenacity
from PIL import Image

from cropper.errors import ConfigError, VLMError
from cropper.messages import Conversation, ImagePart, TextPart
from cropper.vlm.base import VLM, Sampling

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Image formats a data URL may carry, with the MIME type each is sent as.
IMAGE_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

#: Environment variables read for the API key, in order, when none is passed.
API_KEY_ENV = ("CROPPER_API_KEY", "OPENAI_API_KEY")

# A server asking for a longer pause than this is waited on for this long only.
_MAX_RETRY_AFTER = 60.0
# Seconds to wait for a connection; a reply may take the whole ``timeout``.
_CONNECT_TIMEOUT = 10.0
# Server messages longer than this are cut in error lines.
_MAX_MESSAGE = 300


# --------------------------------------------------------------------------- payload


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


def to_openai_messages(
    conversation: Conversation,
    image_format: str = "JPEG",
    *,
    cache: dict[object, str] | None = None,
) -> list[dict[str, Any]]:
    """The OpenAI chat ``messages`` of a conversation.

    A message of text alone is sent as a plain string (every server and chat
    template accepts that); one with images as a list of ``text`` and
    ``image_url`` parts. ``cache`` maps an image (its ``key``, else the object)
    to its data URL, so a photo shared by several conversations is encoded once.
    """
    cache = {} if cache is None else cache
    messages: list[dict[str, Any]] = []
    for message in conversation:
        if all(isinstance(p, TextPart) for p in message.parts):
            messages.append({"role": message.role, "content": message.text})
            continue
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                ident = part.key or id(part.image)
                if ident not in cache:
                    cache[ident] = encode_image(part.image, image_format)
                content.append({"type": "image_url", "image_url": {"url": cache[ident]}})
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
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": sampling.n,
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
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


def server_message(response: httpx.Response) -> str:
    """The error message a server put in its body (OpenAI, vLLM or FastAPI form)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or body.get("message") or body.get("detail")
    if not message:
        message = response.text.strip() or response.reason_phrase or "no message"
    return _one_line(message if isinstance(message, str) else json.dumps(message))


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


# --------------------------------------------------------------------------- retries


class _HTTPStatusError(VLMError):
    """A VLMError for an HTTP error status, which it keeps."""

    def __init__(self, message: str, status: int):
        super().__init__(message, retryable=_is_retryable_status(status))
        self.status = status


class _Transient(Exception):
    """A failure worth retrying; ``final`` is the VLMError raised if retries run out."""

    def __init__(self, final: VLMError, retry_after: float | None = None):
        super().__init__(str(final))
        self.final = final
        self.retry_after = retry_after


def _is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


class _BackoffOrRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with jitter, unless the server said how long to wait."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = tenacity.wait_exponential_jitter(
            initial=initial, max=maximum, jitter=initial
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, _MAX_RETRY_AFTER)
        return self.backoff(retry_state)


# --------------------------------------------------------------------------- backend


class OpenAIServerVLM(VLM):
    """A VLM served over the OpenAI chat-completions API (vLLM, SGLang, ...).

    ``base_url`` is the API root: ``http://localhost:8000/v1`` (``/v1`` is added
    to a bare ``http://host:port``). ``model`` defaults to the first the server
    lists at ``GET /models``; a named model is checked against that list. The
    API key comes from ``api_key``, else ``CROPPER_API_KEY``, else
    ``OPENAI_API_KEY``, and is sent as a Bearer token only.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,  # seconds for one request, connect to last byte
        max_retries: int = 4,  # retries after the first try of each request
        max_concurrency: int = 16,  # requests in flight at once
        image_format: str = "JPEG",  # how images travel: JPEG, PNG or WEBP
        structured_outputs: bool = True,  # send the JSON schema as response_format
        backoff_initial: float = 0.5,  # first retry waits about this long (seconds)
        backoff_max: float = 10.0,  # no backoff wait is longer (Retry-After may be)
    ):
        self.base_url = normalize_base_url(base_url)
        if timeout <= 0 or max_retries < 0 or max_concurrency < 1:
            raise ConfigError(
                "need timeout > 0, max_retries >= 0 and max_concurrency >= 1; got "
                f"timeout={timeout}, max_retries={max_retries}, max_concurrency={max_concurrency}"
            )
        if image_format.upper() not in IMAGE_MIME:
            raise ConfigError(f"image_format {image_format!r} must be one of {sorted(IMAGE_MIME)}")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.image_format = image_format.upper()
        self.structured_outputs = structured_outputs
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        key = api_key or next((os.environ[v] for v in API_KEY_ENV if os.environ.get(v)), None)
        # Kept only inside the headers: never in repr, logs or error messages.
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._model_checked = False
        self.name = model or self.base_url

    def __repr__(self) -> str:
        key = "set" if self._headers else "none"
        return f"OpenAIServerVLM(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        if sampling.n < 1:
            raise ConfigError(f"sampling.n must be at least 1; got {sampling.n}")
        if not conversations:
            return []
        return _run_sync(self._generate(list(conversations), sampling))

    def close(self) -> None:
        """Nothing to release: each ``generate`` opens and closes its own connections."""

    # ------------------------------------------------------------------ internals

    async def _generate(
        self, conversations: list[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(
            # A host that never accepts should not hold each attempt for the full timeout.
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, _CONNECT_TIMEOUT)),
            limits=limits,
            headers=self._headers,
        ) as client:
            await self._check_model(client)
            assert self.model is not None
            cache: dict[object, str] = {}
            bodies = [
                build_chat_request(
                    to_openai_messages(c, self.image_format, cache=cache),
                    sampling,
                    self.model,
                    structured_outputs=self.structured_outputs,
                )
                for c in conversations
            ]
            semaphore = asyncio.Semaphore(self.max_concurrency)
            return await _gather_or_cancel(
                [self._replies(client, semaphore, body, sampling.n) for body in bodies]
            )

    async def _replies(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, body: dict, n: int
    ) -> list[str]:
        """``n`` replies; asks again for the rest if a server returns fewer (ignores ``n``)."""
        texts: list[str] = []
        while len(texts) < n:
            request = {**body, "n": n - len(texts)}
            if texts and "seed" in request:
                request["seed"] = body["seed"] + len(texts)  # new seed, new replies
            async with semaphore:
                reply = await self._call(client, "POST", "/chat/completions", request)
            try:
                got = parse_chat_reply(reply)
            except ValueError as exc:
                raise VLMError(
                    f"the VLM server at {self.base_url} sent a reply that is not a chat "
                    f"completion ({exc}); is it an OpenAI-compatible server?"
                ) from None
            if not got:
                raise VLMError(f"the VLM server at {self.base_url} sent a reply with no choices")
            texts.extend(got)
        return texts[:n]

    async def _check_model(self, client: httpx.AsyncClient) -> None:
        """Pick the served model when none was named; check a named one is served."""
        if self._model_checked:
            return
        try:
            listing = await self._call(client, "GET", "/models")
            served = [m["id"] for m in listing["data"] if isinstance(m.get("id"), str)]
        except VLMError as exc:
            if self.model is not None and getattr(exc, "status", None) == 404:
                self._model_checked = True  # a server without /models: trust the name
                return
            raise
        except (KeyError, TypeError, AttributeError):
            raise VLMError(
                f"the VLM server at {self.base_url} answered GET /models without a model "
                "list; pass model= explicitly"
            ) from None
        if not served:
            raise VLMError(f"the VLM server at {self.base_url} serves no model; check its launch")
        if self.model is None:
            self.model = served[0]
            self.name = self.model
            log.info("using model %s served at %s", self.model, self.base_url)
        elif self.model not in served:
            raise VLMError(
                f"model {self.model!r} is not served at {self.base_url}; it serves "
                f"{', '.join(served)}: pass one of them as model="
            )
        self._model_checked = True

    async def _call(
        self, client: httpx.AsyncClient, method: str, endpoint: str, body: dict | None = None
    ) -> Any:
        """One API call with retries; returns the decoded JSON body."""
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=_BackoffOrRetryAfter(self.backoff_initial, self.backoff_max),
            retry=tenacity.retry_if_exception_type(_Transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return await retrying(self._call_once, client, method, endpoint, body)
        except _Transient as exc:
            attempts = self.max_retries + 1
            raise VLMError(
                f"{exc.final} (gave up after {attempts} attempt{'s' * (attempts > 1)})",
                retryable=True,
            ) from None

    async def _call_once(
        self, client: httpx.AsyncClient, method: str, endpoint: str, body: dict | None
    ) -> Any:
        url = self.base_url + endpoint
        try:
            response = await client.request(method, url, json=body)
        except httpx.ConnectTimeout:
            raise _Transient(self._unreachable("connect timed out")) from None
        except httpx.TimeoutException:
            raise _Transient(
                VLMError(
                    f"the VLM server at {self.base_url} did not answer {endpoint} within "
                    f"{self.timeout:g} s; raise timeout= or check the server's load",
                    retryable=True,
                )
            ) from None
        except httpx.TransportError as exc:
            detail = f"{type(exc).__name__}: {_one_line(str(exc)) or 'no detail'}"
            raise _Transient(self._unreachable(detail)) from None
        if response.status_code >= 400:
            raise self._http_error(response, endpoint, body)
        try:
            return response.json()
        except ValueError:
            raise VLMError(
                f"the VLM server at {self.base_url} sent malformed JSON for {endpoint}: "
                f"{_one_line(response.text[:80]) or '(empty body)'}"
            ) from None

    def _unreachable(self, detail: str) -> VLMError:
        return VLMError(
            f"cannot reach the VLM server at {self.base_url} ({detail}); is it running? "
            "start one with `vllm serve MODEL`",
            retryable=True,
        )

    def _http_error(self, response: httpx.Response, endpoint: str, body: dict | None) -> Exception:
        status = response.status_code
        message = server_message(response)
        hint = ""
        if status in (401, 403):
            hint = "; set api_key= or the CROPPER_API_KEY environment variable"
        elif status == 400 and body and "response_format" in body:
            if any(w in message.lower() for w in ("response_format", "json_schema", "schema")):
                hint = "; if the server cannot constrain replies, pass structured_outputs=False"
        error = _HTTPStatusError(
            f"the VLM server at {self.base_url} answered {endpoint} with HTTP {status}: "
            f"{message}{hint}",
            status,
        )
        if _is_retryable_status(status):
            return _Transient(error, parse_retry_after(response.headers.get("Retry-After")))
        return error

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "retrying in %.2f s (attempt %d of %d): %s",
            wait,
            retry_state.attempt_number + 1,
            self.max_retries + 1,
            error,
        )


async def _gather_or_cancel(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """All results in order; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _run_sync(coroutine: Awaitable[T]) -> T:
    """Run a coroutine to the end from sync code, also under a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    # A loop already runs in this thread: run ours on a worker thread instead.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]
