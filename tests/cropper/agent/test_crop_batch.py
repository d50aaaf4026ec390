"""Cropper.crop_batch: rounds move together, one model call per round, errors stay per photo."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cropper import Cropper
from cropper.agent.batching import pipelined
from cropper.core.errors import ConfigError, ImageError, VLMError
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.vlm.base import VLM


class BatchRecorder(VLM):
    """Replies with a crop that depends on the photo; records each generate call's size."""

    name = "recorder"

    def __init__(self, fail_on: int | None = None):
        self.batches: list[int] = []
        self.fail_on = fail_on

    def generate(self, conversations, sampling):
        self.batches.append(len(conversations))
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise VLMError("the server went away", retryable=True, every_request=True)
        out = []
        for conversation in conversations:
            text = "".join(p.text for m in conversation for p in m.parts if hasattr(p, "text"))
            shift = 10 * (len(text) % 7)  # differs between photos' prompts, same every call
            box = [100 + shift, 100, 900, 800]
            out.append([json.dumps({"crops": [box]})] * sampling.n)
        return out


class CountingEmbedder:
    name = "counting"
    dim = 4

    def __init__(self):
        self.calls: list[int] = []

    def embed(self, images):
        self.calls.append(len(images))
        return np.array([[im.width, im.height, 1.0, 0.5] for im in images], dtype=np.float32)


def _photos(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (320 + 16 * i, 240), (10 * i, 90, 150)) for i in range(n)]


def test_each_round_is_one_call_for_every_photo() -> None:
    vlm = BatchRecorder()
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    results = cropper.crop_batch(_photos(5), task="free")
    assert vlm.batches == [5, 5, 5]  # propose, refine, refine: all photos together
    assert all(r.box is not None for r in results)


def test_a_batch_gives_what_cropping_one_by_one_gives() -> None:
    photos = _photos(4)
    one = Cropper(vlm=BatchRecorder(), clip=None, head=None, index=None)
    many = Cropper(vlm=BatchRecorder(), clip=None, head=None, index=None)
    alone = [one.crop(p, task="aspect", ratio="4:5") for p in photos]
    together = many.crop_batch(photos, task="aspect", ratio="4:5")
    assert [r.box for r in together] == [r.box for r in alone]
    assert [r.score for r in together] == [r.score for r in alone]


def test_scoring_embeds_every_photos_crops_in_one_pass() -> None:
    embedder = CountingEmbedder()
    cropper = Cropper(vlm=BatchRecorder(), clip=embedder, head=None, index=None)
    cropper.crop_batch(_photos(3), task="aspect", ratio="1:1")  # content term: whole + crops
    # Round after round, one call for all three photos (the queries' embeddings first).
    assert embedder.calls[0] == 3
    assert len(embedder.calls) == 1 + 3


def test_a_bad_photo_gets_its_error_and_the_others_are_cropped(tmp_path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    photos: list = _photos(3)
    photos.insert(1, str(broken))
    results = Cropper(vlm=BatchRecorder(), clip=None, head=None, index=None).crop_batch(photos)
    assert isinstance(results[1], ImageError) and "broken.jpg" in str(results[1])
    assert [type(r).__name__ for i, r in enumerate(results) if i != 1] == ["CropResult"] * 3


def test_an_unreachable_server_stops_the_batch() -> None:
    cropper = Cropper(vlm=BatchRecorder(fail_on=2), clip=None, head=None, index=None)
    with pytest.raises(VLMError):
        cropper.crop_batch(_photos(2))


def test_chunks_bound_the_photos_in_flight_and_stream_in_order_of_finishing() -> None:
    vlm = BatchRecorder()
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    seen = [i for i, _ in cropper.crop_stream(_photos(5), concurrency=2)]
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert vlm.batches == [2, 2, 2, 2, 2, 2, 1, 1, 1]


def test_the_server_sees_the_requested_requests_in_flight() -> None:
    photos = _photos(12)
    with OpenAICompatibleServer(latency=0.2) as server:
        cropper = Cropper(vlm=server.url, clip=None, head=None, index=None)
        results = cropper.crop_batch(photos, concurrency=12, refine_rounds=0)
        in_flight = server.max_in_flight
    assert all(r.box is not None for r in results)
    assert in_flight == 12


@pytest.mark.parametrize("concurrency", [0, -2, True])
def test_a_concurrency_below_one_is_refused_before_any_work(concurrency) -> None:
    vlm = BatchRecorder()
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    with pytest.raises(ConfigError, match="concurrency must be a whole number >= 1"):
        cropper.crop_batch(_photos(2), concurrency=concurrency)
    assert vlm.batches == []


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_pipelined_lanes_give_every_item_once(lanes) -> None:
    chunks = [range(s, s + 4) for s in range(0, 20, 4)]
    seen = list(pipelined(chunks, lambda chunk: iter(chunk), lanes))
    assert sorted(seen) == list(range(20))


def test_an_error_in_a_lane_reaches_the_caller_and_stops_new_chunks() -> None:
    taken = []

    def run(chunk):
        taken.append(chunk)
        if chunk == 1:
            raise VLMError("the server went away", retryable=True, every_request=True)
        time.sleep(0.05)
        return iter([chunk])

    with pytest.raises(VLMError, match="went away"):
        list(pipelined(range(100), run, 2))
    time.sleep(0.2)
    assert len(taken) < 10  # the other lane stopped taking chunks


def test_a_server_batch_runs_two_chunks_at_once_within_the_bound() -> None:
    photos = _photos(8)
    with OpenAICompatibleServer(latency=0.3) as server:
        cropper = Cropper(vlm=server.url, clip=None, head=None, index=None)
        results = cropper.crop_batch(photos, concurrency=2, refine_rounds=1)
        in_flight = server.max_in_flight
    assert all(r.box is not None for r in results)
    assert in_flight == 2  # two lanes share the backend's bound of 2 in flight


class GenerateOnly(VLM):
    """A third party's backend: ``generate`` alone, every other part the base class's."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.batches: list[int] = []

    def generate(self, conversations, sampling):
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(conversations))
        return [[json.dumps({"crops": [[100, 150, 900, 850]]})] * sampling.n] * len(conversations)


def test_a_vlm_that_implements_only_generate_crops_one_photo_and_batches() -> None:
    vlm = GenerateOnly()
    assert vlm.max_in_flight is None and vlm.overlaps_calls is False  # the defaults
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    assert cropper.crop(_photos(1)[0]).box is not None
    results = cropper.crop_batch(_photos(5), concurrency=2)
    assert all(r.box is not None for r in results)
    # Its calls do not overlap: one chunk at a time, in the caller's thread.
    assert vlm.threads == {threading.current_thread().name}
    assert vlm.batches == [1, 1, 1] + [2, 2, 2, 2, 2, 2, 1, 1, 1]


class BoundRecorder(BatchRecorder):
    """Records the concurrency each call is given, and its own configured bound then."""

    def __init__(self, configured: int) -> None:
        super().__init__()
        self.configured = configured
        self.seen: list[tuple[int | None, int]] = []

    @property
    def max_in_flight(self) -> int:
        return self.configured

    def generate_each(self, conversations, sampling, *, concurrency=None):
        self.seen.append((concurrency, self.max_in_flight))
        return super().generate_each(conversations, sampling, concurrency=concurrency)


def test_a_batchs_concurrency_reaches_the_backend_and_leaves_its_own_bound() -> None:
    vlm = BoundRecorder(configured=7)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    cropper.crop_batch(_photos(3), concurrency=3)
    assert vlm.seen == [(3, 7)] * 3  # every round's call, the configured bound untouched
    cropper.crop_batch(_photos(3))
    assert vlm.seen[3:] == [(None, 7)] * 3  # none given: the backend's own
    assert vlm.max_in_flight == 7


def test_a_batchs_concurrency_bounds_a_server_without_changing_its_configured_bound() -> None:
    from cropper.vlm.openai_server import OpenAIServerVLM

    during: list[int] = []  # the backend's configured bound, read while each request is served

    def latency(body: dict) -> float:
        during.append(vlm.concurrency)
        return 0.1

    with OpenAICompatibleServer(latency=latency) as server:
        vlm = OpenAIServerVLM(server.url, concurrency=16)
        cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
        results = cropper.crop_batch(_photos(8), concurrency=3, refine_rounds=0)
        in_flight = server.max_in_flight
        cropper.close()
    assert all(r.box is not None for r in results)
    assert in_flight == 3  # both lanes within the batch's bound
    assert set(during) == {16} and len(during) == 8 and vlm.max_in_flight == 16


def test_a_pixel_budget_sends_model_sized_photos_and_maps_boxes_back() -> None:
    sent = []

    class PixelVLM(VLM):
        name = "pixel"

        def generate(self, conversations, sampling):
            out = []
            for conversation in conversations:
                query = [p for m in conversation for p in m.parts if hasattr(p, "image")][-1]
                sent.append(query.image.size)
                w, h = query.image.size
                out.append([json.dumps({"crops": [[w // 4, h // 4, w - 1, h - 1]]})])
            return out

    photo = Image.new("RGB", (1500, 1000), (20, 40, 60))
    cropper = Cropper(vlm=PixelVLM(), clip=None, head=None, index=None, coords="pixel",
                      pixel_budget="qwen2.5-vl", refine_rounds=0)  # fmt: skip
    result = cropper.crop(photo)
    w, h = sent[0]
    assert w % 28 == 0 and h % 28 == 0 and max(w, h) <= 1024 + 14
    left, top, right, bottom = result.box.to_pixels(photo.size)
    assert abs(left - 1500 * (w // 4) / w) <= 1 and abs(top - 1000 * (h // 4) / h) <= 1
    assert abs(right - 1500 * (w - 1) / w) <= 1 and abs(bottom - 1000 * (h - 1) / h) <= 1


def test_an_unknown_pixel_budget_is_refused_when_the_cropper_is_made() -> None:
    with pytest.raises(ConfigError, match="unknown pixel budget 'qwen9'"):
        Cropper(vlm=BatchRecorder(), clip=None, head=None, index=None, pixel_budget="qwen9")


def test_photos_in_flight_are_bounded_by_their_pixels(monkeypatch, tmp_path) -> None:
    """Large photos go through a few at a time: a chunk closes at PIXELS_IN_FLIGHT."""
    import cropper.agent.loop

    monkeypatch.setattr(cropper.agent.loop, "PIXELS_IN_FLIGHT", 350_000)
    paths = []
    for i, side in enumerate([400, 400, 400, 600, 200, 200]):  # 160k, 160k, 160k, 360k, 40k
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (side, side), (10 * i, 90, 150)).save(path)
        paths.append(path)
    vlm = BatchRecorder()
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None, refine_rounds=0)
    results = cropper.crop_batch(paths)  # sizes are read from the files' headers
    assert all(not isinstance(r, Exception) for r in results)
    # Two 400 px photos fit the budget, the 600 px one goes alone, the small ones together.
    assert vlm.batches == [2, 1, 1, 2]
