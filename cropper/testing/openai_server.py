"""A local OpenAI-compatible server for tests: strict, fault-injecting, loopback only.

It speaks the real wire format (``GET /v1/models``, ``POST /v1/chat/completions``)
and validates requests as strictly as a real server, so a client that passes here
sends what vLLM accepts. Replies come from a pluggable ``responder``; queued
:class:`Fault` objects make chat requests fail in the ways servers do. ``latency``
and ``slots`` make it behave like a loaded model server: each chat request takes
``latency`` seconds in one of ``slots`` batch slots, the rest wait in a queue, so
it answers at most ``slots / latency`` requests a second (``ideal_throughput``).
A stop closes every connection, and a restart (:meth:`~OpenAICompatibleServer.restart`,
or ``Fault(restart=...)`` at a chosen request) comes back on the same port.

    with OpenAICompatibleServer(faults=[Fault(status=503)]) as server:
        vlm = OpenAIServerVLM(server.url)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import io
import json
import random
import re
import socket
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

from PIL import Image

#: Makes ``n`` reply texts (``None`` for a null content) from a chat request body; it may
#: raise :class:`RequestError` to answer with that HTTP error, as a real server refuses.
Responder = Callable[[dict[str, Any]], Sequence[str | None]]
#: Seconds a chat request takes: a constant, or computed from the request body.
Latency = Union[float, Callable[[dict[str, Any]], float]]  # noqa: UP007 (runtime alias)

_MAX_BODY = 64 * 1024 * 1024  # bytes; larger requests get 413
# Pending connections the socket queues; the socketserver default of 5 drops
# (and so delays by a SYN retry) most of a burst of concurrent clients.
_BACKLOG = 1024
_ROLES = {"system", "user", "assistant", "developer", "tool"}
_KNOWN_FIELDS = {
    "model",
    "messages",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "stream",
    "response_format",
    "structured_outputs",
    "user",
}
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, applied to the next chat request and then used up.

    ``Fault()`` with no field set answers normally: queue a few to let requests
    through before the one that fails.
    """

    status: int | None = None  # answer with this HTTP status and an OpenAI error body
    retry_after: float | str | None = None  # Retry-After header: seconds or an HTTP date
    delay: float = 0.0  # seconds to wait before answering (past a client's timeout)
    hang: bool = False  # never answer: hold the request until the server stops
    malformed: bool = False  # answer 200 with a body that is not JSON
    drop: bool = False  # close the connection without any reply
    truncate: bool = False  # a valid reply cut short: Content-Length promises more, then close
    body: str | bytes | dict | list | None = None  # answer this instead (JSON unless text)
    content_type: str = "application/json"  # the Content-Type sent with ``body``
    restart: float | None = None  # stop here (no reply to anything in flight), up again after s
    message: str = "injected fault"  # the error body's message
    trickle: float = 0.0  # send the reply, status line and headers too, a byte every this many s
    bomb: int = 0  # gzip the reply behind this many spaces: a small body, a huge decoded one
    location: str | None = None  # a Location header (with ``status=307`` and ``body=b""``)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received, as it arrived."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    body: Any = field(repr=False)  # the decoded JSON, or None


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def default_responder(request: dict[str, Any]) -> list[str]:
    """``n`` valid replies: instances of the request's JSON schema, else a crops list.

    Boxes (arrays of exactly four numbers) get ordered corners inside the
    schema's bounds; replies differ per choice and repeat for a repeated seed.
    """
    n = request.get("n", 1)
    schema = _request_schema(request)
    seed = request.get("seed")
    replies = []
    for index in range(n):
        rng = random.Random(f"{seed}:{index}" if seed is not None else None)
        if schema is None:
            replies.append(json.dumps({"crops": [_box(rng, 0, 1000, integer=True)]}))
        else:
            replies.append(json.dumps(schema_instance(schema, rng)))
    return replies


def schema_instance(schema: dict[str, Any], rng: random.Random) -> Any:
    """A random value valid for a (simple) JSON schema: the subset cropper's schemas use."""
    kind = schema.get("type")
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == "object":
        props = schema.get("properties", {})
        return {name: schema_instance(sub, rng) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items", {})
        low, high = schema.get("minItems", 0), schema.get("maxItems", schema.get("minItems", 0) + 3)
        if low == high == 4 and items.get("type") in ("number", "integer"):
            lo, hi = items.get("minimum", 0), items.get("maximum", 1000)
            return _box(rng, lo, hi, integer=items["type"] == "integer")
        return [schema_instance(items, rng) for _ in range(rng.randint(low, max(low, high)))]
    if kind in ("number", "integer"):
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 1000)
        return rng.randint(int(lo), int(hi)) if kind == "integer" else rng.uniform(lo, hi)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return "text"
    return None


def _box(rng: random.Random, lo: float, hi: float, *, integer: bool) -> list[float]:
    """Corners ``x0 < x1``, ``y0 < y1`` covering a fair part of ``[lo, hi]``."""
    span = hi - lo
    x0, y0 = (lo + span * rng.uniform(0.0, 0.3) for _ in range(2))
    x1, y1 = (lo + span * rng.uniform(0.7, 1.0) for _ in range(2))
    box = [x0, y0, x1, y1]
    return [int(round(v)) for v in box] if integer else [round(v, 4) for v in box]


def _request_schema(request: dict[str, Any]) -> dict[str, Any] | None:
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    so = request.get("structured_outputs")
    if isinstance(so, dict) and isinstance(so.get("json"), dict):
        return so["json"]
    return None


# --------------------------------------------------------------------------- validation


def validate_chat_request(body: Any, models: Sequence[str]) -> None:
    """Raise :class:`RequestError` where a real server would refuse the request."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        raise RequestError(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "'model' is required and must be a string", "model")
    if model not in models:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")
    if body.get("stream"):
        raise RequestError(400, "stream is not supported by this test server", "stream")
    _check_messages(body.get("messages"))
    n = body.get("n", 1)
    if not _is_int(n) or n < 1:
        raise RequestError(400, f"n must be an integer >= 1; got {n!r}", "n")
    temperature = body.get("temperature", 1.0)
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise RequestError(
            400, f"temperature must be in [0, 2]; got {temperature!r}", "temperature"
        )
    for name in ("max_tokens", "max_completion_tokens"):
        if name in body and (not _is_int(body[name]) or body[name] < 1):
            raise RequestError(400, f"{name} must be an integer >= 1; got {body[name]!r}", name)
    if "top_p" in body and (not _is_number(body["top_p"]) or not 0 < body["top_p"] <= 1):
        raise RequestError(400, f"top_p must be in (0, 1]; got {body['top_p']!r}", "top_p")
    if "top_k" in body and (not _is_int(body["top_k"]) or body["top_k"] < -1):
        raise RequestError(400, f"top_k must be an integer >= -1; got {body['top_k']!r}", "top_k")
    if "seed" in body and body["seed"] is not None and not _is_int(body["seed"]):
        raise RequestError(400, f"seed must be an integer; got {body['seed']!r}", "seed")
    if "response_format" in body:
        _check_response_format(body["response_format"])


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object", "messages")
        if message.get("role") not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {sorted(_ROLES)}", "messages")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise RequestError(400, f"{where}.content must be a string or a list of parts")
        for j, part in enumerate(content):
            _check_part(part, f"{where}.content[{j}]")


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise RequestError(400, f"{where} must be an object", "messages")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RequestError(400, f"{where}.text must be a string", "messages")
    elif kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else None
        if not isinstance(url, str):
            raise RequestError(400, f"{where}.image_url must be an object with a 'url'")
        decode_data_url(url, where)
    else:
        raise RequestError(400, f"{where}.type {kind!r} is not 'text' or 'image_url'", "messages")


def decode_data_url(url: str, where: str = "image_url") -> Image.Image:
    """The image of a base64 ``data:image/...`` URL; :class:`RequestError` if it is not one."""
    match = _DATA_URL.match(url)
    if not match:
        # A real server would fetch http(s) URLs; this one never leaves loopback.
        raise RequestError(400, f"{where}: only base64 data:image/... URLs are accepted")
    try:
        data = base64.b64decode(match.group(2), validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise RequestError(400, f"{where}: the image cannot be decoded ({exc})") from None
    return image


def _check_response_format(fmt: Any) -> None:
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise RequestError(
            400, "response_format.type must be 'text', 'json_object' or 'json_schema'"
        )
    if fmt["type"] != "json_schema":
        return
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError(400, "response_format.json_schema must be an object")
    if not isinstance(spec.get("name"), str) or not _SCHEMA_NAME.match(spec["name"]):
        raise RequestError(400, "response_format.json_schema.name must match [A-Za-z0-9_-]{1,64}")
    schema = spec.get("schema")
    if not isinstance(schema, dict) or "type" not in schema:
        raise RequestError(400, "response_format.json_schema.schema must be a JSON schema object")
    if "strict" in spec and not isinstance(spec["strict"], bool):
        raise RequestError(400, "response_format.json_schema.strict must be a boolean")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- server


class OpenAICompatibleServer:
    """A real HTTP server on ``127.0.0.1`` (a free port), run in a background thread.

    ``faults`` queue up misbehaviours, one used per chat request. ``requests``
    records every request received; ``max_in_flight`` the most chat requests
    received and not yet answered at once (queued ones included), ``max_busy``
    the most holding a slot at once. ``latency`` (seconds, or a function of the
    request body) is how long a valid chat request holds one of ``slots`` slots
    (``None``: unlimited). ``api_key``, when set, is required as a Bearer token.
    ``port`` 0 takes a free port; a server stopped and started again keeps its
    port (and ``url``), as a restarted real one does.
    """

    def __init__(
        self,
        models: Sequence[str] = ("test-vlm",),
        *,
        responder: Responder | None = None,
        faults: Iterable[Fault] = (),
        api_key: str | None = None,
        latency: Latency = 0.0,
        slots: int | None = None,
        port: int = 0,
    ):
        if not models:
            raise ValueError("the server must serve at least one model")
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be at least 1 or None (unlimited); got {slots}")
        if not callable(latency) and latency < 0:
            raise ValueError(f"latency must be >= 0 seconds; got {latency}")
        self.models = list(models)
        self.responder = responder or default_responder
        self.api_key = api_key
        self.latency = latency
        self.slots = slots
        self._slots = threading.BoundedSemaphore(slots) if slots is not None else None
        self._busy = 0
        self.max_busy = 0
        self._faults: deque[Fault] = deque(faults)
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Open client connections: a stop closes them, as a real server's exit does.
        self._connections: set[socket.socket] = set()
        self._port = port
        self._lifecycle = threading.RLock()  # start, stop and restart one at a time
        self._restarts: list[threading.Thread] = []
        self._in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> OpenAICompatibleServer:
        """Serve on ``port`` (a free one the first time if 0, the same one after a stop)."""
        with self._lifecycle:
            if self._httpd is not None:
                return self
            # A fresh event: handlers of the last run that still wait keep seeing theirs set.
            self._stopping = threading.Event()
            handler = type("Handler", (_Handler,), {"app": self})
            # HTTPServer sets SO_REUSEADDR, so a restart rebinds the port at once.
            server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": _BACKLOG})
            self._httpd = server_class(("127.0.0.1", self._port), handler)
            self._httpd.daemon_threads = True
            self._port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
            return self

    def stop(self) -> None:
        """Stop serving and close every connection; requests in flight get no reply."""
        with self._lifecycle:
            if self._httpd is None:
                return
            self._stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            with self._lock:
                connections, self._connections = self._connections, set()
            for connection in connections:
                # Else keep-alive connections outlive the stop and go on being served.
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def restart(self, after: float = 0.0) -> threading.Thread:
        """Stop now and start again on the same port ``after`` seconds later, in a thread."""

        def run() -> None:
            self.stop()
            time.sleep(after)
            self.start()

        thread = threading.Thread(target=run, name="test-server-restart", daemon=True)
        self._restarts.append(thread)
        thread.start()
        return thread

    def wait_restarted(self, timeout: float = 10.0) -> None:
        """Wait until every :meth:`restart` (a ``Fault(restart=...)`` too) has started again."""
        for thread in list(self._restarts):
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the test server did not restart within {timeout} s")

    @property
    def running(self) -> bool:
        """Whether the server is serving now (not stopped, nor between a stop and a start)."""
        return self._httpd is not None

    def __enter__(self) -> OpenAICompatibleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.wait_restarted()  # else a pending restart would start it again after the block
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the server is not running: call start() or use it in a with block")
        return self._port

    @property
    def url(self) -> str:
        """The API root to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ideal_throughput(self) -> float:
        """Chat requests a second when every slot is always busy: ``slots / latency``.

        Needs a fixed latency above zero and a number of slots.
        """
        if self.slots is None or callable(self.latency) or self.latency <= 0:
            raise ValueError("ideal_throughput needs slots and a fixed latency above zero")
        return self.slots / self.latency

    # ------------------------------------------------------------------ state

    def add_faults(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _work(self, body: dict[str, Any]) -> list[str | None] | None:
        """The responder's replies after ``latency`` in a slot; ``None`` when stopping."""
        if self._slots is not None:
            # Wait for a slot like a queued request does, but give up when stopping.
            while not self._slots.acquire(timeout=0.05):
                if self._stopping.is_set():
                    return None
        try:
            with self._lock:
                self._busy += 1
                self.max_busy = max(self.max_busy, self._busy)
            latency = self.latency(body) if callable(self.latency) else self.latency
            if latency > 0 and self._stopping.wait(latency):
                return None
            return list(self.responder(body))
        finally:
            with self._lock:
                self._busy -= 1
            if self._slots is not None:
                self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    app: OpenAICompatibleServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    trickle = 0.0  # seconds between the bytes of this request's reply (a fault's)
    # Headers and body go out in two writes: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK (tens of ms) on every reply.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead of stderr."""

    def setup(self) -> None:
        super().setup()
        with self.app._lock:
            self.app._connections.add(self.connection)
        if self.server is not self.app._httpd:  # accepted just as its server stopped
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.app._lock:
            self.app._connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the stop may have cut the socket already
            super().finish()

    def do_GET(self) -> None:
        self._record(None)
        if not self._authorized():
            return
        if _route(self.path) != "/v1/models":
            return self._error(RequestError(404, f"no route for GET {self.path}"))
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "cropper-test"}
            for m in self.app.models
        ]
        self._json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            return self._error(RequestError(413, f"request body over {_MAX_BODY} bytes"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        self._record(body)
        if not self._authorized():
            return
        if _route(self.path) != "/v1/chat/completions":
            return self._error(RequestError(404, f"no route for POST {self.path}"))
        self.app._enter()
        try:
            self._chat(raw, body)
        finally:
            self.app._leave()

    def _chat(self, raw: bytes, body: Any) -> None:
        fault = self.app._next_fault() or Fault()
        stopping = self.app._stopping
        if fault.restart is not None:
            self.app.restart(fault.restart)
            stopping.wait()  # this request goes down with the server
            self.close_connection = True
            return
        if (fault.hang and stopping.wait()) or (fault.delay and stopping.wait(fault.delay)):
            self.close_connection = True
            return  # stopping: give up on the reply
        if fault.drop:
            self.close_connection = True
            return
        self.trickle = fault.trickle
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if fault.location is not None:
            headers["Location"] = fault.location
        if fault.body is not None:
            payload = fault.body
            if not isinstance(payload, (str, bytes)):
                payload = json.dumps(payload)
            if isinstance(payload, str):
                payload = payload.encode()
            return self._send(fault.status or 200, payload, headers, fault.content_type)
        if fault.status is not None:
            return self._error(RequestError(fault.status, fault.message), headers)
        if fault.malformed:
            return self._send(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess')
        if body is None:
            return self._error(RequestError(400, "the request body is not valid JSON"))
        try:
            validate_chat_request(body, self.app.models)
        except RequestError as exc:
            return self._error(exc)
        try:
            texts = self.app._work(body)
        except RequestError as exc:  # the responder refused it, as a real server may
            return self._error(exc)
        if texts is None:
            self.close_connection = True
            return  # stopping: give up on the reply
        completion = _completion(body["model"], texts, prompt_bytes=len(raw))
        if fault.bomb:
            payload = _gzip_behind_spaces(json.dumps(completion).encode(), fault.bomb)
            return self._send(200, payload, {"Content-Encoding": "gzip"})
        if fault.truncate:
            payload = json.dumps(completion).encode()
            self.close_connection = True
            return self._send(200, payload[: len(payload) // 2], length=len(payload))
        self._json(200, completion)

    # ------------------------------------------------------------------ helpers

    def _record(self, body: Any) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.app._record(RecordedRequest(self.command, self.path, headers, body))

    def _authorized(self) -> bool:
        if self.app.api_key is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.app.api_key}":
            return True
        self._error(RequestError(401, "Incorrect API key provided."))
        return False

    def _error(self, exc: RequestError, headers: dict[str, str] | None = None) -> None:
        try:
            kind = HTTPStatus(exc.status).phrase.replace(" ", "")
        except ValueError:
            kind = "Error"
        error = {"message": str(exc), "type": kind, "param": exc.param, "code": exc.status}
        self._json(exc.status, {"error": error}, headers)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), headers)

    def _send(
        self,
        status: int,
        payload: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        length: int | None = None,  # the Content-Length claimed; a truncated reply claims more
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload) if length is None else length))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if not self.trickle:
                self.end_headers()
                self.wfile.write(payload)
                return
            # Each read of the client's gets a byte in time: only a deadline ends the wait.
            head, self._headers_buffer = b"".join(self._headers_buffer) + b"\r\n", []
            self.close_connection = True
            for byte in head + payload:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if self.app._stopping.wait(self.trickle):
                    return
        except OSError:  # the client gave up (a timeout), or a stop cut the connection
            self.close_connection = True


def _route(path: str) -> str:
    """The path a request is served by: without its query string or a trailing slash."""
    return path.split("?", 1)[0].rstrip("/")


@functools.lru_cache(maxsize=4)
def _gzipped_spaces(size: int) -> tuple[bytes, Any]:
    """``size`` spaces through a gzip compressor: its output so far and its state."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * 2**20
    parts = [compressor.compress(block[: min(len(block), size - done)])
             for done in range(0, size, len(block))]  # fmt: skip
    return b"".join(parts), compressor


def _gzip_behind_spaces(payload: bytes, spaces: int) -> bytes:
    """A gzip body that decodes to ``spaces`` spaces, then ``payload``: still valid JSON."""
    head, compressor = _gzipped_spaces(spaces)
    compressor = compressor.copy()
    return head + compressor.compress(payload) + compressor.flush()


def _completion(model: str, texts: Sequence[str | None], prompt_bytes: int) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": "stop",
        }
        for i, text in enumerate(texts)
    ]
    completion_tokens = sum(len(t or "") // 4 + 1 for t in texts)  # a rough token count
    prompt_tokens = prompt_bytes // 4 + 1
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
