"""Find model weights from a spec: a local file, a Hugging Face Hub file, or a checksummed URL.

Specs:

- ``PATH``: a local file; it must exist.
- ``hf-hub:ORG/REPO/FILENAME``: downloaded with ``huggingface_hub`` into its usual cache
  (the one transformers shares); offline, only a cached copy is used.
- ``https://host/file.pth#sha256=HEX``: downloaded once into ``$CROPPER_CACHE`` (default
  ``~/.cache/cropper``), checked against the SHA-256, and reused from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from pickle import UnpicklingError  # only to catch torch.load's refusal: nothing here unpickles
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from cropper.core.errors import ConfigError, MissingDependencyError, WeightsNotFoundError

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_POINT_AT_LOCAL = "or point at a local copy with --head PATH / Cropper(head=PATH)"

#: What ``torch.load(..., weights_only=True)`` raises for a file holding more than tensors
#: (classes, functions, code): catch it where foreign weights are read and hand the user
#: :func:`pickled_weights_error` instead of a traceback.
PICKLED_OBJECTS_ERRORS: tuple[type[Exception], ...] = (UnpicklingError,)


def cache_dir() -> Path:
    """Where URL downloads are kept: ``$CROPPER_CACHE`` or ``~/.cache/cropper``."""
    return Path(os.environ.get("CROPPER_CACHE") or Path.home() / ".cache" / "cropper").expanduser()


def resolve_weights(spec: str | os.PathLike[str]) -> Path:
    """Return a local path holding the weights ``spec`` names, downloading them if needed."""
    text = os.fspath(spec)
    if text.startswith(HF_HUB_PREFIX):
        return _resolve_hf_hub(text)
    if "://" in text:
        if not text.startswith("https://"):
            raise ConfigError(f"weights URL {text!r} must use https (with #sha256=HEX)")
        url, sha256 = _split_checksum(text)
        return fetch_url(url, sha256)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file {text!r} not found: give an existing file, "
            f"an {HF_HUB_PREFIX}ORG/REPO/FILENAME spec or an https://...#sha256=HEX URL"
        )
    return path


def pickled_weights_error(source: str | os.PathLike[str], exc: BaseException) -> ConfigError:
    """The one-line error for weights that ``torch.load(weights_only=True)`` refused to read.

    Such a file holds Python objects besides tensors; unpickling it could run any code,
    so it is never loaded, whatever it holds.
    """
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    # torch's message opens with advice to pass weights_only=False; the line that names
    # what was refused ("Unsupported global: GLOBAL posix.system") is the useful one.
    named = [line for line in lines if any(w in line.lower() for w in ("global", "unsupported"))]
    reason = (named or lines or [type(exc).__name__])[0][:160]
    return ConfigError(
        f"refused {os.fspath(source)}: it holds Python objects besides tensors, and cropper reads "
        f"weights only with torch.load(weights_only=True) ({reason}); use safetensors weights, "
        "or a .pth holding the bare state dict (torch.save(model.state_dict(), PATH))"
    )


# -- Hugging Face Hub ---------------------------------------------------------------------


def parse_hf_hub(spec: str) -> tuple[str, str]:
    """Split ``hf-hub:ORG/REPO/FILENAME`` into ``(repo_id, filename)``."""
    parts = spec.removeprefix(HF_HUB_PREFIX).split("/")
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"bad Hub spec {spec!r}: write it as {HF_HUB_PREFIX}ORG/REPO/FILENAME")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:])


def _resolve_hf_hub(spec: str) -> Path:
    repo_id, filename = parse_hf_hub(spec)
    try:
        import huggingface_hub
        from huggingface_hub.utils import (
            EntryNotFoundError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:
        raise MissingDependencyError("huggingface_hub", purpose=f"downloading {spec}") from exc
    fetch = (
        f"fetch it where there is network with `hf download {repo_id} {filename}` "
        f"(older hubs: `huggingface-cli download {repo_id} {filename}`), {_POINT_AT_LOCAL}"
    )
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except HFValidationError as exc:
        raise ConfigError(f"bad Hub spec {spec!r}: {exc}") from exc
    except LocalEntryNotFoundError as exc:  # offline, or the Hub unreachable, and not cached
        raise WeightsNotFoundError(
            f"{spec} is not in the Hugging Face cache and cannot be downloaded now "
            f"(offline or no network): {fetch}"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsNotFoundError(
            f"{spec}: no file {filename!r} in Hub repo {repo_id!r} (or no access to it): "
            f"check the spec, log in with `hf auth login` if it is gated, {_POINT_AT_LOCAL}"
        ) from exc
    except OSError as exc:  # other HTTP and network failures
        raise WeightsNotFoundError(f"{spec} could not be downloaded ({exc}): {fetch}") from exc


# -- checksummed URLs ---------------------------------------------------------------------


def _split_checksum(spec: str) -> tuple[str, str]:
    """Split ``URL#sha256=HEX`` into the URL and the lower-case hex digest."""
    url, _, fragment = spec.partition("#")
    key, _, digest = fragment.partition("=")
    if key != "sha256" or not digest:
        raise ConfigError(
            f"URL weights need a checksum: write {url}#sha256=HEX "
            "(the file's SHA-256, e.g. from `sha256sum FILE`)"
        )
    return url, digest


def fetch_url(
    url: str,
    sha256: str,
    *,
    cache: Path | None = None,
    client: httpx.Client | None = None,
    schemes: Sequence[str] = ("https",),
) -> Path:
    """Download ``url`` into the cache unless a copy with that SHA-256 is already there.

    The file lands at ``cache/url/SHA256/FILENAME``, written atomically and only once its
    checksum matches. ``client`` and ``schemes`` exist for tests (a local http server).
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ConfigError(f"weights URL {url!r} must use {' or '.join(schemes)}")
    digest = sha256.lower()
    if not _SHA256.fullmatch(digest):
        raise ConfigError(f"bad sha256 {sha256!r} for {url}: expected 64 hex digits")
    name = Path(unquote(parts.path)).name or "weights"
    target = (cache or cache_dir()) / "url" / digest / name
    if target.is_file():
        if _file_sha256(target) == digest:
            logger.debug("using cached %s for %s", target, url)
            return target
        logger.warning("cached %s does not match its sha256; downloading %s again", target, url)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, target)
    tmp = _download(url, target.parent, client)
    found = _file_sha256(tmp)
    if found != digest:
        tmp.unlink()
        raise ConfigError(
            f"checksum mismatch for {url}: expected sha256 {digest}, got {found}; "
            "the download was removed: check the URL and its #sha256="
        )
    os.replace(tmp, target)
    return target


def _download(url: str, folder: Path, client: httpx.Client | None) -> Path:
    """Stream ``url`` into a temporary file in ``folder`` and return its path."""
    import httpx

    own = client is None
    http = httpx.Client(follow_redirects=True, timeout=60.0) if own else client
    fd, name = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, http.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsNotFoundError(
            f"could not download {url} ({exc}): download it yourself and pass the file, "
            f"{_POINT_AT_LOCAL}"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if own:
            http.close()
    return tmp


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
