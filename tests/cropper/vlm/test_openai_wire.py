"""The wire format of OpenAI's chat API: pure functions, no server."""

from __future__ import annotations

import pytest
from PIL import Image

from cropper.core.errors import ConfigError
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.testing.openai_server import decode_data_url
from cropper.vlm.base import Sampling
from cropper.vlm.openai_wire import (
    ImageURLCache,
    body_message,
    build_chat_request,
    normalize_base_url,
    one_line,
    parse_chat_reply,
    parse_retry_after,
    to_openai_messages,
)
from cropper.vlm.schema import boxes_schema

SCHEMA = boxes_schema(6, "norm1000")


def photo(color: str = "red", size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, color)


def conversation(image: Image.Image, key: str = "") -> list[Message]:
    """A system line, then text, the photo and text: the shape of cropper's prompts."""
    return [
        Message("system", (TextPart("You crop photos."),)),
        Message("user", (TextPart("Crop this."), ImagePart(image, key=key), TextPart("JSON."))),
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:8000/v1", "http://localhost:8000/v1"),
        ("http://localhost:8000/v1/", "http://localhost:8000/v1"),
        ("http://localhost:8000", "http://localhost:8000/v1"),
        ("http://localhost:8000/", "http://localhost:8000/v1"),
        ("https://api.example.com/v1/chat/completions", "https://api.example.com/v1"),
        ("http://h:1/v1/models", "http://h:1/v1"),
        ("http://proxy/openai/v1", "http://proxy/openai/v1"),
        ("  http://localhost:8000/v1  ", "http://localhost:8000/v1"),
    ],
)
def test_normalize_base_url(given, expected):
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("bad", ["", "localhost:8000", "ftp://host/v1", "http://", None])
def test_normalize_base_url_refuses(bad):
    with pytest.raises(ConfigError, match="base_url"):
        normalize_base_url(bad)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1", 1.0),
        ("2.5", 2.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # 10 s after `now` below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header, expected):
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == expected


def test_to_openai_messages_shapes_text_and_images():
    image = photo()
    messages = to_openai_messages(conversation(image), "PNG")
    assert messages[0] == {"role": "system", "content": "You crop photos."}
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text"]
    assert parts[0] == {"type": "text", "text": "Crop this."}
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = decode_data_url(url)
    assert decoded.size == (32, 24) and decoded.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_to_openai_messages_encodes_each_image_once():
    shared, other = photo("red"), photo("blue")
    cache = ImageURLCache()
    first = to_openai_messages(conversation(shared), cache=cache)
    second = to_openai_messages(conversation(shared), cache=cache)
    keyed = to_openai_messages(conversation(other, key="exemplar-7"), cache=cache)
    again = to_openai_messages(conversation(photo("blue"), key="exemplar-7"), cache=cache)
    assert len(cache) == 2  # the shared object once, the keyed photo once
    url = first[1]["content"][1]["image_url"]["url"]
    assert second[1]["content"][1]["image_url"]["url"] is url
    assert keyed[1]["content"][1]["image_url"]["url"] == again[1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")


def test_to_openai_messages_converts_alpha_for_jpeg():
    messages = to_openai_messages(conversation(Image.new("RGBA", (8, 8), (0, 255, 0, 128))))
    assert decode_data_url(messages[1]["content"][1]["image_url"]["url"]).mode == "RGB"


@pytest.mark.parametrize(
    ("sampling", "structured", "expected_extra"),
    [
        (Sampling(n=3, json_schema=SCHEMA, seed=7), True, {"seed": 7, "response_format": True}),
        (Sampling(n=1, json_schema=SCHEMA), False, {}),
        (Sampling(n=2), True, {}),
    ],
)
def test_build_chat_request(sampling, structured, expected_extra):
    messages = [{"role": "user", "content": "hi"}]
    body = build_chat_request(messages, sampling, "m", structured_outputs=structured)
    assert body["model"] == "m" and body["messages"] is messages
    assert (body["n"], body["temperature"], body["max_completion_tokens"]) == (
        sampling.n,
        sampling.temperature,
        sampling.max_tokens,
    )
    assert body["max_tokens"] == sampling.max_tokens  # for servers that know only it (Ollama)
    assert "top_p" not in body and "top_k" not in body  # the server's defaults stand
    assert ("seed" in body) == ("seed" in expected_extra)
    assert ("response_format" in body) == ("response_format" in expected_extra)
    assert "guided_json" not in body
    if "response_format" in body:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "crops", "schema": SCHEMA, "strict": True},
        }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"choices": [{"index": 0, "message": {"content": "a"}}]}, ["a"]),
        ({"choices": [{"index": 0, "message": {"content": None}}]}, [""]),
        (
            {
                "choices": [
                    {"index": 1, "message": {"content": "b"}},
                    {"index": 0, "message": {"content": "a"}},
                ]
            },
            ["a", "b"],
        ),
        ({"choices": [{"message": {"role": "assistant"}, "finish_reason": "length"}]}, [""]),
        ({"choices": []}, []),
    ],
)
def test_parse_chat_reply(body, expected):
    assert parse_chat_reply(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"id": "x"},
        {"choices": None},
        {"choices": [1]},
        {"choices": [{"message": {"content": 3}}]},
    ],
)
def test_parse_chat_reply_refuses(body):
    with pytest.raises(ValueError):
        parse_chat_reply(body)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"error": {"message": "bad schema", "code": 400}}', "bad schema"),
        (b'{"object": "error", "message": "vllm says no"}', "vllm says no"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"<html>\n  proxy\n  error</html>", "<html> proxy error</html>"),
        (b"", "Bad Gateway"),
    ],
)
def test_body_message_in_one_line(content, expected):
    assert one_line(body_message(content, "Bad Gateway")) == expected
