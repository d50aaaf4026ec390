"""The OpenAI-compatible server backend: vLLM, SGLang or any ``/v1/chat/completions``.

One ``POST /chat/completions`` per conversation asks for ``n`` replies; up to
``concurrency`` requests are in flight at once, so a server batching many
sequences (or many replicas behind one URL) stays busy. Requests run on one
background event loop that lives as long as the backend, over connections kept
open between ``generate`` calls; each photo is encoded once and its data URL
reused by later prompts (exemplars recur across rounds and photos). Failures
that may pass (timeouts, 408, 429, 5xx, a connection dropped or a reply cut
short, a refusal by a server reached before: a restart) are retried with
exponential backoff and jitter, honouring ``Retry-After``; the rest fail at
once, in one line with the server's own message and what to do. A server never
reached is not retried: a wrong URL or a server not started stays so.

``timeout`` is a deadline for each attempt, connect to last byte, however a server
spreads its reply out. A reply is read as it streams and refused past
:data:`REPLY_MAX_BYTES` decoded (a gzip bomb); an error object sent with HTTP 200 is
the server's error; redirects are reported, with where they point, never followed.
The API key is stripped of surrounding whitespace, refused (unshown) if a header
cannot carry it, and blanked out of every message, a server's or httpx's.

The payload and the reply are read and written by the pure functions of
:mod:`cropper.vlm.openai_wire`, testable without a server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import tenacity

from cropper.core.errors import ConfigError, VLMError
from cropper.core.fetch import show_url
from cropper.core.messages import Conversation
from cropper.vlm.base import VLM, Sampling, check_concurrency
from cropper.vlm.openai_wire import (
    IMAGE_MIME,
    ImageURLCache,
    NestedTooDeep,
    body_message,
    build_chat_request,
    decode_json,
    endpoint_url,
    error_in_body,
    normalize_base_url,
    one_line,
    parse_chat_reply,
    parse_retry_after,
    resolve_api_key,
    to_openai_messages,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The most bytes a server's reply may hold, after any gzip decoding (a chat completion
#: is kilobytes; a reply past this is a misbehaving server, or a gzip bomb).
REPLY_MAX_BYTES = 64 * 2**20

# A server asking for a longer pause than this is waited on for this long only.
_MAX_RETRY_AFTER = 60.0
# Seconds to wait for a connection; a reply may take the whole ``timeout``.
_CONNECT_TIMEOUT = 10.0
# Bytes of an error reply read for its message; the rest is not needed.
_MAX_ERROR_BODY = 64 * 2**10
# Seconds to wait for the background loop to wind down on close.
_CLOSE_WAIT = 5.0


# --------------------------------------------------------------------------- retries


def _status_error(message: str, status: int) -> VLMError:
    """A VLMError for an HTTP error status, which it keeps as ``status``.

    A plain VLMError, not a subclass: Ray and multiprocessing rebuild an error
    from its class and message, and tools read ``cropper.core.errors.VLMError`` in a
    remote traceback.
    """
    # A wrong key or a wrong model or URL refuses every request alike.
    every = status in (401, 403, 404)
    error = VLMError(message, retryable=_is_retryable_status(status), every_request=every)
    error.status = status  # type: ignore[attr-defined]
    return error


class _Transient(Exception):
    """A failure worth retrying: what happened, and what to do if retries run out."""

    def __init__(
        self,
        message: str,
        hint: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        shared: bool = False,
    ):
        super().__init__(message)  # what a retry logs: the hint is for the final error
        self.hint = hint
        self.retry_after = retry_after
        self.status = status
        self.shared = shared  # every request meets it (the server cannot be reached)
        self.repeated = False  # the same error twice: the server's answer, not its load

    def final(self, attempts: int) -> VLMError:
        """The one-line error raised when ``attempts`` tries all failed this way."""
        if self.repeated:
            message = (
                f"{self} (the same error on {attempts} attempts: the server fails this request "
                "every time, so it was not retried as load); check the server's log"
            )
            error = VLMError(message, retryable=False)
            error.status = self.status  # type: ignore[attr-defined]
            return error
        tries = f"gave up after {attempts} attempt{'s' * (attempts > 1)}"
        message = f"{self} ({tries}); {self.hint}"
        if self.status is not None:
            return _status_error(message, self.status)
        return VLMError(message, retryable=True, every_request=self.shared)


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


# --------------------------------------------------------------------------- event loop


class _Slots:
    """The requests in flight; each goes once fewer than its own call's bound are.

    Calls share the count, whatever their bounds: the two chunks of a batch in flight at
    once stay within the batch's bound together, and a call with a lower bound than the
    backend's configured one holds to it without changing it. Waiting requests go in
    the order they came. Used on the event loop's thread only.
    """

    def __init__(self) -> None:
        self.busy = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, bound: int) -> None:
        if not self._waiting and self.busy < bound:
            self.busy += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((bound, turn))
        self._wake()  # those ahead may all have been cancelled
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # let in as it was cancelled: the slot goes to the next
            else:
                self._wake()  # one waiting behind it may go now
            raise

    def release(self) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            bound, turn = self._waiting[0]
            if turn.done():  # cancelled while it waited
                self._waiting.popleft()
                continue
            if self.busy >= bound:
                return
            self._waiting.popleft()
            self.busy += 1
            turn.set_result(None)


class _Loop:
    """A background event loop thread and the connections it keeps open.

    ``generate`` is called from sync code (scripts, worker threads, notebooks
    whose own loop is busy). One long-lived loop lets connections outlive a call,
    where ``asyncio.run`` per call would close them. Each connection is its own
    single-connection client: httpx's shared pool costs CPU that grows with the
    connections it holds (encode/httpx#3215), 4x more per request at 32 in flight.
    """

    def __init__(self, headers: dict[str, str]):
        self.headers = headers
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._idle: list[httpx.AsyncClient] = []
        self._slots = _Slots()
        # Loading the CA bundle takes tens of ms: once, not once per connection.
        self._tls = httpx.create_ssl_context()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="cropper-openai-server", daemon=True
        )
        self.thread.start()

    @property
    def usable(self) -> bool:
        """False in a forked child (the thread did not come along) or after ``close``."""
        return self.pid == os.getpid() and self.thread.is_alive()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    @contextlib.asynccontextmanager
    async def lane(self, bound: int) -> AsyncIterator[httpx.AsyncClient]:
        """A request slot, taken once fewer than ``bound`` are; a connection of its own."""
        await self._slots.acquire(bound)
        try:
            client = self._idle.pop() if self._idle else self._client()
            try:
                yield client
            finally:
                if len(self._idle) < bound:
                    self._idle.append(client)
                else:
                    await client.aclose()
        finally:
            self._slots.release()

    def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return httpx.AsyncClient(limits=limits, headers=self.headers, verify=self._tls)

    def close(self) -> None:
        """Cancel what is in flight, close the connections and stop the thread."""
        if not self.usable:
            return
        if threading.current_thread() is self.thread:
            self.loop.call_soon(self.loop.stop)  # cannot wait for itself
            return
        try:
            self.submit(self._shutdown()).result(timeout=_CLOSE_WAIT)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            log.debug("closing the server backend's connections: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_CLOSE_WAIT)
        if not self.thread.is_alive():
            self.loop.close()

    async def _shutdown(self) -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.aclose() for c in idle), return_exceptions=True)


# --------------------------------------------------------------------------- backend


class OpenAIServerVLM(VLM):
    """A VLM served over the OpenAI chat-completions API (vLLM, SGLang, ...).

    ``base_url`` is the API root: ``http://localhost:8000/v1`` (``/v1`` is added
    to a bare ``http://host:port``). ``model`` defaults to the first the server
    lists at ``GET /models``; a named model is checked against that list. The
    API key comes from ``api_key``, else ``CROPPER_API_KEY``, else
    ``OPENAI_API_KEY``, and is sent as a Bearer token only. ``concurrency``
    (``max_concurrency`` is an alias) bounds the requests in flight
    (:attr:`max_in_flight`); a call's own ``concurrency`` (a batch's
    ``--concurrency``) bounds that call's instead, leaving it as it is. Calls
    overlap (:attr:`overlaps_calls`): the requests of several threads are in
    flight together, within the bound of each. ``close()`` (or a ``with`` block)
    releases the connections and the background thread.
    """

    overlaps_calls = True  # requests are served while the calling thread prepares more

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,  # seconds for one request, connect to last byte
        max_retries: int = 4,  # retries after the first try of each request
        concurrency: int = 16,  # requests in flight at once
        image_format: str = "JPEG",  # how images travel: JPEG, PNG or WEBP
        structured_outputs: bool = True,  # send the JSON schema as response_format
        backoff_initial: float = 0.5,  # first retry waits about this long (seconds)
        backoff_max: float = 10.0,  # no backoff wait is longer (Retry-After may be)
        image_cache_mb: float = 256.0,  # data URLs of sent photos kept for reuse
        max_concurrency: int | None = None,  # the older name of ``concurrency``
    ):
        self.base_url = normalize_base_url(base_url)
        if max_concurrency is not None:
            concurrency = max_concurrency
        if timeout <= 0 or max_retries < 0 or image_cache_mb < 0:
            raise ConfigError(
                "need timeout > 0, max_retries >= 0 and image_cache_mb >= 0; got "
                f"timeout={timeout}, max_retries={max_retries}, image_cache_mb={image_cache_mb}"
            )
        if image_format.upper() not in IMAGE_MIME:
            raise ConfigError(f"image_format {image_format!r} must be one of {sorted(IMAGE_MIME)}")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = concurrency
        self.image_format = image_format.upper()
        self.structured_outputs = structured_outputs
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.images = ImageURLCache(int(image_cache_mb * 2**20))
        key = resolve_api_key(api_key)
        # Kept only inside the headers: never in repr, logs or error messages.
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._key = key  # only to blank it out of what a server or httpx echoes back
        self._model_checked = False
        self._many_choices = True  # False once the server refused n > 1
        self._reached = False  # whether the server ever answered: a refusal then is a restart
        self._loop: _Loop | None = None
        self._loop_lock = threading.Lock()
        self.name = model or self.base_url

    def __repr__(self) -> str:
        key = "set" if self._headers else "none"
        return f"OpenAIServerVLM(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    @property
    def concurrency(self) -> int:
        """Requests in flight at most, as configured (each with a connection of its own)."""
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        check_concurrency(value)
        self._concurrency = value

    max_concurrency = concurrency  # the older name, kept working

    @property
    def max_in_flight(self) -> int:
        """Requests in flight at most when a call sets no ``concurrency`` of its own."""
        return self._concurrency

    @property
    def constrains_output(self) -> bool:  # type: ignore[override]
        """Whether the JSON schema is sent (``response_format``) for the server to hold to."""
        return self.structured_outputs

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        """Replies to every conversation; the first failure is raised for all."""
        return self._gather(conversations, sampling, each=False)  # type: ignore[return-value]

    def generate_each(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        *,
        concurrency: int | None = None,
    ) -> list[list[str] | VLMError]:
        """Replies, or each request's own error; one that every request meets is raised.

        When every request of several fails, the cause is shared (the server is failing
        or overloaded), and that is raised too, as an error that stops a batch. Up to
        ``concurrency`` requests are in flight, counting other calls' (default: the
        configured :attr:`concurrency`, which this leaves as it is).
        """
        check_concurrency(concurrency)
        answers = self._gather(conversations, sampling, each=True, bound=concurrency)
        errors = [a for a in answers if isinstance(a, VLMError)]
        if len(answers) > 1 and len(errors) == len(answers):
            raise VLMError(
                f"all {len(answers)} requests in flight failed; the first: {errors[0]}",
                retryable=errors[0].retryable,
                every_request=True,
            )
        return answers

    def _gather(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        *,
        each: bool,
        bound: int | None = None,
    ) -> list[list[str] | VLMError]:
        if sampling.n < 1:
            raise ConfigError(f"sampling.n must be at least 1; got {sampling.n}")
        if not conversations:
            return []
        loop = self._running_loop()
        if not self._model_checked:
            _results([loop.submit(self._check_model(loop))])
        assert self.model is not None
        failed = threading.Event()

        def ends_all(future: concurrent.futures.Future) -> bool:
            # Without ``each`` any failure ends the call; with it, only a shared one.
            if not _failed(future):
                return False
            error = future.exception()
            return not each or not isinstance(error, VLMError) or error.every_request

        futures: list[concurrent.futures.Future[list[str]]] = []
        try:
            # Each request leaves as soon as its payload is built, so encoding the
            # next photos overlaps the server's work on the first ones.
            for conversation in conversations:
                if failed.is_set():
                    break  # no use encoding the rest: the batch has failed
                messages = to_openai_messages(conversation, self.image_format, cache=self.images)
                body = build_chat_request(
                    messages, sampling, self.model, structured_outputs=self.structured_outputs
                )
                future = loop.submit(self._replies(loop, body, sampling.n, bound))
                future.add_done_callback(lambda f: ends_all(f) and failed.set())
                futures.append(future)
            if not each:
                return _results(futures)  # type: ignore[return-value]
            pending = set(futures)
            while pending:
                # A photo's own error ends the wait for it alone; a shared one ends the call.
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_EXCEPTION
                )
                for future in done:
                    if ends_all(future):
                        future.result()  # raises it
            answers: list[list[str] | VLMError] = []
            for future in futures:
                error = future.exception()
                answers.append(error if isinstance(error, VLMError) else future.result())
            return answers
        finally:
            for future in futures:
                future.cancel()  # the rest of a failed or interrupted batch

    def close(self) -> None:
        """Close the connections and stop the background thread; a later call reopens them."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    # ------------------------------------------------------------------ internals

    def _running_loop(self) -> _Loop:
        with self._loop_lock:
            if self._loop is None or not self._loop.usable:
                self._loop = _Loop(self._headers)
                # A backend dropped without close() still stops its thread.
                weakref.finalize(self, self._loop.close)
            return self._loop

    async def _replies(self, loop: _Loop, body: dict, n: int, bound: int | None) -> list[str]:
        """``n`` replies; asks again for the rest if a server returns fewer (ignores ``n``).

        A server that refuses ``n`` above 1 (llama.cpp answers HTTP 500 "Only one
        completion choice is allowed") is asked once with ``n`` 1; when that works, every
        later request asks for one reply at a time.
        """
        texts: list[str] = []
        while len(texts) < n:
            want = n - len(texts) if self._many_choices else 1
            request = {**body, "n": want}
            if texts and "seed" in request:
                request["seed"] = body["seed"] + len(texts)  # new seed, new replies
            try:
                reply = await self._call(loop, "POST", "/chat/completions", request, bound)
            except VLMError as exc:
                if want == 1 or exc.every_request or exc.retryable:
                    raise
                reply = await self._call(
                    loop, "POST", "/chat/completions", {**request, "n": 1}, bound
                )
                if self._many_choices:
                    self._many_choices = False
                    log.warning(
                        "the VLM server at %s refused n=%d (%s) and answered n=1: asking for "
                        "one reply a request from now on",
                        self.base_url,
                        want,
                        exc,
                    )
            try:
                got = parse_chat_reply(reply)
            except ValueError as exc:
                raise VLMError(
                    f"the VLM server at {self.base_url} sent a reply that is not a chat "
                    f"completion ({exc}); is it an OpenAI-compatible server?"
                ) from None
            if not got:
                raise VLMError(
                    f"the VLM server at {self.base_url} sent a reply with no choices; "
                    "check the server's log"
                )
            texts.extend(got)
        return texts[:n]

    async def _check_model(self, loop: _Loop) -> None:
        """Pick the served model when none was named; check a named one is served."""
        if self._model_checked:
            return
        try:
            listing = await self._call(loop, "GET", "/models")
            served = [m["id"] for m in listing["data"] if isinstance(m.get("id"), str)]
        except VLMError as exc:
            if self.model is not None and getattr(exc, "status", None) == 404:
                self._model_checked = True  # a server without /models: trust the name
                return
            raise
        except (KeyError, TypeError, AttributeError):
            raise VLMError(
                f"the VLM server at {self.base_url} answered GET /models without a model "
                "list; name the model with --model NAME (Python: model=)",
                every_request=True,
            ) from None
        if not served:
            raise VLMError(
                f"the VLM server at {self.base_url} serves no model; check its launch",
                every_request=True,
            )
        if self.model is None and len(served) > 1:
            # Their order is the server's (transformers serve lists every cached model, text
            # models too, in an order that changes between restarts): guessing is wrong.
            raise VLMError(
                f"the VLM server at {self.base_url} serves {len(served)} models "
                f"({_listing(served)}); name the vision-language model to use with --model NAME "
                "(Python: model=)",
                every_request=True,
            )
        if self.model is None:
            self.model = served[0]
            self.name = self.model
            log.info("using model %s served at %s", self.model, self.base_url)
        elif self.model not in served:
            raise VLMError(
                f"model {self.model!r} is not served at {self.base_url}; it serves "
                f"{_listing(served)}: name one of them with --model NAME (Python: model=)",
                every_request=True,
            )
        self._model_checked = True

    async def _call(
        self,
        loop: _Loop,
        method: str,
        endpoint: str,
        body: dict | None = None,
        bound: int | None = None,
    ) -> Any:
        """One API call in one request slot, with retries; returns the decoded JSON body.

        The slot is taken once fewer than ``bound`` requests are in flight (default: the
        configured :attr:`concurrency`, read now: it may change between calls).

        A failure that may pass is retried; an HTTP 500 whose message repeats the last
        one's is not: the server fails that request every time, which no wait mends.
        """
        seen: set[str] = set()

        def worth_retrying(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome is not None else None
            if not isinstance(error, _Transient):
                return False
            if error.status == 500:
                if str(error) in seen:
                    error.repeated = True
                    return False
                seen.add(str(error))
            return True

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=_BackoffOrRetryAfter(self.backoff_initial, self.backoff_max),
            retry=worth_retrying,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async with loop.lane(bound or self.concurrency) as client:
                return await retrying(self._call_once, client, method, endpoint, body)
        except _Transient as exc:
            raise exc.final(retrying.statistics.get("attempt_number", 1)) from None

    async def _call_once(
        self, client: httpx.AsyncClient, method: str, endpoint: str, body: dict | None
    ) -> Any:
        # Read per request (it may change between calls); a host that never accepts
        # should not hold each attempt for the full timeout.
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, _CONNECT_TIMEOUT))
        url = endpoint_url(self.base_url, endpoint)
        failure: Exception
        try:
            # httpx's timeouts bound each wait; this bounds the request, connect to last
            # byte: a server sending a byte a second would hold it (and its batch) forever.
            response, raw = await asyncio.wait_for(
                self._exchange(client, method, url, body, timeout), self.timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = self._unreachable(exc)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            failure = _Transient(
                f"the VLM server at {self.base_url} did not answer {endpoint} within "
                f"{self.timeout:g} s",
                "raise timeout= if it is just slow, or check the server's load and log",
            )
        except httpx.TransportError as exc:
            # A reply cut short (a truncated body) or a connection closed under the
            # request: a server restarting or crashing, or a proxy between.
            failure = _Transient(
                f"the VLM server at {self.base_url} dropped the connection during {endpoint} "
                f"({self._detail(exc)})",
                "it may have restarted or crashed: check that it is running, and its log",
            )
        except httpx.HTTPError as exc:  # a body its Content-Encoding does not decode
            failure = VLMError(
                f"the VLM server at {self.base_url} sent a reply to {endpoint} that cannot be "
                f"decoded ({self._detail(exc)}); check the server, or a proxy between"
            )
        else:
            return self._result(response, raw, endpoint, body)
        # Raised here, not in the except blocks: httpx's error (which may quote the
        # request's headers) is not kept as the context of cropper's.
        raise failure

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        body: dict | None,
        timeout: httpx.Timeout,
    ) -> tuple[httpx.Response, bytearray | None]:
        """The response and its body, decoded; ``None`` for a reply over REPLY_MAX_BYTES.

        Read as it streams and dropped past the limit, so a gzip bomb costs the limit and
        one decoded chunk, not what it inflates to. An error's body is cut to its start.
        """
        async with client.stream(method, url, json=body, timeout=timeout) as response:
            self._reached = True
            raw = bytearray()
            if 300 <= response.status_code < 400:
                return response, raw  # never followed: the error says where it points
            error = response.status_code >= 400
            limit = _MAX_ERROR_BODY if error else REPLY_MAX_BYTES
            async for chunk in response.aiter_bytes():
                if len(raw) + len(chunk) > limit:
                    if not error:
                        return response, None
                    raw += chunk[: limit - len(raw)]
                    break
                raw += chunk
            return response, raw

    def _unreachable(self, exc: httpx.TransportError) -> Exception:
        detail = "connect timed out" if isinstance(exc, httpx.ConnectTimeout) else None
        unreachable = _Transient(
            f"cannot reach the VLM server at {self.base_url} ({detail or self._detail(exc)})",
            "is it running, and is the URL right? start one with `vllm serve MODEL`",
            shared=True,
        )
        if not self._reached:
            # Never reached: a wrong URL or a server not started, which retries
            # seconds apart will not mend. Once reached, it is a restart: retry.
            return VLMError(
                f"{unreachable}; {unreachable.hint}", retryable=True, every_request=True
            )
        return unreachable

    def _result(
        self, response: httpx.Response, raw: bytearray | None, endpoint: str, body: dict | None
    ) -> Any:
        """The decoded JSON of a reply, or the error it amounts to (raised)."""
        status = response.status_code
        if 300 <= status < 400:
            raise self._redirect_error(response, endpoint)
        if raw is None:
            raise VLMError(
                f"the VLM server at {self.base_url} sent a reply to {endpoint} of over "
                f"{REPLY_MAX_BYTES // 2**20} MB (decoded), where a chat completion takes "
                "kilobytes; check that the URL is the API root of an OpenAI-compatible "
                "server, and the server's log"
            )
        if status >= 400:
            message = self._hide_key(body_message(raw, response.reason_phrase))
            what = f"the VLM server at {self.base_url} answered {endpoint} with HTTP {status}"
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise self._http_error(status, f"{what}: {message}", body, retry_after)
        try:
            decoded = decode_json(raw)
        except ValueError as exc:
            raise self._not_json(response, raw, endpoint, exc) from None
        error = error_in_body(decoded)
        if error is None:
            return decoded
        # An error object in a 200 reply: say what the server said.
        message, code = error
        what = (
            f"the VLM server at {self.base_url} answered {endpoint} with an error "
            f"(HTTP {status}{f', code {code}' if code else ''}): {self._hide_key(message)}"
        )
        if code is None:  # no status to judge it by: not retried, as before it was read
            raise VLMError(f"{one_line(what)}; check the server's log")
        raise self._http_error(code, what, body, None, or_else="check the server's log")

    def _not_json(
        self, response: httpx.Response, raw: bytearray, endpoint: str, why: ValueError
    ) -> VLMError:
        """The error of a reply that is not JSON: a web page, malformed or too deep."""
        if isinstance(why, NestedTooDeep):
            return VLMError(
                f"the VLM server at {self.base_url} sent JSON nested too deep to read for "
                f"{endpoint}; check that the URL is the API root of an OpenAI-compatible "
                "server, and the server's log"
            )
        # Redacted before it is cut, so no part of the key is left at the cut.
        text = bytes(raw[: 80 + 4 * len(self._key or "")]).decode("utf-8", errors="replace")
        snippet = one_line(self._hide_key(text)[:80]) or "(empty body)"
        kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
        if "json" not in kind:
            # A web page: the URL names a web app or a proxy, not the API itself.
            return VLMError(
                f"the VLM server at {self.base_url} answered {endpoint} with {kind}, not "
                f"JSON ({snippet}); check that the URL is the API root of an "
                "OpenAI-compatible server, such as http://localhost:8000/v1",
                every_request=True,
            )
        return VLMError(
            f"the VLM server at {self.base_url} sent malformed JSON for {endpoint}: {snippet}"
        )

    def _redirect_error(self, response: httpx.Response, endpoint: str) -> VLMError:
        """A redirect, never followed (it may lead to another host): where it points."""
        status = response.status_code
        location = response.headers.get("Location", "").strip()
        what = f"the VLM server at {self.base_url} redirects {endpoint} (HTTP {status})"
        if not location:
            return _status_error(f"{what} without saying where; check the URL", status)
        try:
            target = str(response.url.join(location))
        except (httpx.InvalidURL, ValueError):
            target = location
        try:
            root = normalize_base_url(target)
        except ConfigError:
            root = target
        message = (
            f"{what} to {show_url(self._hide_key(target))}; redirects are not followed: if "
            f"that is the server, give its URL, {show_url(self._hide_key(root))} (--vlm, "
            "Python: base_url=)"
        )
        error = VLMError(message, retryable=False, every_request=True)
        error.status = status  # type: ignore[attr-defined]
        return error

    def _http_error(
        self,
        status: int,
        what: str,
        body: dict | None,
        retry_after: float | None,
        *,
        or_else: str = "",
    ) -> Exception:
        """The error of an HTTP error status: ``what`` happened, with what to do.

        ``or_else`` is what to do when the status has no advice of its own.
        """
        if _is_retryable_status(status):
            if status == 429:
                hint = "it is rate-limiting: lower concurrency (--concurrency) or try again later"
            else:
                hint = (
                    "it is failing or overloaded: check its log, lower concurrency "
                    "(--concurrency), or try again later"
                )
            return _Transient(one_line(what), hint, retry_after=retry_after, status=status)
        hint = ""
        lowered = what.lower()
        if status in (401, 403):
            hint = "; set api_key= or the CROPPER_API_KEY environment variable"
        elif status == 404:
            hint = "; check the model name and the URL (the API root, e.g. http://host:8000/v1)"
        elif status == 413:
            hint = (
                "; the request, with its photos, is too large for the server: lower "
                "--pixel-budget or the exemplars sent (exemplars=), or raise the server's "
                "request size limit"
            )
        elif status == 400 and body and "response_format" in body:
            if any(w in lowered for w in ("response_format", "json_schema", "schema")):
                hint = "; if the server cannot constrain replies, pass structured_outputs=False"
        if not hint and or_else:
            hint = f"; {or_else}"
        return _status_error(f"{one_line(what)}{hint}", status)

    def _hide_key(self, text: str) -> str:
        """``text`` with the API key blanked out, as itself or as Python quotes it.

        A server may quote the request's headers; httpx quotes an illegal header value.
        """
        if not self._key:
            return text
        forms = {self._key, repr(self._key)[1:-1], repr(self._key.encode())[2:-1]}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text

    def _detail(self, exc: Exception) -> str:
        """An httpx error on one line, without the key; blanked before it is cut."""
        text = self._hide_key(" ".join(str(exc).split()))
        return f"{type(exc).__name__}: {one_line(text) or 'no detail'}"

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


def _listing(names: Sequence[str], shown: int = 8) -> str:
    """Model names for a message: the first ``shown``, then a count."""
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed}, and {len(names) - shown} more"


def _failed(future: concurrent.futures.Future) -> bool:
    return not future.cancelled() and future.exception() is not None


def _results(futures: list[concurrent.futures.Future[T]]) -> list[T]:
    """All results in order; the first failure is raised at once (the caller cancels the rest)."""
    done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for future in futures:
        if future in done and _failed(future):
            future.result()  # raises its exception
    return [future.result() for future in futures]
