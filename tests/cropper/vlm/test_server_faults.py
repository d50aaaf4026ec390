"""Every server fault through the real backend: bounded retries, then one clear line.

Faults come from the test server on 127.0.0.1 (``Fault``); the backend is built by
``load_vlm(url)`` as the command line builds it. Waits are read from the retry log
(``retrying in X s``), never timed. Faults tested elsewhere (400 and 422,
Retry-After in seconds on 429, a dropped connection, a slow reply, malformed
JSON) are in ``test_openai_server.py``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from cropper import vlm as vlm_registry
from cropper.cli.main import main
from cropper.core.errors import VLMError
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.testing.openai_server import Fault, OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo
from cropper.vlm import load_vlm
from cropper.vlm.base import Sampling
from cropper.vlm.schema import boxes_schema

SAMPLING = Sampling(n=2, json_schema=boxes_schema(6, "norm1000"))
# Retries a few ms apart, so that a test waits only where a server says to.
FAST = {"model": "test-vlm", "timeout": 5.0, "backoff_initial": 0.01, "backoff_max": 0.05}
NO_MODELS = ["--clip", "none", "--head", "none", "--index", "none"]


def prompt() -> list[Message]:
    image = synthetic_photo(0, size=(64, 48))
    return [Message("user", (TextPart("Crop this."), ImagePart(image, key="q")))]


def ask(url: str, **options):
    """Two replies to one prompt from ``load_vlm(url)``; the backend is closed after."""
    backend = load_vlm(url, **{**FAST, **options})
    try:
        return backend.generate([prompt()], SAMPLING)
    finally:
        backend.close()


def waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The seconds each logged retry waited, in order."""
    return [float(w) for w in re.findall(r"retrying in ([\d.]+) s", caplog.text)]


def assert_valid(replies: list[list[str]]) -> None:
    assert len(replies) == 1 and len(replies[0]) == 2
    assert all(json.loads(reply)["crops"] for reply in replies[0])


def in_two_seconds() -> str:
    """An HTTP date 1 to 2 s ahead (the format has whole seconds)."""
    return email.utils.formatdate(time.time() + 2.0, usegmt=True)


@pytest.fixture
def server():
    with OpenAICompatibleServer() as srv:
        yield srv


@pytest.fixture
def retry_log(caplog):
    caplog.set_level(logging.WARNING, logger="cropper.vlm.openai_server")
    return caplog


# --------------------------------------------------------------------------- retried, then answered


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize(
    ("retry_after", "faults", "low", "high"),
    [
        (None, 2, 0.0, FAST["backoff_max"]),  # backoff: small here
        (0.2, 2, 0.2, 0.2),  # seconds: exactly as told
        (in_two_seconds, 1, 0.1, 2.0),  # an HTTP date: until then, however late the reply
    ],
    ids=["backoff", "retry-after-seconds", "retry-after-date"],
)
def test_a_transient_status_is_retried_waiting_as_told(
    server, retry_log, status, retry_after, faults, low, high
):
    for i in range(faults):
        told = retry_after() if callable(retry_after) else retry_after
        # Each a message of its own: an HTTP 500 that repeats its message is not load.
        server.add_faults(Fault(status=status, retry_after=told, message=f"busy ({i})"))
    assert_valid(ask(server.url, max_retries=3))
    assert len(server.chat_requests) == faults + 1 and server.pending_faults == 0
    logged = waits(retry_log)
    assert len(logged) == faults
    assert all(low <= wait <= high for wait in logged), logged
    assert f"HTTP {status}" in retry_log.text


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        (Fault(truncate=True), {}),  # Content-Length promises more, then the server closes
        (Fault(hang=True), {"timeout": 0.3}),  # never answers
        (
            Fault(
                status=502, body="<html><h1>502 Bad Gateway</h1></html>", content_type="text/html"
            ),
            {},
        ),  # a proxy's error page  # fmt: skip
    ],
    ids=["truncated-body", "hang", "proxy-error-page"],
)
def test_a_broken_reply_is_retried(server, retry_log, fault, options):
    server.add_faults(fault)
    assert_valid(ask(server.url, max_retries=2, **options))
    assert len(server.chat_requests) == 2 and len(waits(retry_log)) == 1


# --------------------------------------------------------------------------- the same fault forever


@pytest.mark.parametrize(
    ("fault", "options", "what", "to_do"),
    [
        (Fault(status=429, retry_after=0, message="slow down"), {},
         "HTTP 429: slow down", "lower concurrency (--concurrency)"),
        (Fault(status=503, retry_after=0, message="loading"), {},
         "HTTP 503: loading", "try again later"),
        (Fault(status=502, body="<html>\n<h1>Bad Gateway</h1></html>", content_type="text/html"),
         {}, "HTTP 502: <html> <h1>Bad Gateway</h1></html>", "check its log"),
        (Fault(truncate=True), {},
         "dropped the connection during /chat/completions (RemoteProtocolError", "restarted"),
        (Fault(drop=True), {},
         "dropped the connection during /chat/completions", "check that it is running"),
        (Fault(hang=True), {"timeout": 0.3},
         "did not answer /chat/completions within 0.3 s", "raise timeout="),
    ],
    ids=["429", "503", "502-html", "truncated", "dropped", "hang"],
)  # fmt: skip
def test_the_same_fault_forever_is_one_clear_line_after_max_retries_plus_one(
    server, fault, options, what, to_do
):
    server.add_faults(*[fault] * 6)
    with pytest.raises(VLMError) as info:
        ask(server.url, max_retries=2, **options)
    message = str(info.value)
    assert len(server.chat_requests) == 3  # max_retries + 1
    assert "\n" not in message and server.url in message
    assert what in message and "(gave up after 3 attempts)" in message and to_do in message
    assert info.value.retryable  # it may pass: only this request failed, not every photo's


def test_the_same_http_500_twice_is_the_servers_answer_not_load(server):
    """A 500 with the same message again fails the same way every time: no more retries.

    With n > 1 the backend then asks once with n = 1 (a server may refuse n), which fails
    the same way: two requests each.
    """
    server.add_faults(*[Fault(status=500, message="boom")] * 6)
    with pytest.raises(VLMError) as info:
        ask(server.url, max_retries=4)
    message = str(info.value)
    assert len(server.chat_requests) == 4  # 2 with n = 2, then 2 with n = 1; not 5 + 5
    assert [r.body["n"] for r in server.chat_requests] == [2, 2, 1, 1]
    assert "HTTP 500: boom" in message and "the same error on 2 attempts" in message
    assert "not retried as load" in message and "\n" not in message
    assert not info.value.retryable and not info.value.stops_batch


def test_no_retries_means_one_attempt(server):
    server.add_faults(*[Fault(status=503)] * 3)
    with pytest.raises(VLMError, match=r"HTTP 503.*gave up after 1 attempt\)"):
        ask(server.url, max_retries=0)
    assert len(server.chat_requests) == 1


# --------------------------------------------------------------------------- never retried


@pytest.mark.parametrize(
    ("fault", "what", "to_do"),
    [
        (Fault(status=401, message="Incorrect API key provided."),
         "HTTP 401: Incorrect API key provided.", "CROPPER_API_KEY"),
        (Fault(status=403, message="forbidden"), "HTTP 403: forbidden", "set api_key="),
        (Fault(status=404, message="Not Found"), "HTTP 404: Not Found",
         "check the model name and the URL (the API root"),
        (Fault(body="<!doctype html><title>Open WebUI</title>", content_type="text/html"),
         "answered /chat/completions with text/html, not JSON (<!doctype html>",
         "check that the URL is the API root of an OpenAI-compatible server"),
        (Fault(body={"object": "list", "data": []}),
         "sent a reply that is not a chat completion (no 'choices' list)",
         "OpenAI-compatible server"),
        (Fault(body={"id": "x", "choices": [{"index": 0, "text": "(1, 2, 3, 4)"}]}),
         "not a chat completion (choice 0 has no 'message')", "OpenAI-compatible"),
        (Fault(body={"id": "x", "choices": []}), "sent a reply with no choices",
         "check the server's log"),
    ],
    ids=["401", "403", "404", "200-html", "200-json-list", "200-completions-api", "200-no-choices"],
)  # fmt: skip
def test_a_fault_that_retrying_cannot_mend_fails_at_once(server, retry_log, fault, what, to_do):
    server.add_faults(*[fault] * 4)
    with pytest.raises(VLMError) as info:
        ask(server.url, max_retries=3)
    message = str(info.value)
    assert len(server.chat_requests) == 1 and waits(retry_log) == []
    assert "\n" not in message and server.url in message
    assert what in message and to_do in message
    assert not info.value.retryable


# --------------------------------------------------------------------------- unreachable, restarted


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_never_reached_fails_at_once_saying_what_to_do(retry_log):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    with pytest.raises(VLMError) as info:
        ask(url, max_retries=4, backoff_initial=30.0)  # a retry would hang the test
    message = str(info.value)
    assert message.startswith(f"cannot reach the VLM server at {url} (ConnectError")
    assert "is it running, and is the URL right?" in message and "vllm serve" in message
    assert "\n" not in message and info.value.retryable and waits(retry_log) == []


def test_a_refusal_by_a_server_reached_before_is_retried_through_its_restart(server, retry_log):
    backend = load_vlm(server.url, **{**FAST, "max_retries": 8, "backoff_max": 0.2})
    try:
        assert_valid(backend.generate([prompt()], SAMPLING))
        server.add_faults(Fault(restart=0.3))  # down for 0.3 s; 8 retries wait >= 1 s
        assert_valid(backend.generate([prompt()], SAMPLING))
    finally:
        backend.close()
    server.wait_restarted()
    assert len(server.chat_requests) == 3  # the cut request, and once more when back up
    assert "dropped the connection" in retry_log.text  # the request the stop cut
    assert "cannot reach" in retry_log.text  # refused while down: retried all the same


# --------------------------------------------------------------------------- the test server itself


def test_a_stopped_server_closes_its_connections_and_restarts_on_its_port():
    srv = OpenAICompatibleServer().start()
    url, port = srv.url, srv.port
    with httpx.Client(timeout=2) as client:  # keeps its connection alive between requests
        assert client.get(url + "/models").status_code == 200
        srv.stop()
        assert not srv.running
        with pytest.raises(httpx.TransportError):  # not answered by a stopped server
            client.get(url + "/models")
        srv.start()
        assert srv.port == port and srv.url == url
        assert client.get(url + "/models").status_code == 200
    srv.stop()
    again = OpenAICompatibleServer(port=port).start()  # a new server on the old port
    try:
        assert again.url == url and httpx.get(url + "/models", timeout=2).status_code == 200
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "body"),
    [
        (Fault(body="<html>hi</html>", content_type="text/html"), 200, "text/html",
         "<html>hi</html>"),
        (Fault(body={"a": 1}), 200, "application/json", '{"a": 1}'),
        (Fault(status=502, body="bad gateway", content_type="text/plain", retry_after="7"), 502,
         "text/plain", "bad gateway"),
    ],
)  # fmt: skip
def test_the_test_server_sends_the_body_a_fault_names(server, fault, status, content_type, body):
    server.add_faults(fault)
    reply = httpx.post(server.url + "/chat/completions", json={}, timeout=2)
    assert (reply.status_code, reply.headers["content-type"], reply.text) == (
        status,
        content_type,
        body,
    )
    assert reply.headers.get("retry-after") == fault.retry_after


# --------------------------------------------------------------------------- a batch, restarted


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for i in range(12):
        synthetic_photo(i, size=(120, 90)).save(folder / f"p{i:02d}.jpg")
    return folder


def crop_folder(shoot: Path, out: Path, url: str) -> list[str]:
    return ["crop", str(shoot), "--out", str(out), "--vlm", url, *NO_MODELS, "--concurrency", "2"]


def assert_each_photo_once(shoot: Path, out: Path) -> None:
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    photos = sorted(str(p) for p in shoot.glob("*.jpg"))
    assert sorted(line["image"] for line in lines) == photos  # each exactly once
    assert sorted(p.name for p in out.glob("*.jpg")) == [Path(p).name for p in photos]


def test_a_batch_survives_a_server_restart_with_nothing_lost_or_repeated(shoot, tmp_path, capsys):
    out = tmp_path / "out"
    with OpenAICompatibleServer() as server:
        # The 8th chat request (the third photo's rounds) takes the server down for 1 s.
        server.add_faults(*[Fault()] * 7, Fault(restart=1.0))
        argv = crop_folder(shoot, out, server.url)
        code = main(argv)
        server.wait_restarted()
        assert server.pending_faults == 0  # the restart did happen
        if code == 0:  # bridged: only the requests the stop cut were asked again
            assert 36 < len(server.chat_requests) <= 36 + 4  # 12 photos x 3 rounds
        if code != 0:  # retries did not bridge it: the run says why, and a rerun finishes
            err = capsys.readouterr().err
            assert code == 2 and f"the VLM server at {server.url}" in err
            assert main(argv) == 0
    assert_each_photo_once(shoot, out)


def test_a_batch_cut_by_a_restart_stops_clearly_and_a_rerun_finishes(
    shoot, tmp_path, capsys, monkeypatch
):
    def few_retries(spec, **kwargs):  # what a user gets with --max-retries 1, fast
        from cropper.vlm.openai_server import OpenAIServerVLM

        return OpenAIServerVLM(spec, **kwargs, max_retries=1, backoff_initial=0.01)

    entry = dataclasses.replace(vlm_registry.BACKENDS["http://"], build=few_retries)
    monkeypatch.setitem(vlm_registry.BACKENDS, "http://", entry)
    out = tmp_path / "out"
    with OpenAICompatibleServer() as server:
        # Photos go 4 at a time, 3 rounds each: by the 16th request, some are done.
        server.add_faults(*[Fault()] * 15, Fault(restart=1.0))  # retries end within 0.1 s
        argv = crop_folder(shoot, out, server.url)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        # The last try of the request that failed first was refused, or cut by the stop.
        assert err.startswith("cropper: error: ") and f"VLM server at {server.url}" in err
        assert "cannot reach" in err or "dropped the connection" in err
        assert "gave up after 2 attempts" in err and "running" in err
        done = (out / "results.jsonl").read_text().count("\n")
        assert 1 <= done < 12  # the photos finished before the stop are kept
        server.wait_restarted()
        asked = len(server.chat_requests)
        assert main(argv) == 0
        assert f"{done} photos already done" in capsys.readouterr().err
        assert len(server.chat_requests) - asked == 3 * (12 - done)  # none asked twice
    assert_each_photo_once(shoot, out)


def test_a_batch_refused_alike_for_every_photo_stops_at_once(tmp_path, capsys):
    """A wrong key (or model, or URL) fails every photo the same way: one line, not N."""
    import pickle

    from cropper.cli.main import main
    from cropper.testing.synthetic import synthetic_photo

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        synthetic_photo(i, size=(96, 72), discs=3).save(photos / f"p{i}.jpg")
    with OpenAICompatibleServer(api_key="the-right-key") as server:
        code = main(["crop", str(photos), "--out", str(tmp_path / "out"), "--vlm", server.url,
                     "--api-key", "a-wrong-key", "--clip", "none", "--head", "none",
                     "--index", "none", "--concurrency", "2"])  # fmt: skip
        asked = len(server.chat_requests)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "HTTP 401" in err[0], err
    assert asked <= 4  # the first requests in flight, not one per photo
    refused = VLMError("HTTP 401", every_request=True)
    assert pickle.loads(pickle.dumps(refused)).stops_batch  # as Ray hands it back
