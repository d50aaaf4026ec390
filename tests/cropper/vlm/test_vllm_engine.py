"""The vLLM engine backend: its pure request building and its install hint (vLLM absent)."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
from PIL import Image

from cropper.core.errors import MissingDependencyError
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.vlm import load_vlm
from cropper.vlm.base import Sampling
from cropper.vlm.schema import boxes_schema
from cropper.vlm.vllm_engine import VLLMEngineVLM, sampling_kwargs, to_vllm_messages

SCHEMA = boxes_schema(6, "norm1")


def test_to_vllm_messages_passes_pil_images_and_text_parts():
    first, second = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (4, 4), "blue")
    conversation = [
        Message("system", (TextPart("You crop photos."),)),
        Message("user", (TextPart("Exemplar:"), ImagePart(first, key="ex"), TextPart("Query:"))),
        Message("assistant", (TextPart('{"crops": []}'),)),
        Message("user", (ImagePart(second),)),
    ]
    messages = to_vllm_messages(conversation)
    assert messages[0] == {"role": "system", "content": "You crop photos."}
    assert messages[1]["role"] == "user"
    assert [p["type"] for p in messages[1]["content"]] == ["text", "image_pil", "text"]
    assert messages[1]["content"][0] == {"type": "text", "text": "Exemplar:"}
    assert messages[1]["content"][1]["image_pil"] is first  # no encoding round trip
    assert messages[2] == {"role": "assistant", "content": '{"crops": []}'}
    assert messages[3] == {"role": "user", "content": [{"type": "image_pil", "image_pil": second}]}


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (Sampling(), {"n": 1, "temperature": 0.05, "max_tokens": 512}),
        (
            Sampling(n=6, temperature=0.7, max_tokens=64, seed=3),
            {"n": 6, "temperature": 0.7, "max_tokens": 64, "seed": 3},
        ),
        (
            Sampling(n=2, json_schema=SCHEMA),
            {
                "n": 2,
                "temperature": 0.05,
                "max_tokens": 512,
                "structured_outputs": {"json": SCHEMA},
            },
        ),
    ],
)
def test_sampling_kwargs(sampling, expected):
    kwargs = sampling_kwargs(sampling)
    assert kwargs == expected
    assert "guided_decoding" not in kwargs  # removed in vLLM 0.12


@pytest.mark.parametrize(
    "build",
    [lambda: VLLMEngineVLM("Qwen/Qwen3-VL-8B-Instruct"), lambda: load_vlm("vllm:some/model")],
)
def test_missing_vllm_names_the_extra_to_install(monkeypatch, build):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        build()
    message = str(info.value)
    assert "pip install 'cropper[vllm]'" in message
    assert "in-process vLLM engine" in message
    assert info.value.package == "vllm"
    assert isinstance(info.value, ImportError)


def test_generate_wires_chat_and_structured_outputs(monkeypatch):
    """With a stand-in vllm module: one LLM.chat call, schema wrapped, n texts each."""
    calls: dict = {}

    class StructuredOutputsParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, **kwargs):
            calls["engine"] = (model, kwargs)

        def chat(self, messages, sampling_params, use_tqdm):
            calls["chat"] = (messages, sampling_params)
            n = sampling_params.kwargs["n"]
            return [
                SimpleNamespace(outputs=[SimpleNamespace(text=f"{i}.{j}") for j in range(n)])
                for i in range(len(messages))
            ]

    fake = ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    fake_params = ModuleType("vllm.sampling_params")
    fake_params.StructuredOutputsParams = StructuredOutputsParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake_params)

    vlm = VLLMEngineVLM("some/model", max_model_len=4096)
    conversation = [Message("user", (TextPart("crop"), ImagePart(Image.new("RGB", (4, 4)))))]
    replies = vlm.generate([conversation, conversation], Sampling(n=3, json_schema=SCHEMA))

    assert replies == [["0.0", "0.1", "0.2"], ["1.0", "1.1", "1.2"]]
    assert calls["engine"] == ("some/model", {"max_model_len": 4096})
    messages, params = calls["chat"]
    assert messages == [to_vllm_messages(conversation)] * 2
    structured = params.kwargs["structured_outputs"]
    assert isinstance(structured, StructuredOutputsParams)
    assert structured.kwargs == {"json": SCHEMA}
    assert vlm.name == "some/model"


class VLLMValidationError(Exception):
    """vLLM >= 0.12's request validation error: not a ValueError, so nothing caught it."""


def _stand_in_vllm(monkeypatch, refuse) -> None:
    """A vllm module whose LLM.chat refuses a whole call when ``refuse(messages)`` is true."""

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, **kwargs):
            pass

        def chat(self, messages, sampling_params, use_tqdm):
            for conversation in messages:
                if refuse(conversation):
                    raise VLLMValidationError(
                        "The decoder prompt (length 40213) is longer than the maximum model "
                        "length of 32768. Make sure that `max_model_len` is no smaller than "
                        "the number of text tokens plus multimodal tokens."
                    )
            reply = SimpleNamespace(text='{"crops": [[100, 100, 900, 800]]}')
            return [
                SimpleNamespace(outputs=[reply] * sampling_params.kwargs["n"]) for _ in messages
            ]

    fake = ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    fake_params = ModuleType("vllm.sampling_params")
    fake_params.StructuredOutputsParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake_params)


def test_a_vllm_validation_error_fails_its_photo_alone_with_the_message_kept(monkeypatch):
    from cropper import Cropper
    from cropper.core.errors import VLMError

    def too_long(conversation) -> bool:  # the photo 333 px wide stands for a too-long prompt
        return any(
            part.get("type") == "image_pil" and part["image_pil"].width == 333
            for message in conversation
            if isinstance(message["content"], list)
            for part in message["content"]
        )

    _stand_in_vllm(monkeypatch, too_long)
    photos = [Image.new("RGB", (w, 240), (90, 120, 30)) for w in (320, 333, 360)]
    cropper = Cropper(vlm=VLLMEngineVLM("some/model"), clip=None, head=None, index=None)
    good, bad, other = cropper.crop_batch(photos, task="free")
    assert isinstance(bad, VLMError) and not bad.stops_batch
    assert "VLLMValidationError" in str(bad) and "max_model_len" in str(bad)
    assert "\n" not in str(bad)
    for result in (good, other):  # the others were cropped, from the VLM's own boxes
        assert not isinstance(result, Exception) and result.fallback is None
        assert result.pixels[0] > 0
    # What the failed photo got through is kept for its debug folder.
    assert bad.partial is not None and bad.partial.rounds[-1].notes[0].startswith("failed:")
