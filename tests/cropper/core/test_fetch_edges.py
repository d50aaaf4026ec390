"""Photos given as URLs at their edges: the timeout is a deadline for the whole download.

A server on 127.0.0.1 spreads its reply out a byte at a time, headers included, each
byte well within a read timeout; only a deadline on the whole download ends it.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from cropper.core.errors import ImageError
from cropper.core.images import load_image


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTO = _photo()


class TrickleServer:
    """Answers each GET with headers then a photo, ``pause`` s between bytes (or at once).

    ``sent`` counts the bytes of the last reply written before the client hung up.
    """

    def __init__(self, pause: float, headers: dict[str, str] | None = None, body: bytes = PHOTO):
        self.pause = pause
        self.body = body
        fields = {"Content-Type": "image/png", "Content-Length": str(len(body)), **(headers or {})}
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self.reply = (head + "Connection: close\r\n\r\n").encode() + body
        self.sent = 0
        self.stopping = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/photo.png"

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request: one small GET
            self.sent = 0
            step = 1 if self.pause else len(self.reply)
            try:
                for start in range(0, len(self.reply), step):
                    conn.sendall(self.reply[start : start + step])
                    self.sent = start + step
                    if self.pause and self.stopping.wait(self.pause):
                        return
            except OSError:  # the client hung up
                return

    def __enter__(self) -> TrickleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    # Headers alone take about 3 s to arrive, each byte 0.03 s after the last.
    padding = {"X-Padding": "p" * 40}
    with TrickleServer(pause=0.03, headers=padding) as server:
        yield server


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_url_timeout(trickle):
    head = len(trickle.reply) - len(PHOTO)
    with pytest.raises(ImageError) as info:
        load_image(trickle.url, allow_urls=True, url_timeout=0.5)
    assert str(info.value) == (
        f"{trickle.url}: not fetched within 0.5 s; try again later or raise url_timeout"
    )
    time.sleep(0.2)  # the server notices the hang-up at its next byte
    assert trickle.sent < head // 2, "the fetch waited for the headers past its deadline"


def test_a_photo_trickled_within_its_timeout_arrives():
    with TrickleServer(pause=0.0005) as server:
        image = load_image(server.url, allow_urls=True, url_timeout=10)
    assert image.size == (40, 30)


def test_a_photo_is_fetched_where_an_event_loop_runs():
    # A notebook cell runs inside an event loop: the fetch must not need its own there.
    async def cell() -> tuple[int, int]:
        with TrickleServer(pause=0.0) as server:
            return load_image(server.url, allow_urls=True).size

    assert asyncio.run(cell()) == (40, 30)


def test_a_gzip_bomb_is_stopped_at_url_max_bytes():
    bomb = gzip.compress(b"\0" * 50_000_000, compresslevel=9)  # about 50 KB on the wire
    headers = {"Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
    with TrickleServer(pause=0.0, headers=headers, body=bomb) as server:
        with pytest.raises(ImageError, match="larger than 1,000,000 bytes"):
            load_image(server.url, allow_urls=True, url_max_bytes=1_000_000)
