"""Which part of a prompt an earlier prompt's key/value cache can serve, kept in bounded LRUs.

A photo's rounds send prompts that share a long prefix: the instructions, the
exemplars and the query (the refine prompt extends the propose prompt and only adds
its candidates near the end). The in-process backend
(:mod:`cropper.vlm.transformers_engine`) keeps the key/value cache of each prompt it
prefilled and starts a later prompt from the longest prefix it shares with one of
them. This module holds the bookkeeping, free of torch: a prompt as token ids plus
the identity of each image's run of tokens (:class:`PromptTokens`), the rule for how
much of a cached prompt a new one may reuse (:func:`reusable_length`), and the small
caches (:class:`PrefixCache`, :class:`BoundedLRU`).

An image's identity is a digest of its pixels (:class:`ImageDigests`), not its
``ImagePart.key``: a key names a file or is empty for an image given as pixels, and
the same file is sent at several sizes, while two runs of image tokens are the same
only when their pixels are.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageSpan:
    """One image's run of tokens in a prompt: ``ids[start:end]``, and whose pixels they are."""

    start: int
    end: int
    digest: str


@dataclass(frozen=True, eq=False)
class PromptTokens:
    """A prompt as the language model reads it: token ids, and each image's run among them."""

    ids: np.ndarray  # int64 token ids, the images' placeholder tokens expanded
    images: tuple[ImageSpan, ...]  # in order, one per image

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> PromptTokens:
        """The first ``n`` tokens, with the images that lie wholly among them."""
        return PromptTokens(self.ids[:n].copy(), tuple(s for s in self.images if s.end <= n))


def image_spans(
    ids: np.ndarray, image_token_id: int, counts: Sequence[int], digests: Sequence[str]
):
    """Each image's run of ``image_token_id`` in ``ids``, given each image's token count.

    Raises ``ValueError`` when the placeholders in ``ids`` are not ``counts`` runs in a row.
    """
    at = np.flatnonzero(np.asarray(ids) == image_token_id)
    if len(at) != sum(counts) or len(counts) != len(digests):
        raise ValueError(
            f"{len(at)} image tokens in the prompt for {len(counts)} images of {sum(counts)} tokens"
        )
    spans, used = [], 0
    for count, digest in zip(counts, digests, strict=True):
        start, end = int(at[used]), int(at[used + count - 1]) + 1
        if end - start != count:
            raise ValueError(f"an image's {count} tokens are not in one run at {start}")
        spans.append(ImageSpan(start, end, digest))
        used += count
    return tuple(spans)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading entries ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


def reusable_length(prompt: PromptTokens, cached: PromptTokens, limit: int | None = None) -> int:
    """How many leading tokens of ``prompt`` the cache of ``cached`` serves exactly.

    The shared token ids, cut back to the start of the first image that is not the same
    image at the same place in both (image placeholders are one id whatever the pixels),
    or that the shared part would split. ``limit`` caps it first (a prompt must keep a
    token of its own to feed the model). Key/value states of a token depend on the
    tokens and images before it only, and so do its rotary positions, also Qwen-VL's
    multimodal ones, so those of the shared part are the ones a full prefill computes.
    """
    n = common_prefix(prompt.ids, cached.ids)
    if limit is not None:
        n = min(n, limit)
    theirs = {s.start: s for s in cached.images}
    for span in prompt.images:
        if span.start >= n:
            break
        other = theirs.get(span.start)
        if span.end > n or other is None or (other.end, other.digest) != (span.end, span.digest):
            return span.start
    return n


class ImageDigests:
    """A digest of each image's pixels, computed once per image object while it lives.

    Prompt images are not changed in place once made (the loop makes new ones), so an
    object's digest is remembered until the object is garbage.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[weakref.ref, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image) -> str:
        key = id(image)
        with self._lock:
            held = self._memo.get(key)
            if held is not None and held[0]() is image:
                return held[1]
        digest = hashlib.blake2b(
            f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode(), digest_size=16
        )
        digest.update(image.tobytes())
        value = digest.hexdigest()
        memo = self._memo

        def forget(_: Any, key: int = key) -> None:
            with self._lock:
                held = memo.get(key)
                if held is not None and held[0]() is None:
                    del memo[key]

        with self._lock:
            self._memo[key] = (weakref.ref(image, forget), value)
        return value

    def __len__(self) -> int:
        return len(self._memo)


class BoundedLRU:
    """A least-recently-used map bounded by a count and by a total of sizes given per entry."""

    def __init__(self, max_entries: int, max_bytes: float):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The value of ``key`` (now the most recent), or None."""
        with self._lock:
            held = self._items.get(key)
            if held is None:
                return None
            self._items.move_to_end(key)
            return held[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        """Keep ``value`` (unless it alone is over the bound), dropping the least recent."""
        with self._lock:
            self._pop(key)
            if nbytes > self.max_bytes or self.max_entries < 1:
                return
            self._items[key] = (value, nbytes)
            self.nbytes += nbytes
            while len(self._items) > self.max_entries or self.nbytes > self.max_bytes:
                self._pop(next(iter(self._items)))

    def pop(self, key: Any) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: Any) -> None:
        held = self._items.pop(key, None)
        if held is not None:
            self.nbytes -= held[1]

    def items(self) -> list[tuple[Any, Any]]:
        """``(key, value)`` pairs, least recent first."""
        with self._lock:
            return [(k, v) for k, (v, _) in self._items.items()]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, eq=False)
class CachedPrefix:
    """A prefilled prompt: its tokens, and what the backend keeps of it (key/value states)."""

    tokens: PromptTokens
    states: Any


class PrefixCache:
    """Prefilled prompts, least recently used dropped first: which one serves a new prompt best.

    Bounded by ``max_entries`` and by ``max_bytes`` of states. A prompt whose tokens
    another one stored here begins with is dropped, as the longer serves all it did.
    """

    def __init__(self, max_entries: int, max_bytes: float):
        self._lru = BoundedLRU(max_entries, max_bytes)
        self._next = 0

    def lookup(
        self, prompt: PromptTokens, limit: int | None = None
    ) -> tuple[CachedPrefix | None, int]:
        """The stored prompt that serves most of ``prompt``, and how many tokens it serves."""
        best: tuple[Any, CachedPrefix] | None = None
        length = 0
        for key, entry in self._lru.items():
            n = reusable_length(prompt, entry.tokens, limit)
            if n > length:
                best, length = (key, entry), n
        if best is None:
            return None, 0
        self._lru.get(best[0])  # now the most recent
        return best[1], length

    def store(self, tokens: PromptTokens, states: Any, nbytes: int) -> None:
        """Keep the states of a prefilled prompt ``tokens``; drop stored prompts it extends."""
        for key, entry in self._lru.items():
            if reusable_length(tokens, entry.tokens) == len(entry.tokens):
                self._lru.pop(key)
        self._next += 1
        self._lru.put(self._next, CachedPrefix(tokens, states), nbytes)

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)


def expand_image_placeholders(text: str, placeholder: str, counts: Sequence[int]) -> str:
    """``text`` with its ``i``-th ``placeholder`` repeated ``counts[i]`` times (Qwen-VL's form).

    Raises ``ValueError`` when the text holds another number of placeholders.
    """
    pieces = text.split(placeholder)
    if len(pieces) != len(counts) + 1:
        raise ValueError(
            f"the prompt holds {len(pieces) - 1} image placeholders for {len(counts)} images"
        )
    out = [pieces[0]]
    for count, piece in zip(counts, pieces[1:], strict=True):
        out.append(placeholder * count)
        out.append(piece)
    return "".join(out)
