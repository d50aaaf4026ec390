"""The server backend at server speed: requests in flight, photos encoded once, a loaded server."""

from __future__ import annotations

import threading

import httpx
import pytest
from PIL import Image

from cropper.core.errors import ConfigError
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.vlm import openai_server, openai_wire
from cropper.vlm.base import Sampling
from cropper.vlm.openai_server import OpenAIServerVLM
from cropper.vlm.openai_wire import ImageURLCache

FAST = {"timeout": 10.0, "backoff_initial": 0.01, "backoff_max": 0.05}


def prompt(query: Image.Image, exemplars: list[tuple[str, Image.Image]], text: str = ""):
    parts = [ImagePart(image, key=key) for key, image in exemplars]
    return [Message("user", (TextPart(f"Crop {text}"), *parts, ImagePart(query)))]


@pytest.fixture
def encodes(monkeypatch):
    """Counts JPEG encodings made by the backend."""
    calls: list[tuple[int, int]] = []
    real = openai_wire.encode_image

    def counting(image, *args, **kwargs):
        calls.append(image.size)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(openai_wire, "encode_image", counting)
    return calls


def test_each_photo_is_encoded_once_across_rounds_and_photos(encodes):
    exemplars = [(f"bank/{i}.jpg@448", Image.new("RGB", (40, 30), "blue")) for i in range(3)]
    queries = [Image.new("RGB", (32, 24), (i, 0, 0)) for i in range(8)]
    with OpenAICompatibleServer() as server, OpenAIServerVLM(server.url, **FAST) as vlm:
        for round_ in range(2):  # the refine round re-sends every photo of the propose round
            conversations = [prompt(q, exemplars, f"{round_}/{i}") for i, q in enumerate(queries)]
            assert len(vlm.generate(conversations, Sampling(n=1))) == 8
        sent = [r.body["messages"][0]["content"] for r in server.chat_requests]
    assert len(encodes) == 3 + 8  # each exemplar once, each query once
    assert len(sent) == 16 and all(len(parts) == 5 for parts in sent)


def test_an_exemplar_reloaded_with_the_same_key_and_size_is_not_encoded_again(encodes):
    cache = ImageURLCache()
    first = cache.url(ImagePart(Image.new("RGB", (8, 6), "red"), key="bank/1.jpg@448"))
    again = cache.url(ImagePart(Image.new("RGB", (8, 6), "red"), key="bank/1.jpg@448"))
    resized = cache.url(ImagePart(Image.new("RGB", (4, 3), "red"), key="bank/1.jpg@448"))
    assert first is again and resized != first and len(encodes) == 2


def test_an_unkeyed_photo_is_known_by_the_object_not_its_pixels(encodes):
    cache = ImageURLCache()
    one, twin = Image.new("RGB", (8, 6), "red"), Image.new("RGB", (8, 6), "red")
    cache.url(ImagePart(one))
    cache.url(ImagePart(one))
    cache.url(ImagePart(twin))
    assert len(encodes) == 2


def test_the_cache_drops_the_least_recently_used_past_its_bound(encodes):
    photos = [ImagePart(Image.new("RGB", (8, 8), c), key=c) for c in ("red", "green", "blue")]
    size = len(ImageURLCache().url(photos[0]))
    cache = ImageURLCache(max_bytes=2 * size + size // 2)  # room for two
    for part in (photos[0], photos[1], photos[0], photos[2]):
        cache.url(part)
    assert len(cache) == 2
    encodes.clear()
    cache.url(photos[0])  # used recently: kept
    assert encodes == []
    cache.url(photos[1])  # the least recently used: dropped, so encoded again
    assert len(encodes) == 1


@pytest.mark.parametrize(("concurrency", "conversations"), [(16, 64), (3, 10)])
def test_the_server_sees_the_requested_requests_in_flight(concurrency, conversations):
    image = Image.new("RGB", (16, 12), "red")
    with OpenAICompatibleServer(latency=0.1) as server:
        with OpenAIServerVLM(server.url, concurrency=concurrency, **FAST) as vlm:
            batch = [prompt(image, [], str(i)) for i in range(conversations)]
            replies = vlm.generate(batch, Sampling(n=2))
        assert server.max_in_flight == concurrency
    assert len(replies) == conversations and all(len(r) == 2 for r in replies)
    # Replies come back in the order of the conversations.
    texts = [r.body["messages"][0]["content"][0]["text"] for r in server.chat_requests]
    assert sorted(texts) == sorted(f"Crop {i}" for i in range(conversations))


def test_concurrency_can_change_between_calls_and_max_concurrency_is_its_alias():
    image = Image.new("RGB", (16, 12), "red")
    with OpenAICompatibleServer(latency=0.05) as server:
        vlm = OpenAIServerVLM(server.url, max_concurrency=2, **FAST)
        assert vlm.concurrency == vlm.max_concurrency == vlm.max_in_flight == 2
        vlm.generate([prompt(image, [], str(i)) for i in range(6)], Sampling())
        assert server.max_in_flight == 2
        vlm.max_concurrency = 5  # a user's own setting, kept working
        vlm.generate([prompt(image, [], str(i)) for i in range(15)], Sampling())
        assert vlm.concurrency == vlm.max_in_flight == 5 and server.max_in_flight == 5
        vlm.close()
    with pytest.raises(ConfigError, match="concurrency"):
        vlm.concurrency = 0


def test_a_calls_concurrency_bounds_that_call_and_leaves_the_configured_bound():
    image = Image.new("RGB", (16, 12), "red")
    during: list[int] = []  # the configured bound, read while each request is served

    def latency(body: dict) -> float:
        during.append(vlm.concurrency)
        return 0.1

    with OpenAICompatibleServer(latency=latency) as server:
        vlm = OpenAIServerVLM(server.url, concurrency=16, **FAST)
        batch = [prompt(image, [], str(i)) for i in range(12)]
        answers = vlm.generate_each(batch, Sampling(), concurrency=3)
        assert server.max_in_flight == 3 and len(answers) == 12
        assert set(during) == {16} and vlm.max_in_flight == 16  # never rewritten
        vlm.generate_each(batch, Sampling())  # the configured bound again
        assert server.max_in_flight == 12
        vlm.close()


def test_threads_share_one_count_of_requests_in_flight_within_their_bound():
    """Two chunks of a batch in flight at once hold, together, to the batch's bound."""
    image = Image.new("RGB", (16, 12), "red")
    with OpenAICompatibleServer(latency=0.1) as server:
        with OpenAIServerVLM(server.url, concurrency=16, **FAST) as vlm:

            def work(i: int) -> None:
                batch = [prompt(image, [], f"{i}-{j}") for j in range(6)]
                vlm.generate_each(batch, Sampling(), concurrency=3)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        assert len(server.chat_requests) == 12 and server.max_in_flight == 3


@pytest.mark.parametrize("concurrency", [0, -1, True, 2.5])
def test_a_calls_concurrency_below_one_is_refused(concurrency):
    vlm = OpenAIServerVLM("http://127.0.0.1:1/v1", **FAST)
    batch = [prompt(Image.new("RGB", (4, 4)), [])]
    with pytest.raises(ConfigError, match="concurrency must be a whole number >= 1"):
        vlm.generate_each(batch, Sampling(), concurrency=concurrency)


def test_slots_let_requests_in_order_each_within_its_own_bound():
    """A request goes once fewer than its bound are in flight; a cancelled one yields its turn."""
    import asyncio

    async def scenario() -> list[str]:
        slots = openai_server._Slots()
        order: list[str] = []

        async def request(name: str, bound: int, hold: asyncio.Event) -> None:
            await slots.acquire(bound)
            order.append(name)
            try:
                await hold.wait()
            finally:
                slots.release()

        first, later = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(request("a", 2, first))
        b = asyncio.create_task(request("b", 2, first))
        await asyncio.sleep(0)
        c = asyncio.create_task(request("c", 1, later))  # waits: 2 in flight, bound 1
        d = asyncio.create_task(request("d", 4, later))  # behind c, in order
        e = asyncio.create_task(request("e", 4, later))
        await asyncio.sleep(0.01)
        assert order == ["a", "b"] and slots.busy == 2
        c.cancel()  # its turn passes to those behind it
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "d", "e"] and slots.busy == 4
        first.set()
        later.set()
        await asyncio.gather(a, b, d, e)
        assert c.cancelled() and slots.busy == 0
        return order

    assert asyncio.run(scenario()) == ["a", "b", "d", "e"]


def test_close_stops_the_thread_and_a_later_call_reopens():
    image = Image.new("RGB", (16, 12), "red")
    with OpenAICompatibleServer() as server:
        vlm = OpenAIServerVLM(server.url, **FAST)
        vlm.generate([prompt(image, [])], Sampling())
        thread = vlm._loop.thread
        vlm.close()
        assert not thread.is_alive()
        assert len(vlm.generate([prompt(image, [])], Sampling(n=3))[0]) == 3
        vlm.close()


def test_many_threads_share_one_backend():
    image = Image.new("RGB", (16, 12), "red")
    results: list[object] = []
    with OpenAICompatibleServer(latency=0.02) as server:
        with OpenAIServerVLM(server.url, concurrency=4, **FAST) as vlm:

            def work(i: int) -> None:
                results.append(
                    vlm.generate([prompt(image, [], f"{i}-{j}") for j in range(5)], Sampling())
                )

            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        assert len(server.chat_requests) == 20
    assert len(results) == 4 and all(len(r) == 5 for r in results)


# --------------------------------------------------------------------------- the test server


def _chat(url: str) -> httpx.Response:
    body = {"model": "test-vlm", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(url + "/chat/completions", json=body, timeout=10)


def test_slots_queue_the_requests_past_them():
    with OpenAICompatibleServer(latency=0.05, slots=4) as server:
        assert server.ideal_throughput == pytest.approx(80.0)
        with OpenAIServerVLM(server.url, concurrency=12, **FAST) as vlm:
            image = Image.new("RGB", (16, 12), "red")
            vlm.generate([prompt(image, [], str(i)) for i in range(24)], Sampling())
        assert server.max_in_flight == 12  # received, queued ones included
        assert server.max_busy == 4  # being worked on


def test_latency_may_depend_on_the_request():
    seen: list[int] = []

    def latency(body: dict) -> float:
        seen.append(body.get("n", 1))
        return 0.0

    with OpenAICompatibleServer(latency=latency) as server:
        assert _chat(server.url).status_code == 200
        with pytest.raises(ValueError, match="fixed latency"):
            server.ideal_throughput  # noqa: B018 (a property that raises)
    assert seen == [1]


@pytest.mark.parametrize("kwargs", [{"slots": 0}, {"latency": -1.0}])
def test_server_refuses_bad_load_settings(kwargs):
    with pytest.raises(ValueError):
        OpenAICompatibleServer(**kwargs)


def test_server_stops_while_requests_wait_for_a_slot():
    server = OpenAICompatibleServer(latency=30.0, slots=1).start()
    url = server.url
    outcomes: list[object] = []

    def post() -> None:
        try:
            outcomes.append(_chat(url))
        except httpx.HTTPError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    while server.max_in_flight < 3:
        threading.Event().wait(0.01)
    server.stop()
    for t in threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 3 and all(isinstance(o, httpx.HTTPError) for o in outcomes)
