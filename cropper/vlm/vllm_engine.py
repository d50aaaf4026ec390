"""The in-process vLLM engine backend: ``vllm.LLM.chat`` on a local GPU.

Needs ``pip install 'cropper[vllm]'`` (vLLM >= 0.12, whose structured outputs
take ``StructuredOutputsParams``). The request is built by pure functions
(:func:`to_vllm_messages`, :func:`sampling_kwargs`), testable without vLLM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cropper.core.errors import MissingDependencyError, VLMError
from cropper.core.messages import Conversation, ImagePart
from cropper.vlm.base import VLM, Sampling

log = logging.getLogger(__name__)


def to_vllm_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The OpenAI-style messages ``LLM.chat`` takes, images as PIL ``image_pil`` parts.

    PIL images go in as they are: no encoding round trip in-process. A message of
    text alone is a plain string, which every chat template accepts.
    """
    messages: list[dict[str, Any]] = []
    for message in conversation:
        if not any(isinstance(p, ImagePart) for p in message.parts):
            messages.append({"role": message.role, "content": message.text})
            continue
        content = [
            {"type": "image_pil", "image_pil": p.image}
            if isinstance(p, ImagePart)
            else {"type": "text", "text": p.text}
            for p in message.parts
        ]
        messages.append({"role": message.role, "content": content})
    return messages


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for ``sampling``.

    A JSON schema appears as ``structured_outputs={"json": schema}``; the caller
    wraps it in ``StructuredOutputsParams``, keeping this function free of vLLM.
    """
    kwargs = sampling.settings()
    if sampling.json_schema is not None:
        kwargs["structured_outputs"] = {"json": sampling.json_schema}
    return kwargs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MissingDependencyError(
            "vllm", extra="vllm", purpose="the in-process vLLM engine"
        ) from None
    return vllm


class VLLMEngineVLM(VLM):
    """A VLM run in this process by vLLM's engine.

    ``engine_kwargs`` go to ``vllm.LLM`` as they are (``max_model_len``,
    ``gpu_memory_utilization``, ``limit_mm_per_prompt``, ...). Replies to a
    batch of conversations are generated in one ``LLM.chat`` call; when that call
    fails, :meth:`~cropper.vlm.base.VLM.generate_each` asks for each conversation
    alone, so only the photo at fault fails.
    """

    constrains_output = True  # structured outputs hold replies to the JSON schema

    def __init__(self, model: str, **engine_kwargs: Any):
        vllm = _import_vllm()
        self.name = model
        self.model = model
        self._vllm = vllm
        self._llm = vllm.LLM(model=model, **engine_kwargs)

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling
    ) -> list[list[str]]:
        if not conversations:
            return []
        from vllm.sampling_params import StructuredOutputsParams

        kwargs = sampling_kwargs(sampling)
        if "structured_outputs" in kwargs:
            kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
        try:
            params = self._vllm.SamplingParams(**kwargs)
            outputs = self._llm.chat(
                [to_vllm_messages(c) for c in conversations],
                sampling_params=params,
                use_tqdm=False,
            )
        except Exception as exc:  # vLLM's own errors, whatever their class: kept in the message
            # vLLM >= 0.12 raises VLLMValidationError (no ValueError) for a prompt over
            # max_model_len, too many images, greedy sampling with n > 1; others raise
            # ValueError or RuntimeError (bad chat input, out of memory).
            raise VLMError(
                f"vLLM could not answer with {self.model}: {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from exc
        return [[choice.text for choice in output.outputs] for output in outputs]

    def close(self) -> None:
        """Drop the engine so its GPU memory can be freed."""
        self._llm = None
