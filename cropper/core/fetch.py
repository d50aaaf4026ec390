"""Photos given as URLs: told apart from paths, and fetched over http(s) within limits.

Fetching is off unless the caller allows it (``load_image(..., allow_urls=True)``,
``cropper crop --allow-urls``): a URL in a list of photos must not make cropper reach
out on its own. Only http and https are fetched; file:, ftp:, data: and the rest are
refused, so a URL can never read a local file or another service.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from urllib.parse import urlsplit, urlunsplit

from cropper.core.errors import ImageError

#: The most bytes a photo given as a URL may have (the body, after any gzip decoding).
URL_MAX_BYTES = 50_000_000
#: Seconds a photo given as a URL may take to arrive, all of it.
URL_TIMEOUT = 20.0

# "scheme://..." (RFC 3986 scheme of two or more characters, so "C:\\photo.jpg" is a
# path), or the schemes written without "//".
_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.\-]+):(//|(?<=data:)|(?<=file:))", re.IGNORECASE)
_FETCHED = ("http", "https")
_MAX_SHOWN = 200  # characters of a URL shown in messages (a data: URL may be megabytes)


def url_scheme(text: str) -> str | None:
    """The lower-case scheme when ``text`` is a URL rather than a path, else ``None``."""
    match = _URL.match(text)
    return match.group("scheme").lower() if match else None


def is_url(text: object) -> bool:
    """Whether ``text`` is a string holding a URL (of any scheme) rather than a path."""
    return isinstance(text, str) and url_scheme(text) is not None


def show_url(url: str) -> str:
    """The URL as messages name it: no user or password, and cut short when very long."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        url = urlunsplit(parts._replace(netloc=f"***@{host}"))
    return url if len(url) <= _MAX_SHOWN else url[: _MAX_SHOWN - 3] + "..."


def check_fetchable(url: str, allowed: bool) -> None:
    """Raise :class:`ImageError` unless ``url`` is http(s) and fetching was allowed."""
    name = show_url(url)
    if url_scheme(url) not in _FETCHED:
        raise ImageError(
            f"{name}: only http:// and https:// photos can be fetched; "
            "download it and give its path"
        )
    if not allowed:
        raise ImageError(
            f"{name}: photos given as URLs are fetched only when allowed; "
            "pass allow_urls=True (cropper crop --allow-urls)"
        )


def fetch(url: str, *, max_bytes: int = URL_MAX_BYTES, timeout: float = URL_TIMEOUT) -> bytes:
    """The body of an http(s) ``url``: at most ``max_bytes``, within ``timeout`` s in all.

    Raises a one-line :class:`ImageError` naming the URL on any failure: a refused
    connection, a status other than 2xx, a body too large (by its Content-Length or
    while it streams), or a download not done ``timeout`` seconds after it began,
    however the server spreads it out (headers or body a byte at a time).
    """
    check_fetchable(url, allowed=True)
    download = _fetch(url, max_bytes, timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(download)
    # Called where an event loop runs (a notebook cell): on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cropper-fetch") as pool:
        return pool.submit(asyncio.run, download).result()


async def _fetch(url: str, max_bytes: int, timeout: float) -> bytes:
    import httpx

    name = show_url(url)
    try:
        # httpx's timeouts bound each wait; this bounds the whole download, connect to
        # last byte, redirects included.
        return await asyncio.wait_for(_download(url, name, max_bytes, timeout), timeout)
    except ImageError:
        raise
    except (httpx.TimeoutException, asyncio.TimeoutError):
        raise _too_slow(name, timeout) from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ValueError) as exc:
        # httpx may quote the URL: show it without its password, on one line.
        why = " ".join(str(exc).replace(url, name).split()) or type(exc).__name__
        raise ImageError(f"{name}: cannot fetch the photo ({why})") from None


async def _download(url: str, name: str, max_bytes: int, timeout: float) -> bytes:
    import httpx

    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=5) as client,
        client.stream("GET", url, headers={"Accept": "image/*"}) as response,
    ):
        if not response.is_success:
            raise ImageError(
                f"{name}: the server answered HTTP {response.status_code} "
                f"{response.reason_phrase}; check the URL"
            )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise _too_large(name, max_bytes)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            if len(body) + len(chunk) > max_bytes:
                raise _too_large(name, max_bytes)
            body += chunk
        return bytes(body)


def _too_large(name: str, max_bytes: int) -> ImageError:
    return ImageError(
        f"{name}: larger than {max_bytes:,} bytes; download it yourself or raise url_max_bytes"
    )


def _too_slow(name: str, timeout: float) -> ImageError:
    return ImageError(
        f"{name}: not fetched within {timeout:g} s; try again later or raise url_timeout"
    )
