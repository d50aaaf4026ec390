"""In-process VLM backend on Hugging Face transformers, with xgrammar-constrained JSON.

``TransformersVLM("Qwen/Qwen2.5-VL-7B-Instruct")`` (or a local folder) loads the
checkpoint's processor and model, renders each conversation with the checkpoint's
own chat template, and generates replies for a batch of conversations at once.
When a JSON schema is given, xgrammar's logits processor masks every token that
would leave the schema, so even a random model writes parseable boxes.

On a GPU the key/value cache is static by default (``cache_implementation="static"``),
which lets transformers compile the decoding step: measured on an H100 for
Qwen2.5-VL-7B at batch 1, about 9.5 ms per decoded token against 31 ms with the
default dynamic cache. The first call at each new batch size or cache length compiles
(tens of seconds); cache lengths are rounded up to :data:`STATIC_CACHE_STEP` tokens so
that prompts of similar length share one compiled graph.

A photo's rounds send prompts that begin alike (the instructions, the exemplars, the
query; a refine prompt adds its candidates near the end), so by default
(``prefix_cache=True``) the backend prefills each prompt from the longest prefix it
shares with a prompt it prefilled before: it keeps those prompts' key/value states
in a bounded LRU (:mod:`cropper.vlm.prefix_cache`), runs the vision tower on the new
part's images only, and runs the image processor once per image (its output is kept,
by a digest of the pixels). Each conversation's new part is prefilled on its own
(but its last token), then the batch decodes together from the conversations'
states, left-padded into one cache. Greedy replies are the same as with
``prefix_cache=False``, which prefills every prompt whole in one padded batch. It is
built for Qwen2.5-VL and Qwen3-VL, whose multimodal rotary positions are computed
for the whole prompt and handed to the model, so the new part's positions continue
the prefix's exactly; other models prefill whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropper.core.errors import ConfigError, MissingDependencyError, VLMError, WeightsNotFoundError
from cropper.core.messages import Conversation, ImagePart, TextPart, conversation_images
from cropper.core.weights import PICKLED_OBJECTS_ERRORS, pickled_weights_error
from cropper.vlm.base import VLM, Sampling
from cropper.vlm.prefix_cache import (
    BoundedLRU,
    ImageDigests,
    PrefixCache,
    PromptTokens,
    expand_image_placeholders,
    image_spans,
)

logger = logging.getLogger(__name__)

#: A static cache's length is rounded up to a multiple of this many tokens. transformers
#: keeps the longest cache it has made, so lengths only grow and recompiles stay few.
STATIC_CACHE_STEP = 2048
#: Prefilled prompts kept for reuse, at most; ``prefix_cache_mb`` bounds their bytes.
PREFIX_CACHE_ENTRIES = 64
#: Preprocessed images (pixel values) kept, in MiB; each image's token grid is kept longer.
PIXEL_CACHE_MB = 512
GRID_CACHE_ENTRIES = 4096
#: The model types whose prefill from a cached prefix is built and tested.
PREFIX_CACHE_MODELS = frozenset({"qwen2_5_vl", "qwen3_vl"})


@dataclass
class PrefillCounts:
    """Prompt tokens a backend has been sent, and how many its language model ran to read them."""

    prompts: int = 0  # conversations answered (once each, whatever the replies asked)
    prompt_tokens: int = 0  # their tokens, images' included
    prefilled: int = 0  # tokens the language model ran for them: padding and rows repeated
    # for n sampled replies included, each reused prompt's last token too
    reused: int = 0  # tokens served from a cached prefix instead


@dataclass(frozen=True, eq=False)
class _Prompt:
    """One conversation as model input: tokens, images, their grids and rotary positions."""

    tokens: PromptTokens
    images: list[Any]  # the PIL images, in order
    grids: list[Any]  # each image's (t, h, w) patch grid, a tensor
    positions: Any  # (3, len) multimodal rotary positions of the whole prompt


def to_chat_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """A conversation as chat-template messages: content lists of image and text parts.

    Images stay PIL images (``{"type": "image", "image": img}``), which the
    processor's ``apply_chat_template`` extracts in order; empty texts are dropped.
    """
    messages = []
    for message in conversation:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                content.append({"type": "image", "image": part.image})
            elif isinstance(part, TextPart):
                if part.text:
                    content.append({"type": "text", "text": part.text})
            else:
                raise ConfigError(f"message part {part!r} is neither TextPart nor ImagePart")
        messages.append({"role": message.role, "content": content})
    return messages


def quiet_loading_bar() -> None:
    """No "Loading weights" bar unless cropper logs at INFO (``-v``); download bars stay.

    transformers draws its loading bar when its module flag says so; the public switch
    (``disable_progress_bar``) would also hide huggingface_hub's download bars, which a
    first run of several gigabytes wants, so the flag alone is set.
    """
    import transformers.utils.logging as hf_logging

    if not logger.isEnabledFor(logging.INFO) and hasattr(hf_logging, "_tqdm_active"):
        hf_logging._tqdm_active = False


def _first_line(exc: BaseException) -> str:
    """An exception's first line, to quote inside a one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolve_device(device: Any) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_dtype(dtype: Any, device: Any) -> Any:
    """bfloat16 on a GPU, float32 elsewhere (CPU half precision is slow and lossy)."""
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not a torch dtype; use e.g. 'bfloat16' or 'float32'")
    return resolved


def resolve_static_cache(static_cache: bool | None, device: Any) -> bool:
    """Whether to decode with a static cache: as asked, else on a CUDA device only.

    Off the GPU transformers does not compile, and a static cache preallocated to the
    full length only costs memory there.
    """
    if static_cache is None:
        return getattr(device, "type", str(device)).startswith("cuda")
    return bool(static_cache)


def default_prefix_cache_bytes(device: Any) -> int:
    """What the prefix cache may hold by default: a quarter of a CUDA device, else 4 GiB."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory // 4)
    return 4 * 2**30


def static_cache_length(prompt_tokens: int, max_new_tokens: int) -> int:
    """The static cache length for a call: prompt plus reply, rounded up to the step."""
    needed = prompt_tokens + max_new_tokens
    return -(-needed // STATIC_CACHE_STEP) * STATIC_CACHE_STEP


class TransformersVLM(VLM):
    """A Qwen2.5-VL, Qwen3-VL or other image-text-to-text model run by transformers.

    ``model`` is a hub id (loaded from the local cache when offline) or a folder.
    A chunk whose processing fails (an image its processor refuses) is asked again
    conversation by conversation (:meth:`~cropper.vlm.base.VLM.generate_each`), so one
    photo's fault is its own.
    ``batch_size`` conversations share one ``generate`` call; ``constrained``
    turns on xgrammar when a sampling asks for a JSON schema. ``static_cache``
    decodes with a preallocated cache that transformers compiles (None: on when the
    device is CUDA; see the module docstring). ``prefix_cache`` prefills each prompt
    from the longest prefix it shares with one prefilled before (see the module
    docstring); ``prefix_cache_mb`` bounds the key/value states kept for that (None: a
    quarter of a CUDA device's memory, else 4 GiB; 0 keeps none). :attr:`counts` adds
    up the prompt tokens sent and those the language model ran.
    """

    def __init__(
        self,
        model: str,
        *,
        device: Any = None,
        dtype: Any = None,
        batch_size: int = 8,
        constrained: bool = True,
        trust_remote_code: bool = False,
        static_cache: bool | None = None,
        prefix_cache: bool = True,
        prefix_cache_mb: float | None = None,
    ):
        try:
            import torch  # noqa: F401
            import transformers
        except ImportError as exc:
            raise MissingDependencyError(
                exc.name or "transformers", purpose="the in-process transformers VLM"
            ) from None
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if prefix_cache_mb is not None and (
            isinstance(prefix_cache_mb, bool)
            or not isinstance(prefix_cache_mb, (int, float))
            or not prefix_cache_mb >= 0
        ):
            raise ConfigError(f"prefix_cache_mb must be a number >= 0, got {prefix_cache_mb!r}")
        self.name = str(model)
        self.batch_size = batch_size
        self.constrained = constrained
        self.constrains_output = constrained
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.static_cache = resolve_static_cache(static_cache, self.device)
        source = self._source(self.name)
        quiet_loading_bar()
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(
                source, trust_remote_code=trust_remote_code
            )
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(
                source, dtype=self.dtype, trust_remote_code=trust_remote_code
            )
        except PICKLED_OBJECTS_ERRORS as exc:  # a .bin that weights_only=True refused
            raise pickled_weights_error(f"VLM weights in {self.name!r}", exc) from None
        except OSError as exc:
            reason = _first_line(exc)
            if source != self.name or Path(source).is_dir():
                raise WeightsNotFoundError(
                    f"VLM folder {self.name!r} holds no complete checkpoint ({reason}); download "
                    f"one there with `hf download MODEL_ID --local-dir {self.name}`"
                ) from None
            raise WeightsNotFoundError(
                f"VLM {self.name!r} is neither a local checkpoint folder nor in the Hugging Face "
                f"cache, and could not be downloaded ({reason}); where there is internet, run "
                f"`hf download {self.name} --local-dir DIR` (older huggingface_hub: "
                f"`huggingface-cli download`), then use Cropper(vlm=DIR)"
            ) from None
        except ValueError as exc:
            reason = _first_line(exc)
            raise ConfigError(
                f"VLM {self.name!r} is not an image-text-to-text checkpoint transformers can "
                f"load ({reason}); pass a vision-language model such as Qwen/Qwen2.5-VL-7B-Instruct"
            ) from None
        self.model.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
        self._stop_ids = self._stop_token_ids()
        self._pad_id = self._pad_token_id()
        self._grammar_compiler: Any = None
        self._grammars: dict[str, Any] = {}
        self.counts = PrefillCounts()
        unsupported = self._prefix_cache_unsupported() if prefix_cache else ""
        if unsupported:
            logger.info("%s: prompts are prefilled whole: %s", self.name, unsupported)
        self.prefix_cache = bool(prefix_cache) and not unsupported
        budget = (
            default_prefix_cache_bytes(self.device)
            if prefix_cache_mb is None
            else prefix_cache_mb * 2**20
        )
        self._prefixes = PrefixCache(PREFIX_CACHE_ENTRIES, budget)
        self._pixels = BoundedLRU(GRID_CACHE_ENTRIES, PIXEL_CACHE_MB * 2**20)
        self._grids = BoundedLRU(GRID_CACHE_ENTRIES, float("inf"))
        self._digests = ImageDigests()
        self._static: Any = None  # the static cache decoding from cached prefixes reuses
        logger.info(
            "loaded %s on %s as %s (static cache: %s, prefix cache: %s)",
            self.name,
            self.device,
            self.dtype,
            self.static_cache,
            self.prefix_cache,
        )

    @staticmethod
    def _source(model: str) -> str:
        """Where to load from: an existing folder (``~`` expanded), else the hub id as given.

        A spec written as a path must name a folder holding a checkpoint, rather than
        fall through to the hub with a confusing message.
        """
        folder = Path(model).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise WeightsNotFoundError(
                    f"VLM folder {model!r} holds no checkpoint (no config.json); download one "
                    f"there with `hf download MODEL_ID --local-dir {model}`"
                )
            return str(folder)
        if model.startswith(("/", "./", "../", "~", "\\")) or folder.is_absolute():
            raise WeightsNotFoundError(
                f"VLM folder {model!r} does not exist; check the path, or download the model "
                f"there with `hf download MODEL_ID --local-dir {model}`"
            )
        return model

    def _stop_token_ids(self) -> list[int]:
        """The ids that end a reply: the generation config's, else the tokenizer's eos."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not ids:
            raise ConfigError(f"VLM {self.name!r} defines no end-of-sequence token; cannot stop")
        return ids

    def _pad_token_id(self) -> int:
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        return self._stop_ids[0] if pad is None else int(pad)

    def _prefix_cache_unsupported(self) -> str:
        """Why prompts cannot start from a cached prefix with this model; "" when they can."""
        model_type = getattr(self.model.config, "model_type", "")
        if model_type not in PREFIX_CACHE_MODELS:
            return f"the prefix cache is built for {', '.join(sorted(PREFIX_CACHE_MODELS))} only"
        if not hasattr(self.processor, "image_token") or not hasattr(
            getattr(self.processor, "image_processor", None), "merge_size"
        ):
            return "its processor is not Qwen-VL's"
        text_config = self.model.config.get_text_config()
        if any(
            kind != "full_attention" for kind in getattr(text_config, "layer_types", None) or []
        ):
            return "it has sliding-window layers"
        return ""

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """The compiled xgrammar grammar of ``schema``, cached by its JSON text."""
        try:
            import xgrammar as xgr
        except ImportError:
            raise MissingDependencyError("xgrammar", purpose="constrained decoding") from None
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                # The mask must span the lm head, which Qwen pads past the tokenizer.
                vocab_size = self.model.get_output_embeddings().weight.shape[0]
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=vocab_size, stop_token_ids=self._stop_ids
                )
                self._grammar_compiler = xgr.GrammarCompiler(info)
            try:
                self._grammars[key] = self._grammar_compiler.compile_json_schema(
                    key, any_whitespace=False
                )
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(f"json_schema cannot be compiled by xgrammar: {exc}") from None
        return self._grammars[key]

    @property
    def max_in_flight(self) -> int:
        """Conversations one ``model.generate`` call takes: ``batch_size``."""
        return self.batch_size

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        """Reply ``sampling.n`` times to each conversation, ``batch_size`` conversations a call."""
        if sampling.n < 1:
            raise ConfigError(f"sampling.n must be at least 1, got {sampling.n}")
        replies: list[list[str]] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            # Each chunk its own seed, so chunks do not repeat one another's draws.
            seed = None if sampling.seed is None else sampling.seed + start
            replies.extend(self._generate_chunk(chunk, sampling, seed))
        return replies

    def _generate_chunk(
        self, chunk: Sequence[Conversation], sampling: Sampling, seed: int | None
    ) -> list[list[str]]:
        do_sample = sampling.temperature > 0
        # Greedy decoding gives one reply; it is repeated n times below.
        per_conversation = sampling.n if do_sample else 1
        generate = self._generate_reusing if self.prefix_cache else self._generate_whole
        texts = generate(chunk, sampling, per_conversation, seed)
        grouped = [
            texts[i * per_conversation : (i + 1) * per_conversation] for i in range(len(chunk))
        ]
        if not do_sample:
            grouped = [replies * sampling.n for replies in grouped]
        return grouped

    def _generate_whole(
        self,
        chunk: Sequence[Conversation],
        sampling: Sampling,
        per_conversation: int,
        seed: int | None,
    ) -> list[str]:
        """Every prompt prefilled whole, in one padded batch."""
        # Render with the checkpoint's template, then process text and images together:
        # the two-step form works the same across transformers 4.57 to 5.x.
        images = [conversation_images(c) for c in chunk]
        with self._input_errors():
            prompts = self.processor.apply_chat_template(
                [to_chat_messages(c) for c in chunk], add_generation_prompt=True, tokenize=False
            )
            inputs = self.processor(
                text=prompts,
                images=images if any(images) else None,
                padding=True,
                return_tensors="pt",
            )
        inputs = inputs.to(device=self.device, dtype=self.dtype)
        width = inputs["input_ids"].shape[1]
        options = self._options(sampling, len(chunk) * per_conversation)
        options["num_return_sequences"] = per_conversation
        if self.static_cache:
            options["cache_implementation"] = "static"
            options["max_cache_len"] = static_cache_length(width, sampling.max_tokens)
        output = self._run(
            lambda: self.model.generate(**inputs, **options), seed, len(chunk), per_conversation
        )
        self.counts.prompts += len(chunk)
        self.counts.prompt_tokens += int(inputs["attention_mask"].sum())
        self.counts.prefilled += len(chunk) * per_conversation * width
        return self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)

    def _generate_reusing(
        self,
        chunk: Sequence[Conversation],
        sampling: Sampling,
        per_conversation: int,
        seed: int | None,
    ) -> list[str]:
        """Each prompt prefilled from its longest cached prefix, then all decoded together.

        A conversation's new part is prefilled on its own (the prefixes differ in
        length, and a cold one is long enough to fill the device alone) up to its last
        token; ``generate`` then runs the last tokens of the whole batch and decodes,
        from the conversations' states left-padded into one cache.
        """
        texts = self._render(chunk)
        rows = len(chunk) * per_conversation
        options = self._options(sampling, rows)
        prompts: list[_Prompt] = []

        def run() -> Any:
            # Each prompt is prefilled as soon as it is read, while its images are at hand.
            states = []
            for text, conversation in zip(texts, chunk, strict=True):
                prompts.append(self._prompt(text, conversation))
                states.append(self._prefill(prompts[-1]))
            inputs = self._decode_inputs(prompts, states, per_conversation, sampling.max_tokens)
            return self.model.generate(**inputs, **options), inputs["input_ids"].shape[1]

        output, width = self._run(run, seed, len(chunk), per_conversation)
        self.counts.prompts += len(chunk)
        self.counts.prompt_tokens += sum(len(p.tokens) for p in prompts)
        self.counts.prefilled += rows  # each row's last prompt token, read by generate
        return self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)

    def _options(self, sampling: Sampling, rows: int) -> dict[str, Any]:
        """``generate``'s options for ``rows`` rows of a batch (the grammar needs one each)."""
        do_sample = sampling.temperature > 0
        # Sampling means temperature alone: the hub's top_k=1 (Qwen's) would make n replies
        # one, and a repetition penalty would push boxes off repeated digits. Greedy gets
        # the neutral values, which transformers does not warn about.
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "eos_token_id": self._stop_ids,
            "pad_token_id": self._pad_id,
            "do_sample": do_sample,
            "temperature": sampling.temperature if do_sample else 1.0,
            # A user's top_k and top_p apply to sampling; otherwise neutral (see above).
            "top_k": (sampling.top_k or 0) if do_sample else 50,
            "top_p": (sampling.top_p or 1.0) if do_sample else 1.0,
            "repetition_penalty": 1.0,
        }
        if sampling.json_schema is not None and self.constrained:
            from xgrammar.contrib.hf import LogitsProcessor

            # One matcher per row; a processor serves one generate call only.
            options["logits_processor"] = [
                LogitsProcessor([self._grammar(sampling.json_schema)] * rows)
            ]
        return options

    def _run(self, call: Callable[[], Any], seed: int | None, conversations: int, n: int) -> Any:
        """``call()`` without gradients, seeded when asked, its failures as VLMErrors."""
        import torch

        # A seeded call leaves the caller's random state as it found it; others advance it.
        rng = (
            torch.random.fork_rng(devices=self._rng_devices())
            if seed is not None
            else contextlib.nullcontext()
        )
        try:
            with rng, torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)
                return call()
        except torch.cuda.OutOfMemoryError:
            raise VLMError(
                f"{self.name}: out of GPU memory generating for {conversations} conversations x "
                f"{n} replies; lower batch_size or the number of exemplars"
            ) from None
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise VLMError(f"{self.name}: generation failed: {_first_line(exc)}") from None

    @contextlib.contextmanager
    def _input_errors(self) -> Any:
        """The processor's refusals (an image it cannot take) as this conversation's VLMError."""
        try:
            yield
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise VLMError(
                f"{self.name}: cannot turn the conversation into model input: {_first_line(exc)}"
            ) from None

    def _render(self, chunk: Sequence[Conversation]) -> list[str]:
        """Each conversation as text in the checkpoint's chat template, images as placeholders."""
        with self._input_errors():
            return self.processor.apply_chat_template(
                [to_chat_messages(c) for c in chunk], add_generation_prompt=True, tokenize=False
            )

    def _prompt(self, text: str, conversation: Conversation) -> _Prompt:
        """A rendered conversation's tokens, image grids and whole-prompt positions.

        As the processor and the model make them (each image is processed once).
        """
        import torch

        image_id = self.processor.image_token_id
        merge = self.processor.image_processor.merge_size
        with self._input_errors():
            images = conversation_images(conversation)
            digests = [self._digests(image) for image in images]
            grids = self._image_grids(images, digests)
            counts = [int(grid.prod()) // merge**2 for grid in grids]
            text = expand_image_placeholders(text, self.processor.image_token, counts)
            ids = np.asarray(self.tokenizer(text)["input_ids"], dtype=np.int64)
            if len(ids) < 2:
                raise ValueError("the prompt is a single token")
            tokens = PromptTokens(ids, image_spans(ids, image_id, counts, digests))
        if images:
            kinds = (ids == image_id).astype(np.int64)  # 1 an image's token, 0 text
            positions, _ = self.model.model.get_rope_index(
                input_ids=torch.from_numpy(ids)[None],
                mm_token_type_ids=torch.from_numpy(kinds)[None],
                image_grid_thw=torch.stack(grids),
            )
            positions = positions[:, 0]
        else:
            positions = torch.arange(len(ids)).expand(3, -1)
        return _Prompt(tokens, images, grids, positions)

    def _prompts(self, chunk: Sequence[Conversation]) -> list[_Prompt]:
        """:meth:`_prompt` of each conversation."""
        return [self._prompt(t, c) for t, c in zip(self._render(chunk), chunk, strict=True)]

    def _image_grids(self, images: list[Any], digests: list[str]) -> list[Any]:
        """Each image's patch grid; images not seen before are processed (pixels kept)."""
        new = {
            d: image for image, d in zip(images, digests, strict=True) if self._grids.get(d) is None
        }
        if new:
            self._process(list(new.values()), list(new))
        return [self._grids.get(d) for d in digests]

    def _pixels_of(self, image: Any, digest: str) -> Any:
        """An image's pixel values as the processor makes them: kept, else made again."""
        pixels = self._pixels.get(digest)
        if pixels is None:
            with self._input_errors():
                pixels = self._process([image], [digest])[0]
        return pixels

    def _process(self, images: list[Any], digests: list[str]) -> list[Any]:
        """Run the image processor on ``images``; keep each one's grid and pixel values."""
        out = self.processor.image_processor(images=images, return_tensors="pt")
        pixels, grids = out["pixel_values"], out["image_grid_thw"]
        each, start = [], 0
        for grid, digest in zip(grids, digests, strict=True):
            stop = start + int(grid.prod())
            mine = pixels[start:stop].clone()
            self._grids.put(digest, grid.clone(), 0)
            self._pixels.put(digest, mine, mine.numel() * mine.element_size())
            each.append(mine)
            start = stop
        return each

    def _prefill(self, prompt: _Prompt) -> list[tuple[Any, Any]]:
        """Key/value states of ``prompt`` but its last token, from its longest cached prefix.

        Only the tokens after the prefix run through the model, their images through the
        vision tower, at the positions the whole prompt gives them. The states are kept
        for later prompts (the cached ones are never written to: a cache grows by
        concatenation).
        """
        import torch
        from transformers import DynamicCache

        end = len(prompt.tokens) - 1
        cached, start = self._prefixes.lookup(prompt.tokens, limit=end)
        self.counts.reused += start
        self.counts.prefilled += end - start
        if cached is not None and start == end:
            return [(k[:, :, :end], v[:, :, :end]) for k, v in cached.states]
        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(cached.states if cached is not None else []):
            cache.update(keys[:, :, :start], values[:, :, :start], layer)
        extra: dict[str, Any] = {}
        new = [i for i, span in enumerate(prompt.tokens.images) if span.start >= start]
        if new:
            extra["pixel_values"] = torch.cat(
                [self._pixels_of(prompt.images[i], prompt.tokens.images[i].digest) for i in new]
            ).to(self.device, self.dtype)
            extra["image_grid_thw"] = torch.stack([prompt.grids[i] for i in new]).to(self.device)
        ids = torch.from_numpy(prompt.tokens.ids[start:end])[None].to(self.device)
        self.model.model(
            input_ids=ids,
            position_ids=prompt.positions[:, None, start:end].to(self.device),
            cache=cache,
            use_cache=True,
            **extra,
        )
        states = [(layer.keys, layer.values) for layer in cache.layers]
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in states)
        self._prefixes.store(prompt.tokens.head(end), states, nbytes)
        return states

    def _decode_inputs(
        self,
        prompts: list[_Prompt],
        states: list[list[tuple[Any, Any]]],
        repeat: int,
        max_new_tokens: int,
    ) -> dict[str, Any]:
        """``generate``'s inputs: the prompts left-padded, each ``repeat`` times, their states.

        Whole prompts and positions go in (``generate`` reads the tokens the cache lacks:
        the last); the text row of the positions is what ``generate`` would make from
        the attention mask, the other three each prompt's multimodal positions.
        """
        import torch

        width = max(len(p.tokens) for p in prompts)
        rows = len(prompts) * repeat
        input_ids = torch.full((rows, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        positions = torch.zeros((4, rows, width), dtype=torch.long)
        layers = [
            (
                k.new_zeros((rows, k.shape[1], width - 1, k.shape[3])),
                v.new_zeros((rows, v.shape[1], width - 1, v.shape[3])),
            )
            for k, v in states[0]
        ]
        for row in range(rows):
            prompt, held = prompts[row // repeat], states[row // repeat]
            pad = width - len(prompt.tokens)
            input_ids[row, pad:] = torch.from_numpy(prompt.tokens.ids)
            mask[row, pad:] = 1
            positions[0, row, pad:] = torch.arange(len(prompt.tokens))
            positions[1:, row, pad:] = prompt.positions
            for (keys, values), (k, v) in zip(layers, held, strict=True):
                keys[row, :, pad:] = k[0]
                values[row, :, pad:] = v[0]
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "cache": self._decode_cache(layers, width + max_new_tokens),
        }

    def _decode_cache(self, layers: list[tuple[Any, Any]], length: int) -> Any:
        """A cache holding ``layers``: dynamic, or the static one (kept: compiled graphs hold)."""
        from transformers import DynamicCache, StaticCache

        if not self.static_cache:
            cache = DynamicCache(config=self.model.config)
        else:
            rows, length = layers[0][0].shape[0], static_cache_length(length, 0)
            held = self._static
            if held is not None and held[0] == rows and held[1] >= length:
                cache = held[2]
                cache.reset()
            else:
                length = max(length, held[1] if held is not None and held[0] == rows else 0)
                cache = StaticCache(config=self.model.config, max_cache_len=length)
                self._static = (rows, length, cache)
        for layer, (keys, values) in enumerate(layers):
            cache.update(keys, values, layer)
        return cache

    def _rng_devices(self) -> list[int]:
        """CUDA devices whose RNG a seeded call saves and restores around itself."""
        if self.device.type != "cuda":
            return []
        import torch

        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def close(self) -> None:
        """Drop the model and what it keeps (prefilled prompts, images), free its GPU memory."""
        self.model = None
        self._grammars.clear()
        self._prefixes.clear()
        self._pixels.clear()
        self._grids.clear()
        self._static = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
