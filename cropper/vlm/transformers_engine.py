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
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError, MissingDependencyError, VLMError, WeightsNotFoundError
from cropper.core.messages import Conversation, ImagePart, TextPart, conversation_images
from cropper.core.weights import PICKLED_OBJECTS_ERRORS, pickled_weights_error
from cropper.vlm.base import VLM, Sampling

logger = logging.getLogger(__name__)

#: A static cache's length is rounded up to a multiple of this many tokens. transformers
#: keeps the longest cache it has made, so lengths only grow and recompiles stay few.
STATIC_CACHE_STEP = 2048


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
    device is CUDA; see the module docstring).
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
        logger.info(
            "loaded %s on %s as %s (static cache: %s)",
            self.name,
            self.device,
            self.dtype,
            self.static_cache,
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
        import torch

        # Render with the checkpoint's template, then process text and images together:
        # the two-step form works the same across transformers 4.57 to 5.x.
        images = [conversation_images(c) for c in chunk]
        try:
            prompts = self.processor.apply_chat_template(
                [to_chat_messages(c) for c in chunk], add_generation_prompt=True, tokenize=False
            )
            inputs = self.processor(
                text=prompts,
                images=images if any(images) else None,
                padding=True,
                return_tensors="pt",
            )
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise VLMError(
                f"{self.name}: cannot turn the conversation into model input: {_first_line(exc)}"
            ) from None
        inputs = inputs.to(device=self.device, dtype=self.dtype)

        do_sample = sampling.temperature > 0
        # Greedy decoding gives one reply; it is repeated n times below.
        per_conversation = sampling.n if do_sample else 1
        rows = len(chunk) * per_conversation
        # Sampling means temperature alone: the hub's top_k=1 (Qwen's) would make n replies
        # one, and a repetition penalty would push boxes off repeated digits. Greedy gets
        # the neutral values, which transformers does not warn about.
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "num_return_sequences": per_conversation,
            "eos_token_id": self._stop_ids,
            "pad_token_id": self._pad_id,
            "do_sample": do_sample,
            "temperature": sampling.temperature if do_sample else 1.0,
            # A user's top_k and top_p apply to sampling; otherwise neutral (see above).
            "top_k": (sampling.top_k or 0) if do_sample else 50,
            "top_p": (sampling.top_p or 1.0) if do_sample else 1.0,
            "repetition_penalty": 1.0,
        }
        if self.static_cache:
            options["cache_implementation"] = "static"
            options["max_cache_len"] = static_cache_length(
                inputs["input_ids"].shape[1], sampling.max_tokens
            )
        if sampling.json_schema is not None and self.constrained:
            from xgrammar.contrib.hf import LogitsProcessor

            # One matcher per row; a processor serves one generate call only.
            options["logits_processor"] = [
                LogitsProcessor([self._grammar(sampling.json_schema)] * rows)
            ]

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
                output = self.model.generate(**inputs, **options)
        except torch.cuda.OutOfMemoryError:
            raise VLMError(
                f"{self.name}: out of GPU memory generating for {len(chunk)} conversations x "
                f"{per_conversation} replies; lower batch_size or the number of exemplars"
            ) from None
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise VLMError(f"{self.name}: generation failed: {_first_line(exc)}") from None

        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        grouped = [
            texts[i * per_conversation : (i + 1) * per_conversation] for i in range(len(chunk))
        ]
        if not do_sample:
            grouped = [replies * sampling.n for replies in grouped]
        return grouped

    def _rng_devices(self) -> list[int]:
        """CUDA devices whose RNG a seeded call saves and restores around itself."""
        if self.device.type != "cuda":
            return []
        import torch

        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def close(self) -> None:
        """Drop the model and free its GPU memory."""
        self.model = None
        self._grammars.clear()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
