"""The transformers backend's prefix cache on tiny Qwen2.5-VL and Qwen3-VL checkpoints.

A prompt is prefilled from the longest prefix it shares with one prefilled before:
its new part must get the model input, the multimodal rotary positions and the
key/value states a whole prefill gives it, and greedy replies must not change.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cropper.core.messages import ImagePart, Message, TextPart, conversation_images
from cropper.vlm.base import Sampling
from cropper.vlm.schema import boxes_schema
from cropper.vlm.transformers_engine import TransformersVLM, to_chat_messages

pytestmark = pytest.mark.slow

FAMILIES = ["tiny_qwen25_vl", "tiny_qwen3_vl"]
GREEDY = Sampling(n=1, temperature=0.0, max_tokens=64, json_schema=boxes_schema(2, "norm1000"))


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


EXEMPLARS = [_photo(i, (320, 240) if i % 2 else (200, 280)) for i in range(3)]


def _conversation(query: Image.Image, candidates=(), tail: str = "") -> list[Message]:
    """A photo's prompt in miniature: exemplars, the query, then (refining) its candidates."""
    parts: list = [TextPart("Photos with good crops:\n")]
    for i, photo in enumerate(EXEMPLARS):
        parts += [TextPart(f"Photo {i + 1}: "), ImagePart(photo), TextPart(" (4.5, 1, 2, 900)\n")]
    parts += [TextPart("Now the photo to crop: "), ImagePart(query), TextPart("\n")]
    if candidates:
        parts.append(TextPart("Earlier crops and their scores:\n"))
        for j, crop in enumerate(candidates):
            parts += [ImagePart(crop), TextPart(f" (0.{7 - j}, 10, 20, 800, 900)\n")]
    parts.append(TextPart(f'Reply with {{"crops": [[x0, y0, x1, y1]]}} in 0-1000.{tail}'))
    return [Message("system", (TextPart("You crop photos well."),)), Message("user", tuple(parts))]


def _rounds(n_photos: int = 3, refine: int = 2) -> list[list[list[Message]]]:
    """Each round's prompts for ``n_photos`` queries of different sizes (so rows are padded)."""
    queries = [_photo(100 + i, (300 - 40 * i, 200 + 30 * i)) for i in range(n_photos)]
    rounds = [[_conversation(q) for q in queries]]
    for k in range(refine):
        rounds.append(
            [
                _conversation(q, [q.crop((8 * j, 6 * j + k, 180 + 9 * j, 150)) for j in range(3)])
                for q in queries
            ]
        )
    return rounds


@pytest.fixture(scope="module", params=FAMILIES)
def folder(request):
    return str(request.getfixturevalue(request.param))


def test_model_input_is_the_processors(folder):
    """Tokens, token types, pixel values and positions as the processor and model make them."""
    import torch

    vlm = TransformersVLM(folder)
    conversations = [
        _conversation(_photo(7, (300, 200)), [_photo(8, (90, 120))]),
        _conversation(_photo(9, (150, 260))),
        [Message("user", (TextPart("No image at all."),))],
    ]
    prompts = vlm._prompts(conversations)
    texts = vlm.processor.apply_chat_template(
        [to_chat_messages(c) for c in conversations], add_generation_prompt=True, tokenize=False
    )
    for conversation, text, prompt in zip(conversations, texts, prompts, strict=True):
        images = conversation_images(conversation)
        want = vlm.processor(text=[text], images=images or None, return_tensors="pt")
        assert prompt.tokens.ids.tolist() == want["input_ids"][0].tolist()
        kinds = np.zeros(len(prompt.tokens), dtype=int)
        for span in prompt.tokens.images:
            kinds[span.start : span.end] = 1
        assert kinds.tolist() == want["mm_token_type_ids"][0].tolist()
        if images:
            spans = zip(images, prompt.tokens.images, strict=True)
            pixels = [vlm._pixels_of(image, span.digest) for image, span in spans]
            assert torch.equal(torch.cat(pixels), want["pixel_values"])
            assert torch.equal(torch.stack(prompt.grids), want["image_grid_thw"])
    # The multimodal positions of each prompt are those of the padded batch the model reads.
    batch = vlm.processor(
        text=texts,
        images=[im for c in conversations for im in conversation_images(c)],
        padding=True,
        return_tensors="pt",
    )
    positions, _ = vlm.model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    for row, prompt in enumerate(prompts):
        real = batch["attention_mask"][row].bool()
        if prompt.images:
            assert torch.equal(positions[:, row, real], prompt.positions)
        else:
            assert torch.equal(prompt.positions, torch.arange(len(prompt.tokens)).expand(3, -1))
    # Images compress the positions: a token's position is not its index.
    assert prompts[0].positions[0, -1] < len(prompts[0].tokens) - 1
    vlm.close()


def test_a_refine_prompt_continues_its_prefix_exactly(folder):
    """The new part, images and all, gets the states a whole prefill computes for it."""
    import torch

    vlm = TransformersVLM(folder)
    query = _photo(5, (300, 200))
    propose = _conversation(query)
    refine = _conversation(query, [query.crop((0, 0, 150, 100)), query.crop((50, 20, 300, 180))])
    seen = []  # the images each vision tower call took
    vlm.model.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(kwargs["grid_thw"])), with_kwargs=True
    )
    with torch.inference_mode():
        [first] = vlm._prompts([propose])
        vlm._prefill(first)
        assert seen == [4]  # three exemplars and the query
        [second] = vlm._prompts([refine])
        states = vlm._prefill(second)
        assert seen == [4, 2]  # the candidates only
        # Served up to the query and a little text, up to where the candidates begin.
        query, candidate = second.tokens.images[3], second.tokens.images[4]
        assert query.end <= vlm.counts.reused < candidate.start

        # The whole prompt at once, as a prefill without the cache runs it.
        text = vlm.processor.apply_chat_template(
            [to_chat_messages(refine)], add_generation_prompt=True, tokenize=False
        )
        inputs = vlm.processor(text=text, images=conversation_images(refine), return_tensors="pt")
        inputs["input_ids"] = inputs["input_ids"][:, :-1]
        inputs["attention_mask"] = inputs["attention_mask"][:, :-1]
        inputs["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, :-1]
        whole = vlm.model.model(**inputs, use_cache=True).cache
    assert len(whole.layers) == len(states)
    for layer, (keys, values) in zip(whole.layers, states, strict=True):
        assert keys.shape == layer.keys.shape
        torch.testing.assert_close(keys, layer.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(values, layer.values, rtol=1e-4, atol=1e-5)
    vlm.close()


@pytest.mark.parametrize(
    ("family", "static_cache"),
    # The static cache's path is the same for both families: Qwen2.5-VL's shows it.
    [("tiny_qwen25_vl", False), ("tiny_qwen25_vl", True), ("tiny_qwen3_vl", False)],
    ids=["qwen25-dynamic", "qwen25-static", "qwen3-dynamic"],
)
def test_greedy_replies_are_the_same_with_and_without_the_prefix_cache(
    request, family, static_cache
):
    folder = str(request.getfixturevalue(family))
    rounds = _rounds()
    replies = {}
    counts = {}
    for prefix_cache in (False, True):
        vlm = TransformersVLM(folder, prefix_cache=prefix_cache, static_cache=static_cache)
        assert vlm.prefix_cache is prefix_cache
        replies[prefix_cache] = [vlm.generate(prompts, GREEDY) for prompts in rounds]
        counts[prefix_cache] = vlm.counts
        vlm.close()
    assert replies[True] == replies[False]
    for reply in (r for batch in replies[True] for [r] in batch):
        assert set(json.loads(reply)) == {"crops"}
    on, off = counts[True], counts[False]
    assert on.prompts == off.prompts == 9 and on.prompt_tokens == off.prompt_tokens
    assert on.reused > 0 and on.prefilled + on.reused == on.prompt_tokens
    assert off.prefilled >= off.prompt_tokens  # padding too
    # Refine rounds prefill their candidates, not the exemplars and the query again.
    assert on.prefilled < 0.6 * off.prompt_tokens


def test_batches_of_one_and_sampled_replies(folder):
    """Chunks of one conversation, n sampled replies from one prefilled prompt each."""
    vlm = TransformersVLM(folder, batch_size=1)
    sampling = Sampling(n=2, temperature=0.9, max_tokens=64, json_schema=GREEDY.json_schema, seed=5)
    [first] = _rounds(n_photos=2, refine=0)
    replies = vlm.generate(first, sampling)
    assert [len(r) for r in replies] == [2, 2]
    for reply in (r for each in replies for r in each):
        assert set(json.loads(reply)) == {"crops"}
    assert vlm.generate(first, sampling) == replies  # all reused now, the same draws
    # Greedy: one reply repeated.
    [[a, b]] = vlm.generate(first[:1], Sampling(n=2, temperature=0.0, max_tokens=32))
    assert a == b
    vlm.close()


def test_cached_states_are_never_written_to(folder):
    import torch

    vlm = TransformersVLM(folder)
    rounds = _rounds(n_photos=2, refine=1)
    vlm.generate(rounds[0], GREEDY)
    before = [
        [(k.clone(), v.clone()) for k, v in entry.states] for _, entry in vlm._prefixes._lru.items()
    ]
    held = [entry for _, entry in vlm._prefixes._lru.items()]
    reused = vlm.counts.reused
    vlm.generate(rounds[1], GREEDY)
    vlm.generate(rounds[0], GREEDY)  # the same prompts again: served whole
    assert vlm.counts.reused > reused
    for entry, kept in zip(held, before, strict=True):
        for (k, v), (k0, v0) in zip(entry.states, kept, strict=True):
            assert torch.equal(k, k0) and torch.equal(v, v0)
    vlm.close()


def test_no_room_for_prefixes_still_answers_the_same(tiny_qwen25_vl):
    rounds = _rounds(n_photos=2, refine=1)
    vlm = TransformersVLM(str(tiny_qwen25_vl), prefix_cache_mb=0)
    assert vlm.prefix_cache is True
    got = [vlm.generate(prompts, GREEDY) for prompts in rounds]
    assert vlm.counts.reused == 0 and len(vlm._prefixes) == 0
    vlm.close()
    whole = TransformersVLM(str(tiny_qwen25_vl), prefix_cache=False)
    assert got == [whole.generate(prompts, GREEDY) for prompts in rounds]
    whole.close()


def test_bad_prefix_cache_size_is_refused(tiny_qwen25_vl):
    from cropper.core.errors import ConfigError

    with pytest.raises(ConfigError, match="prefix_cache_mb must be a number >= 0"):
        TransformersVLM(str(tiny_qwen25_vl), prefix_cache_mb=-1)


def test_other_models_prefill_whole(tiny_qwen25_vl, monkeypatch):
    import cropper.vlm.transformers_engine as engine

    monkeypatch.setattr(engine, "PREFIX_CACHE_MODELS", frozenset({"some_other_vl"}))
    vlm = TransformersVLM(str(tiny_qwen25_vl))
    assert vlm.prefix_cache is False
    [[reply]] = vlm.generate([_rounds(1, 0)[0][0]], GREEDY)
    assert vlm.counts.reused == 0 and set(json.loads(reply)) == {"crops"}
    vlm.close()


def test_one_bad_image_fails_its_own_conversation_only(tiny_qwen25_vl):
    from cropper.core.errors import VLMError

    vlm = TransformersVLM(str(tiny_qwen25_vl))
    sliver = Image.new("RGB", (1000, 4))  # aspect ratio 250: the processor refuses it
    good = _rounds(n_photos=2, refine=0)[0]
    answers = vlm.generate_each([good[0], _conversation(sliver), good[1]], GREEDY)
    assert isinstance(answers[1], VLMError)
    assert "cannot turn the conversation into model input" in str(answers[1])
    assert all(set(json.loads(a[0])) == {"crops"} for a in (answers[0], answers[2]))
    vlm.close()


# --- Through the loop: a bank of exemplars, a batch of photos, every round. ------------


def _scene(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        draw.ellipse((x, y, x + 30, y + 25), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="module")
def bank(tmp_path_factory, tiny_clip):
    from retrieval import ClipEmbedder, ExemplarIndex, read_jsonl

    root = tmp_path_factory.mktemp("bank")
    lines = []
    for i in range(5):
        _scene(i).save(root / f"ex{i}.jpg")
        lines.append(
            {"image": f"ex{i}.jpg", "crops": [[10, 10, 150, 110], [40, 20, 120, 100]],
             "scores": [4.0 + i / 10, 3.0]}
        )  # fmt: skip
    (root / "crops.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ExemplarIndex.build(
        read_jsonl(root / "crops.jsonl"), ClipEmbedder(tiny_clip), root / "bank", progress=False
    )
    return root / "bank"


def _tagged(processor, conversation) -> list:
    """The prompt's token ids, each image token tagged with its image's pixels and place."""
    text = processor.apply_chat_template(
        [to_chat_messages(conversation)], add_generation_prompt=True, tokenize=False
    )
    images = conversation_images(conversation)
    ids = processor(text=text, images=images or None, return_tensors="np")["input_ids"][0]
    pad = processor.image_token_id
    names = iter(hashlib.sha256(im.tobytes() + repr(im.size).encode()).hexdigest() for im in images)
    tagged, name, place = [], None, 0
    for i, t in enumerate(ids.tolist()):
        if t != pad:
            tagged.append(t)
            continue
        if i == 0 or ids[i - 1] != pad:
            name, place = next(names), 0
        tagged.append((name, place))
        place += 1
    return tagged


def _floor(prompts: list[list]) -> int:
    """Tokens a prefill must run at the least: each prompt past what an earlier one shares."""
    total = 0
    for k, tokens in enumerate(prompts):
        shared = 0
        for earlier in prompts[:k]:
            n = 0
            while n < min(len(tokens), len(earlier)) and tokens[n] == earlier[n]:
                n += 1
            shared = max(shared, n)
        total += len(tokens) - shared
    return total


class _PrefillCounter:
    """Tokens the language model reads in prefill: every call outside ``generate``'s
    decoding loop (the backend's own prefill), and the first call inside it."""

    def __init__(self, vlm):
        self.tokens = 0
        self.sent: list = []
        self._state = "outside"
        vlm.model.model.language_model.register_forward_pre_hook(self._count, with_kwargs=True)
        generate, model_generate = vlm.generate, vlm.model.generate

        def recorded(conversations, sampling):
            self.sent += list(conversations)
            return generate(conversations, sampling)

        def flagged(**kwargs):
            self._state = "first"
            try:
                return model_generate(**kwargs)
            finally:
                self._state = "outside"

        vlm.generate, vlm.model.generate = recorded, flagged

    def _count(self, module, args, kwargs):
        if self._state != "decoding":
            embeds = kwargs["inputs_embeds"]
            self.tokens += embeds.shape[0] * embeds.shape[1]
        if self._state == "first":
            self._state = "decoding"


@pytest.mark.parametrize(
    ("family", "coords"), [("tiny_qwen25_vl", "pixel"), ("tiny_qwen3_vl", "norm1000")]
)
def test_the_loop_crops_the_same_and_prefills_near_the_floor(
    request, family, coords, tiny_clip, bank
):
    from cropper import Cropper

    folder = str(request.getfixturevalue(family))
    photos = [_scene(50 + i, size=(200 - 20 * i, 150 + 10 * i)) for i in range(3)]
    runs = {}
    for prefix_cache in (True, False):
        cropper = Cropper(
            vlm=folder,
            vlm_options={"prefix_cache": prefix_cache},
            clip=tiny_clip,
            head=None,
            index=bank,
            exemplars=3,
            crops=3,
            refine_rounds=2,
            coords=coords,
            temperature=0.0,
            max_tokens=128,
            seed=0,
        )
        assert cropper.vlm.prefix_cache is prefix_cache
        counter = _PrefillCounter(cropper.vlm)
        with cropper:
            results = cropper.crop_batch(photos)
            floor = _floor([_tagged(cropper.vlm.processor, c) for c in counter.sent])
            runs[prefix_cache] = (results, counter, cropper.vlm.counts, floor)
    on, on_counter, on_counts, floor = runs[True]
    off, off_counter, _, off_floor = runs[False]
    for a, b in zip(on, off, strict=True):
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert [r.replies for r in a.rounds] == [r.replies for r in b.rounds]
        assert [c.box for c in a.candidates] == [c.box for c in b.candidates]
        assert a.box == b.box
        # Constrained replies from the model itself (a random model's greedy boxes may all
        # be degenerate, so the loop may fall back; the replies are what is compared).
        assert all("crops" in json.loads(reply) for r in a.rounds for reply in r.replies)
    # Three photos, three rounds, and any retry of a round that gave no valid box.
    assert len(on_counter.sent) == len(off_counter.sent) >= 9 and floor == off_floor
    # The model read what the backend says it did, and near the floor.
    assert on_counter.tokens == on_counts.prefilled
    assert on_counts.prefilled <= 1.2 * floor
    assert off_counter.tokens >= 2 * floor  # whole prefills: the test sees the difference
