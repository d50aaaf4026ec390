"""The OpenAI-compatible server backend, against a real local server with injected faults.

The pure functions of the wire format are in ``test_openai_wire.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from cropper.core.errors import ConfigError, VLMError
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.testing.openai_server import (
    Fault,
    OpenAICompatibleServer,
    RequestError,
    decode_data_url,
    default_responder,
)
from cropper.vlm import load_vlm
from cropper.vlm.base import Sampling
from cropper.vlm.openai_server import OpenAIServerVLM
from cropper.vlm.openai_wire import build_chat_request, to_openai_messages
from cropper.vlm.schema import boxes_schema

SCHEMA = boxes_schema(6, "norm1000")
FAST = {"timeout": 5.0, "backoff_initial": 0.01, "backoff_max": 0.05}


def photo(color: str = "red", size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, color)


def conversation(image: Image.Image, key: str = "", text: str = "Crop this.") -> list[Message]:
    return [
        Message("system", (TextPart("You crop photos."),)),
        Message("user", (TextPart(text), ImagePart(image, key=key), TextPart("Answer in JSON."))),
    ]


@pytest.fixture
def server():
    with OpenAICompatibleServer(models=["test-vlm", "other-vlm"]) as srv:
        yield srv


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- pure functions
# --------------------------------------------------------------------------- the server


def test_happy_path_n3_images_and_schema(server):
    shared = photo("red")
    vlm = OpenAIServerVLM(server.url, model="test-vlm", **FAST)
    convs = [conversation(shared, text="one"), conversation(shared, text="two")]
    replies = vlm.generate(convs, Sampling(n=3, json_schema=SCHEMA, seed=1))

    assert len(replies) == 2 and all(len(r) == 3 for r in replies)
    for reply in (r for rs in replies for r in rs):
        crops = json.loads(reply)["crops"]
        assert crops and all(len(c) == 4 and c[0] < c[2] and c[1] < c[3] for c in crops)
    chats = server.chat_requests
    assert len(chats) == 2  # one request per conversation, n replies each
    assert {c.body["messages"][1]["content"][0]["text"] for c in chats} == {"one", "two"}
    for chat in chats:
        assert chat.body["n"] == 3 and chat.body["model"] == "test-vlm"
        assert chat.body["response_format"]["json_schema"]["schema"] == SCHEMA
        url = chat.body["messages"][1]["content"][1]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert decode_data_url(url).size == shared.size


def test_the_one_model_served_is_discovered_from_models_and_bare_url():
    with OpenAICompatibleServer(models=["test-vlm"]) as server:
        vlm = OpenAIServerVLM(f"http://127.0.0.1:{server.port}", **FAST)  # no /v1
        assert vlm.model is None
        assert len(vlm.generate([conversation(photo())], Sampling(n=1))[0]) == 1
        assert vlm.model == "test-vlm" and vlm.name == "test-vlm"
        assert server.chat_requests[0].body["model"] == "test-vlm"
        assert [r.path for r in server.requests][:1] == ["/v1/models"]


def test_a_server_of_several_models_with_none_named_is_refused_with_the_list(server):
    """transformers serve lists every cached model, text ones too: never guess the first."""
    vlm = OpenAIServerVLM(server.url, **FAST)
    with pytest.raises(VLMError) as info:
        vlm.generate([conversation(photo())], Sampling(n=1))
    message = str(info.value)
    assert "serves 2 models (test-vlm, other-vlm)" in message and "--model NAME" in message
    assert info.value.stops_batch and "\n" not in message
    assert server.chat_requests == []  # nothing sent to a guessed model


def test_load_vlm_builds_server_backend(server):
    vlm = load_vlm(server.url, model="other-vlm", **FAST)
    assert isinstance(vlm, OpenAIServerVLM)
    vlm.generate([conversation(photo())], Sampling(n=1))
    assert server.chat_requests[0].body["model"] == "other-vlm"


def test_unknown_model_is_a_clear_error(server):
    vlm = OpenAIServerVLM(server.url, model="nope", **FAST)
    with pytest.raises(VLMError, match=r"'nope' is not served at .*test-vlm, other-vlm"):
        vlm.generate([conversation(photo())], Sampling(n=1))
    assert server.chat_requests == []


def test_server_error_then_success_is_retried(server):
    server.add_faults(Fault(status=500), Fault(status=503))
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=2, **FAST)
    replies = vlm.generate([conversation(photo())], Sampling(n=2, json_schema=SCHEMA))
    assert len(replies[0]) == 2
    assert len(server.chat_requests) == 3
    assert server.pending_faults == 0


def test_dropped_connection_is_retried(server):
    server.add_faults(Fault(drop=True))
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=1, **FAST)
    assert len(vlm.generate([conversation(photo())], Sampling(n=1))[0]) == 1
    assert len(server.chat_requests) == 2


def test_retry_after_is_honoured(server):
    server.add_faults(Fault(status=429, retry_after=1))
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=1, **FAST)
    start = time.monotonic()
    assert len(vlm.generate([conversation(photo())], Sampling(n=1))[0]) == 1
    assert time.monotonic() - start >= 1.0  # backoff alone would wait ~0.01 s
    assert len(server.chat_requests) == 2


def test_retries_run_out_with_a_clear_error(server):
    server.add_faults(*[Fault(status=503, message="overloaded")] * 3)
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=2, **FAST)
    with pytest.raises(VLMError, match="HTTP 503: overloaded .*after 3 attempts") as info:
        vlm.generate([conversation(photo())], Sampling(n=1))
    assert info.value.retryable
    assert len(server.chat_requests) == 3


def test_slow_reply_times_out_after_retries(server):
    server.add_faults(Fault(delay=3.0), Fault(delay=3.0))
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=1, **{**FAST, "timeout": 0.3})
    start = time.monotonic()
    with pytest.raises(VLMError, match=r"did not answer /chat/completions within 0.3 s") as info:
        vlm.generate([conversation(photo())], Sampling(n=1))
    assert time.monotonic() - start < 2.0
    assert info.value.retryable and "2 attempts" in str(info.value)
    assert len(server.chat_requests) == 2


def test_unreachable_server_fails_fast_and_clearly():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    vlm = OpenAIServerVLM(url, model="m", max_retries=1, **FAST)
    start = time.monotonic()
    with pytest.raises(VLMError) as info:
        vlm.generate([conversation(photo())], Sampling(n=1))
    message = str(info.value)
    assert time.monotonic() - start < 3.0
    assert "cannot reach" in message and url in message and "vllm serve" in message
    assert "\n" not in message


def test_malformed_json_is_a_clear_error_not_retried(server):
    server.add_faults(Fault(malformed=True))
    vlm = OpenAIServerVLM(server.url, model="test-vlm", **FAST)

    with pytest.raises(VLMError, match="malformed JSON") as info:
        vlm.generate([conversation(photo())], Sampling(n=1))
    assert not info.value.retryable
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize(
    ("fault", "sampling", "message"),
    [
        (
            Fault(status=400, message="bad request body"),
            Sampling(n=1),
            "HTTP 400: bad request body",
        ),
        (None, Sampling(n=1, temperature=5.0), r"HTTP 400: temperature must be in \[0, 2\]"),
        (Fault(status=422, message="cannot"), Sampling(n=1), "HTTP 422: cannot"),
    ],
)
def test_client_errors_are_not_retried(server, fault, sampling, message):
    if fault:
        server.add_faults(fault)
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=3, **FAST)
    with pytest.raises(VLMError, match=message) as info:
        vlm.generate([conversation(photo())], sampling)
    assert not info.value.retryable
    assert len(server.chat_requests) == 1


def test_null_content_reads_empty(server):
    server.responder = lambda request: [None] * request["n"]
    vlm = OpenAIServerVLM(server.url, model="test-vlm", **FAST)
    assert vlm.generate([conversation(photo())], Sampling(n=2)) == [["", ""]]


def test_server_ignoring_n_is_asked_again(server):
    server.responder = lambda request: [f"reply seed={request.get('seed')}"]
    vlm = OpenAIServerVLM(server.url, model="test-vlm", **FAST)
    replies = vlm.generate([conversation(photo())], Sampling(n=3, seed=10))
    assert replies == [["reply seed=10", "reply seed=11", "reply seed=12"]]
    assert [c.body["n"] for c in server.chat_requests] == [3, 2, 1]


def test_requests_in_flight_are_bounded(server):
    def slow(request):
        time.sleep(0.1)
        return default_responder(request)

    server.responder = slow
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_concurrency=2, **FAST)
    replies = vlm.generate([conversation(photo(), text=str(i)) for i in range(6)], Sampling(n=1))
    assert len(replies) == 6
    assert server.max_in_flight == 2
    # Order follows the conversations, whatever order the replies came back in.
    texts = [c.body["messages"][1]["content"][0]["text"] for c in server.chat_requests]
    assert sorted(texts) == [str(i) for i in range(6)]


def test_queued_requests_do_not_time_out_waiting_for_a_slot(server):
    def slow(request):
        time.sleep(0.2)
        return default_responder(request)

    server.responder = slow
    vlm = OpenAIServerVLM(
        server.url, model="test-vlm", max_concurrency=1, max_retries=0, **{**FAST, "timeout": 0.5}
    )
    # Four requests one at a time take 0.8 s, longer than the timeout of each.
    replies = vlm.generate([conversation(photo(), text=str(i)) for i in range(4)], Sampling(n=1))
    assert len(replies) == 4 and server.max_in_flight == 1


def test_generate_inside_a_running_event_loop(server):
    vlm = OpenAIServerVLM(server.url, model="test-vlm", **FAST)

    async def notebook_cell():
        return vlm.generate([conversation(photo())], Sampling(n=2))

    assert len(asyncio.run(notebook_cell())[0]) == 2


def test_api_key_is_sent_but_never_shown(caplog):
    secret = "sk-very-secret-123"
    with OpenAICompatibleServer(api_key=secret, faults=[Fault(status=500)]) as srv:
        vlm = OpenAIServerVLM(srv.url, api_key=secret, max_retries=1, **FAST)
        with caplog.at_level(logging.DEBUG):
            vlm.generate([conversation(photo())], Sampling(n=1))
        assert all(r.headers["authorization"] == f"Bearer {secret}" for r in srv.requests)
        assert secret not in repr(vlm) and "api_key=set" in repr(vlm)
        assert "retrying" in caplog.text  # the retry was logged ...
        assert secret not in caplog.text  # ... without the key

        wrong = OpenAIServerVLM(srv.url, api_key="sk-wrong-key", **FAST)
        with pytest.raises(VLMError, match="HTTP 401.*CROPPER_API_KEY") as info:
            wrong.generate([conversation(photo())], Sampling(n=1))
        assert "sk-wrong-key" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CROPPER_API_KEY": "a", "OPENAI_API_KEY": "b"}, "Bearer a"),
        ({"OPENAI_API_KEY": "b"}, "Bearer b"),
        ({}, None),
    ],
)
def test_api_key_from_environment(server, monkeypatch, env, expected):
    for name in ("CROPPER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    OpenAIServerVLM(server.url, model="test-vlm", **FAST).generate(
        [conversation(photo())], Sampling(n=1)
    )
    assert server.requests[-1].headers.get("authorization") == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"max_retries": -1}, {"max_concurrency": 0}, {"image_format": "GIF"}],
)
def test_bad_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        OpenAIServerVLM("http://127.0.0.1:1/v1", **kwargs)


# --------------------------------------------------------------------------- the fake's strictness


def _valid_body() -> dict:
    vlm_body = build_chat_request(
        to_openai_messages(conversation(photo())), Sampling(n=2, json_schema=SCHEMA), "test-vlm"
    )
    return json.loads(json.dumps(vlm_body))


def _set(path: str, value):
    def edit(body: dict) -> dict:
        target = body
        *keys, last = path.split(".")
        for key in keys:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
        return body

    return edit


@pytest.mark.parametrize(
    ("edit", "status", "message"),
    [
        (_set("model", "ghost"), 404, "does not exist"),
        (_set("n", 0), 400, "n must be"),
        (_set("temperature", "hot"), 400, "temperature"),
        (_set("messages", []), 400, "messages"),
        (_set("messages.1.role", "robot"), 400, "role"),
        (_set("messages.1.content.1.type", "image"), 400, "type"),
        (_set("messages.1.content.1.image_url.url", "data:image/png;base64,AAAA"), 400, "decoded"),
        (_set("messages.1.content.1.image_url.url", "http://x/a.jpg"), 400, "data:image"),
        (_set("response_format.json_schema.name", "bad name!"), 400, "name"),
        (_set("response_format.json_schema.schema", "{}"), 400, "schema"),
        (_set("response_format.type", "grammar"), 400, "response_format"),
        (_set("guided_json", {}), 400, "Unrecognized request argument"),
    ],
)
def test_fake_server_refuses_what_a_real_one_would(server, edit, status, message):
    reply = httpx.post(server.url + "/chat/completions", json=edit(_valid_body()), timeout=5)
    assert reply.status_code == status
    assert message in reply.json()["error"]["message"]
    assert reply.json()["error"]["code"] == status


def test_fake_server_speaks_the_wire_format(server):
    reply = httpx.post(server.url + "/chat/completions", json=_valid_body(), timeout=5).json()
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-")
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert all(c["message"]["role"] == "assistant" for c in reply["choices"])
    assert set(reply["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    models = httpx.get(server.url + "/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["test-vlm", "other-vlm"]


def test_fake_server_stops_cleanly_while_a_reply_waits():
    srv = OpenAICompatibleServer(faults=[Fault(delay=30.0)]).start()
    url = srv.url
    outcome: list[object] = []

    def post() -> None:
        try:
            outcome.append(httpx.post(url + "/chat/completions", json=_valid_body(), timeout=10))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=post)
    waiting.start()
    while srv.max_in_flight == 0:
        time.sleep(0.01)
    start = time.monotonic()
    srv.stop()
    waiting.join(timeout=5)
    assert time.monotonic() - start < 2.0 and not waiting.is_alive()
    assert isinstance(outcome[0], httpx.RemoteProtocolError)  # cut short, no reply
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models", timeout=1)


# --------------------------------------------------------------------------- a peer, not a guess


def llama_cpp(request):
    """llama.cpp's server: a request for more than one choice is an HTTP 500."""
    if request.get("n", 1) != 1:
        raise RequestError(500, "Only one completion choice is allowed")
    return default_responder(request)


def test_a_server_that_refuses_n_is_asked_one_reply_a_request(caplog):
    """llama.cpp answers n=2 with HTTP 500 "Only one completion choice is allowed"."""
    with OpenAICompatibleServer(models=["m"], responder=llama_cpp) as server:
        vlm = OpenAIServerVLM(server.url, **FAST)
        with caplog.at_level(logging.WARNING, logger="cropper.vlm.openai_server"):
            first = vlm.generate([conversation(photo())], Sampling(n=3, seed=5))
            second = vlm.generate([conversation(photo())], Sampling(n=2, seed=9))
        ns = [r.body["n"] for r in server.chat_requests]
        seeds = [r.body["seed"] for r in server.chat_requests]
    assert len(first[0]) == 3 and len(second[0]) == 2
    # Two tries with n=3 (the same 500 twice is no load), then one reply a request, for good.
    assert ns == [3, 3, 1, 1, 1, 1, 1]
    assert seeds == [5, 5, 5, 6, 7, 9, 10]
    assert sum("refused n=3" in r.getMessage() for r in caplog.records) == 1


def test_one_request_that_fails_fails_its_conversation_alone(server):
    vlm = OpenAIServerVLM(server.url, model="test-vlm", **FAST)
    server.add_faults(Fault(), Fault(status=400, message="image too large"), Fault())
    answers = vlm.generate_each(
        [conversation(photo(c)) for c in ("red", "green", "blue")], Sampling(n=1)
    )
    kinds = [type(a).__name__ for a in answers]
    assert sorted(kinds) == ["VLMError", "list", "list"]  # which one: the order of arrival
    error = next(a for a in answers if isinstance(a, VLMError))
    assert "image too large" in str(error) and not error.stops_batch


def test_every_request_in_flight_failing_stops_the_batch(server):
    vlm = OpenAIServerVLM(server.url, model="test-vlm", max_retries=0, **FAST)
    server.add_faults(*[Fault(status=503, message="overloaded")] * 3)
    with pytest.raises(VLMError) as info:
        vlm.generate_each([conversation(photo(c)) for c in ("red", "green", "blue")], Sampling())
    assert info.value.stops_batch and "all 3 requests in flight failed" in str(info.value)


def test_a_timeout_after_its_retries_fails_its_photo_not_the_batch():
    """One slow request is that photo's failure; the others in the batch are cropped."""
    from cropper import Cropper

    def slow_for_green(request):
        urls = [
            part["image_url"]["url"]
            for message in request["messages"]
            if isinstance(message["content"], list)
            for part in message["content"]
            if part["type"] == "image_url"
        ]
        if decode_data_url(urls[0]).convert("RGB").getpixel((0, 0))[1] > 100:  # the green one
            time.sleep(1.0)
        return default_responder(request)

    with OpenAICompatibleServer(models=["m"], responder=slow_for_green) as server:
        cropper = Cropper(
            vlm=server.url,
            clip=None,
            head=None,
            index=None,
            vlm_options={"timeout": 0.4, "max_retries": 1},
        )
        results = cropper.crop_batch(
            [photo(c, (64, 48)) for c in ("red", "green", "blue")], refine_rounds=0
        )
    assert [type(r).__name__ for r in results] == ["CropResult", "VLMError", "CropResult"]
    assert "within 0.4 s" in str(results[1]) and not results[1].stops_batch
