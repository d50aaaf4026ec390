from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import httpx
import huggingface_hub.constants
import pytest

from cropper.core.errors import ConfigError, WeightsNotFoundError
from cropper.core.weights import cache_dir, fetch_url, parse_hf_hub, resolve_weights

PAYLOAD = b"not really weights, but bytes with a checksum\n" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path: Path):
    """A local HTTP server over a folder holding head.pth; records the paths requested."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "head.pth").write_bytes(PAYLOAD)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def client():
    # trust_env=False: no proxy from the environment may intercept 127.0.0.1.
    with httpx.Client(trust_env=False, timeout=10) as http:
        yield http


def test_local_path_is_returned(tmp_path: Path):
    weights = tmp_path / "head.pth"
    weights.write_bytes(b"x")
    assert resolve_weights(str(weights)) == weights
    assert resolve_weights(weights) == weights


def test_missing_local_path_names_it(tmp_path: Path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ConfigError, match="nope.safetensors") as info:
        resolve_weights(str(missing))
    assert not isinstance(info.value, WeightsNotFoundError)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf-hub:org/repo/file.pth", ("org/repo", "file.pth")),
        ("hf-hub:org/repo/sub/dir/file.safetensors", ("org/repo", "sub/dir/file.safetensors")),
    ],
)
def test_parse_hf_hub(spec: str, expected: tuple[str, str]):
    assert parse_hf_hub(spec) == expected


@pytest.mark.parametrize("spec", ["hf-hub:org/repo", "hf-hub:org//file.pth", "hf-hub:"])
def test_bad_hf_hub_spec(spec: str):
    with pytest.raises(ConfigError, match="ORG/REPO/FILENAME"):
        resolve_weights(spec)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache in tmp_path."""
    hub_cache = tmp_path / "hf-cache"
    hub_cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def test_hf_hub_offline_not_cached_says_what_to_fetch(offline_hub: Path):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("hf-hub:fake-org/fake-repo/aesthetic-model.pth")
    message = str(info.value)
    assert "download fake-org/fake-repo aesthetic-model.pth" in message
    assert "--head PATH" in message and "Cropper(head=PATH)" in message
    assert "\n" not in message


def test_hf_hub_offline_uses_the_cache(offline_hub: Path):
    # The layout huggingface_hub (and transformers) share: refs/main -> snapshots/<commit>/.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--fake-org--fake-repo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "aesthetic-model.pth").write_bytes(PAYLOAD)
    path = resolve_weights("hf-hub:fake-org/fake-repo/aesthetic-model.pth")
    assert path.read_bytes() == PAYLOAD


def test_url_download_then_cache_hit(tmp_path: Path, server, client: httpx.Client):
    base, requests = server
    cache = tmp_path / "cache"
    first = fetch_url(f"{base}/head.pth", DIGEST, cache=cache, client=client, schemes=("http",))
    assert first.read_bytes() == PAYLOAD
    assert first.name == "head.pth" and cache in first.parents
    assert requests == ["/head.pth"]
    second = fetch_url(f"{base}/head.pth", DIGEST, cache=cache, client=client, schemes=("http",))
    assert second == first
    assert requests == ["/head.pth"]  # no second request
    assert [p.name for p in first.parent.iterdir()] == ["head.pth"]  # no temporary left


def test_url_checksum_mismatch_removes_the_download(tmp_path: Path, server, client):
    base, requests = server
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ConfigError, match="checksum mismatch") as info:
        fetch_url(f"{base}/head.pth", wrong, cache=cache, client=client, schemes=("http",))
    assert DIGEST in str(info.value) and wrong in str(info.value)
    assert requests == ["/head.pth"]
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_corrupt_cached_copy_is_fetched_again(tmp_path: Path, server, client):
    base, requests = server
    cache = tmp_path / "cache"
    stale = cache / "url" / DIGEST / "head.pth"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"truncated")
    path = fetch_url(f"{base}/head.pth", DIGEST, cache=cache, client=client, schemes=("http",))
    assert path == stale and path.read_bytes() == PAYLOAD
    assert requests == ["/head.pth"]


def test_url_http_error_is_weights_not_found(tmp_path: Path, server, client):
    base, _ = server
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        fetch_url(
            f"{base}/missing.pth", DIGEST, cache=tmp_path / "c", client=client, schemes=("http",)
        )
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []


def test_resolve_https_spec_hits_the_cache_without_network(
    tmp_path: Path, server, client, monkeypatch: pytest.MonkeyPatch
):
    base, requests = server
    cache = tmp_path / "cache"
    monkeypatch.setenv("CROPPER_CACHE", str(cache))
    assert cache_dir() == cache
    fetch_url(f"{base}/head.pth", DIGEST, client=client, schemes=("http",))
    # Same file name and checksum: served from the cache; the host is never contacted.
    path = resolve_weights(f"https://weights.invalid/models/head.pth#sha256={DIGEST.upper()}")
    assert path.read_bytes() == PAYLOAD
    assert requests == ["/head.pth"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("http://example.com/head.pth#sha256=" + "a" * 64, "must use https"),
        ("ftp://example.com/head.pth", "must use https"),
        ("https://example.com/head.pth", "need a checksum"),
        ("https://example.com/head.pth#md5=abc", "need a checksum"),
        ("https://example.com/head.pth#sha256=xyz", "64 hex digits"),
    ],
)
def test_bad_url_specs(spec: str, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CROPPER_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=match):
        resolve_weights(spec)
