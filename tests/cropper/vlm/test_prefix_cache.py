"""The prefix cache's bookkeeping, without a model: what an earlier prompt can serve."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from cropper.vlm.prefix_cache import (
    BoundedLRU,
    ImageDigests,
    ImageSpan,
    PrefixCache,
    PromptTokens,
    common_prefix,
    expand_image_placeholders,
    image_spans,
    reusable_length,
)

P = 9  # the image placeholder id in these tables


def prompt(*pieces) -> PromptTokens:
    """Tokens from text ids and images written ``("img", digest, n_tokens)``."""
    ids, spans = [], []
    for piece in pieces:
        if isinstance(piece, tuple):
            _, digest, n = piece
            spans.append(ImageSpan(len(ids), len(ids) + n, digest))
            ids += [P] * n
        else:
            ids.append(piece)
    return PromptTokens(np.array(ids, dtype=np.int64), tuple(spans))


A3, B3, A4 = ("img", "a", 3), ("img", "b", 3), ("img", "a", 4)


@pytest.mark.parametrize(
    ("new", "cached", "limit", "expected"),
    [
        pytest.param(prompt(1, 2, A3, 5, 6), prompt(1, 2, A3, 5, 6), None, 7, id="same"),
        pytest.param(prompt(1, 2, A3, 5, 6), prompt(1, 2, A3, 5, 6), 6, 6, id="limit"),
        pytest.param(prompt(1, 2, A3, 5, 6, 7), prompt(1, 2, A3, 5), None, 6, id="a-prefix"),
        pytest.param(prompt(1, 2, A3, 5, 6), prompt(1, 2, A3, 5, 8), None, 6, id="text-differs"),
        pytest.param(prompt(1, 2, A3, 5), prompt(1, 2, B3, 5), None, 2, id="other-pixels"),
        pytest.param(prompt(1, 2, A4, 5), prompt(1, 2, A3, 5), None, 2, id="other-size"),
        pytest.param(prompt(1, 2, A3, 5), prompt(1, 2, 4, 5), None, 2, id="image-or-text"),
        pytest.param(prompt(1, 2, A3, 5), prompt(1, 2, A3, 5), 4, 2, id="limit-in-an-image"),
        pytest.param(prompt(1, A3, 2, B3, 7), prompt(1, A3, 2, A3, 7), None, 5, id="second-image"),
        pytest.param(prompt(1, 2), prompt(3, 2), None, 0, id="nothing-shared"),
    ],
)
def test_reusable_length(new, cached, limit, expected):
    assert reusable_length(new, cached, limit) == expected


def test_head_keeps_whole_images_only():
    tokens = prompt(1, A3, 2, B3, 7)
    assert tokens.head(5).images == (ImageSpan(1, 4, "a"),)
    assert list(tokens.head(5).ids) == [1, P, P, P, 2]
    assert reusable_length(tokens, tokens.head(6)) == 5  # half an image serves nothing of it


def test_common_prefix():
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 4])) == 2
    assert common_prefix(np.array([], dtype=int), np.array([1])) == 0


def test_image_spans_from_counts():
    ids = np.array([1, P, P, 2, P, P, P, 3])
    assert image_spans(ids, P, [2, 3], ["x", "y"]) == (ImageSpan(1, 3, "x"), ImageSpan(4, 7, "y"))
    with pytest.raises(ValueError, match="5 image tokens in the prompt for 2 images of 4"):
        image_spans(ids, P, [2, 2], ["x", "y"])
    with pytest.raises(ValueError, match="not in one run"):
        image_spans(ids, P, [1, 4], ["x", "y"])


def test_expand_image_placeholders():
    assert expand_image_placeholders("a<i>b<i>c", "<i>", [2, 1]) == "a<i><i>b<i>c"
    assert expand_image_placeholders("text only", "<i>", []) == "text only"
    with pytest.raises(ValueError, match="2 image placeholders for 1 images"):
        expand_image_placeholders("<i><i>", "<i>", [3])


def test_bounded_lru_drops_the_least_recent_by_count_and_bytes():
    lru = BoundedLRU(max_entries=3, max_bytes=10)
    for key in "abc":
        lru.put(key, key.upper(), 3)
    assert lru.get("a") == "A"  # a is now the most recent
    lru.put("d", "D", 3)  # 12 bytes: b goes
    assert [k for k, _ in lru.items()] == ["c", "a", "d"] and lru.nbytes == 9
    lru.put("e", "E", 1)  # 4 entries: c goes
    assert [k for k, _ in lru.items()] == ["a", "d", "e"] and lru.nbytes == 7
    lru.put("huge", "H", 11)  # over the bound alone: not kept, nothing dropped
    assert lru.get("huge") is None and len(lru) == 3
    lru.put("a", "A2", 5)  # replaced, not counted twice
    assert lru.get("a") == "A2" and lru.nbytes == 9


def test_prefix_cache_serves_the_longest_and_drops_what_a_longer_prompt_covers():
    cache = PrefixCache(max_entries=8, max_bytes=1000)
    # A photo's prompts as stored: all but the last token (the propose prompt's tail
    # differs from the refine prompt's, which adds its candidates before it).
    propose = prompt(1, 2, A3, 5, 6, 8)
    cache.store(propose.head(7), "propose", 10)
    refine = prompt(1, 2, A3, 5, 7, B3, 6)
    entry, n = cache.lookup(refine, limit=len(refine) - 1)
    assert (entry.states, n) == ("propose", 6)
    cache.store(refine.head(10), "refine", 10)  # diverges from propose: both kept
    assert len(cache) == 2
    longer = prompt(1, 2, A3, 5, 7, B3, 6, 8, 9)
    entry, n = cache.lookup(longer, limit=len(longer) - 1)
    assert (entry.states, n) == ("refine", 10)
    cache.store(longer.head(12), "longer", 10)  # refine is its prefix: dropped
    assert sorted(e.states for _, e in cache._lru.items()) == ["longer", "propose"]
    assert cache.lookup(prompt(3, 4), limit=1) == (None, 0)


def test_prefix_cache_with_no_room_keeps_nothing():
    cache = PrefixCache(max_entries=8, max_bytes=0)
    cache.store(prompt(1, 2, 3), "states", 10)
    assert len(cache) == 0 and cache.lookup(prompt(1, 2, 3, 4)) == (None, 0)


def test_image_digests_follow_the_pixels_not_the_object():
    digests = ImageDigests()
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    assert digests(red) == digests(red.copy())  # another object, the same pixels
    assert digests(red) != digests(Image.new("RGB", (8, 6), (254, 0, 0)))
    # The same bytes in another shape, or another mode, are another image.
    assert digests(Image.new("L", (4, 6), 7)) != digests(Image.new("L", (6, 4), 7))
    assert digests(Image.new("L", (3, 1), 0)) != digests(Image.new("P", (3, 1), 0))


def test_image_digests_forget_images_that_are_gone():
    digests = ImageDigests()
    kept = Image.new("RGB", (4, 4), (1, 2, 3))
    digests(kept)
    digests(Image.new("RGB", (4, 4), (9, 9, 9)))  # garbage at once
    gc.collect()
    assert len(digests) == 1
