"""The server backend at its edges: deadlines, the key, huge or deep replies, hidden causes.

Each fault comes from the test server on 127.0.0.1 and goes through the real backend;
each failure must be one line that says what happened and what to do.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from cropper.core.errors import ConfigError, VLMError
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.testing.openai_server import Fault, OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo
from cropper.vlm.base import Sampling
from cropper.vlm.openai_server import OpenAIServerVLM

KEY = "sk-cropper-edge-5eCr3t-0123456789abcdef"
FAST = {"model": "test-vlm", "timeout": 5.0, "backoff_initial": 0.01, "backoff_max": 0.05}
ONE = Sampling(n=1)
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def prompt(text: str = "Crop this.") -> list[Message]:
    return [Message("user", (TextPart(text), ImagePart(synthetic_photo(0, size=(32, 24)))))]


def ask(url: str, **options) -> list[list[str]]:
    """One reply to one prompt; the backend is closed after."""
    with OpenAIServerVLM(url, **{**FAST, **options}) as backend:
        return backend.generate([prompt()], ONE)


def failure(url: str, **options) -> VLMError:
    """The error one request ends in; it must be one line."""
    with pytest.raises(VLMError) as info:
        ask(url, **options)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    return info.value


@pytest.fixture
def server():
    with OpenAICompatibleServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("CROPPER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- 1. a deadline


def test_a_reply_trickled_a_byte_at_a_time_is_cut_at_the_timeout(server):
    # Each byte comes well within the timeout, so only a deadline on the whole request
    # ends it; without one, this request would take ~5 s and succeed.
    server.add_faults(Fault(trickle=0.01))
    error = failure(server.url, api_key=KEY, timeout=0.5, max_retries=0)
    assert "did not answer /chat/completions within 0.5 s" in str(error)
    assert "raise timeout=" in str(error) and error.retryable


def test_a_trickling_request_fails_its_photo_alone_and_the_connection_serves_again(server):
    server.add_faults(Fault(trickle=0.01))
    with OpenAIServerVLM(server.url, api_key=KEY, **{**FAST, "timeout": 0.5}) as backend:
        backend.concurrency = 1  # one connection: the trickled one is the one used next
        backend.max_retries = 0
        answers = backend.generate_each([prompt("a"), prompt("b"), prompt("c")], ONE)
        assert isinstance(answers[0], VLMError) and "within 0.5 s" in str(answers[0])
        assert all(isinstance(a, list) and len(a) == 1 for a in answers[1:])
        assert len(backend.generate([prompt("d")], ONE)[0]) == 1


# --------------------------------------------------------------------------- 2. the API key


@pytest.mark.parametrize("tail", ["\r", "\r\n", "\n", " ", "\t\r\n"])
@pytest.mark.parametrize("source", ["api_key=", "CROPPER_API_KEY", "OPENAI_API_KEY"])
def test_a_key_read_with_its_line_break_is_sent_without_it(
    server, no_key_in_environment, caplog, source, tail
):
    # CROPPER_API_KEY="$(cat key.txt)" of a file with CRLF line ends keeps the CR.
    options = {"api_key": " " + KEY + tail} if source == "api_key=" else {}
    if source != "api_key=":
        no_key_in_environment.setenv(source, KEY + tail)
    caplog.set_level(logging.DEBUG)
    assert len(ask(server.url, max_retries=1, **options)[0]) == 1
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    assert "retrying" not in caplog.text and KEY not in caplog.text


BAD_KEYS = {
    "CR inside": KEY[:20] + "\r" + KEY[20:],  # a line break inside: two keys pasted as one
    "NUL": KEY[:20] + "\x00" + KEY[20:],
    "DEL": KEY[:20] + "\x7f" + KEY[20:],
    "curly quotes": "\u201c" + KEY + "\u201d",  # pasted from a document
    "non-ASCII letter": KEY[:20] + "\u00e9" + KEY[20:],
}


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        pytest.param(source, bad, id=f"{source}-{name}")
        for source in ("api_key=", "CROPPER_API_KEY")
        for name, bad in BAD_KEYS.items()
        if not (source != "api_key=" and "\x00" in bad)  # no environment holds a NUL
    ],
)
def test_a_key_no_header_can_carry_is_refused_in_one_line_without_showing_it(
    no_key_in_environment, source, bad
):
    options = {"api_key": bad} if source == "api_key=" else {}
    if source != "api_key=":
        no_key_in_environment.setenv(source, bad)
    with pytest.raises(ConfigError) as info:
        OpenAIServerVLM("http://127.0.0.1:9/v1", **options)
    message = str(info.value)
    assert source in message and "not shown" in message and "\n" not in message
    assert "\r" not in message and KEY[:12] not in message and KEY[-12:] not in message


@pytest.mark.parametrize(
    ("raised", "cut_at_the_key"),
    [
        (httpx.RemoteProtocolError, False),
        (httpx.LocalProtocolError, False),
        (httpx.ReadError, True),  # the key where a long message is cut for the error line
        (httpx.ConnectError, False),
    ],
)
def test_the_key_is_blanked_from_transport_errors_their_reprs_and_logs(
    server, caplog, monkeypatch, raised, cut_at_the_key
):
    # httpx quotes a header it cannot send: "Illegal header value b'Bearer sk-...'".
    text = ("x" * 280 if cut_at_the_key else "Illegal header value ") + f"b'Bearer {KEY}'"

    async def send(self, request, **kwargs):
        raise raised(text, request=request)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    caplog.set_level(logging.DEBUG)
    error = failure(server.url, api_key=KEY, max_retries=2)
    shown = [str(error), repr(error), caplog.text]
    cause = error.__cause__ or error.__context__
    while cause is not None:  # what a traceback or an error tracker could show
        shown += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    for text_shown in shown:
        assert KEY[:10] not in text_shown and KEY[-10:] not in text_shown
    assert "***" in str(error)


# --------------------------------------------------------------------------- 3. huge replies


def test_a_gzip_bomb_is_stopped_past_the_reply_limit(server):
    # About 100 KB on the wire that decodes to 100 MB of JSON whitespace, then a valid reply.
    server.add_faults(Fault(bomb=100 * 2**20))
    error = failure(server.url, api_key=KEY, max_retries=0)
    assert "reply to /chat/completions of over 64 MB (decoded)" in str(error)
    assert "OpenAI-compatible server" in str(error) and not error.retryable


def test_a_reply_under_the_limit_passes_gzipped(server):
    server.add_faults(Fault(bomb=2**20))
    assert len(ask(server.url, api_key=KEY, max_retries=0)[0]) == 1


# --------------------------------------------------------------------------- 4. deep JSON


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(body="[" * 100_000), "sent JSON nested too deep to read for /chat/completions"),
        (Fault(body='{"a":' * 100_000), "sent JSON nested too deep to read"),
        (
            Fault(status=400, body="[" * 100_000),
            "HTTP 400: (a JSON body nested too deep to read)",
        ),
    ],
)
def test_json_nested_too_deep_is_one_line_not_a_recursion_error(server, fault, message):
    server.add_faults(fault)
    error = failure(server.url, api_key=KEY, max_retries=0)
    assert message in str(error) and not error.retryable


# --------------------------------------------------------------------------- 5. hidden causes


@pytest.mark.parametrize(
    ("body", "retried"),
    [
        ({"error": {"message": OOM, "type": "InternalServerError", "code": 500}}, True),
        ({"object": "error", "message": OOM, "type": "BadRequestError", "code": 400}, False),
        ({"error": OOM}, False),
    ],
)
def test_an_error_object_in_a_200_reply_says_what_the_server_said(server, body, retried):
    server.add_faults(Fault(body=body), Fault(body=body))
    error = failure(server.url, api_key=KEY, max_retries=1)
    assert OOM in str(error) and "not a chat completion" not in str(error)
    assert "answered /chat/completions with an error (HTTP 200" in str(error)
    assert "check" in str(error) and "log" in str(error)
    assert len(server.chat_requests) == (2 if retried else 1)


def test_a_413_says_the_photos_are_too_large_for_the_server(server):
    server.add_faults(Fault(status=413, message="Request Entity Too Large"))
    error = failure(server.url, api_key=KEY)
    assert "HTTP 413: Request Entity Too Large" in str(error)
    assert "too large for the server" in str(error) and "--pixel-budget" in str(error)
    assert "request size limit" in str(error) and not error.retryable


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_says_where_to_and_is_not_followed_to_another_host(server, status):
    with OpenAICompatibleServer() as elsewhere:
        location = elsewhere.url + "/chat/completions"
        server.add_faults(Fault(status=status, location=location, body=b""))
        error = failure(server.url, api_key=KEY)
        assert not elsewhere.requests  # neither the photos nor the key went there
    message = str(error)
    assert f"redirects /chat/completions (HTTP {status}) to {location}" in message
    assert f"give its URL, {elsewhere.url} (--vlm" in message
    assert error.every_request and not error.retryable


def test_a_redirect_without_a_location_says_so(server):
    server.add_faults(Fault(status=307, body=b""))
    assert "without saying where; check the URL" in str(failure(server.url, api_key=KEY))


def test_a_redirect_names_no_password(server):
    server.add_faults(Fault(status=307, location="http://alice:s3cret@127.0.0.1:9/v1", body=b""))
    message = str(failure(server.url, api_key=KEY))
    assert "s3cret" not in message and "***@127.0.0.1:9" in message


# --------------------------------------------------------------------------- 6. a query string


def test_a_url_with_a_query_keeps_it_after_the_endpoint(server):
    assert len(ask(server.url + "?api-version=2", api_key=KEY, model=None)[0]) == 1
    paths = [r.path for r in server.requests]
    assert paths == ["/v1/models?api-version=2", "/v1/chat/completions?api-version=2"]


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://h/v1", "http://h/v1/chat/completions"),
        ("http://h/v1?api-version=2", "http://h/v1/chat/completions?api-version=2"),
        ("http://h/openai/v1?a=1&b=2", "http://h/openai/v1/chat/completions?a=1&b=2"),
    ],
)
def test_endpoint_url_puts_the_endpoint_in_the_path(base, expected):
    from cropper.vlm.openai_wire import endpoint_url, normalize_base_url

    assert endpoint_url(normalize_base_url(base), "/chat/completions") == expected
    pasted = base.replace("/v1", "/v1/chat/completions")
    assert endpoint_url(normalize_base_url(pasted), "/chat/completions") == expected
