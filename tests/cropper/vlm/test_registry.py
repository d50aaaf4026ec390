"""The registry: which backend a spec selects, and the options each takes."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from cropper import vlm as registry
from cropper.agent import components
from cropper.core.errors import ConfigError
from cropper.testing.scripted import ScriptedVLM
from cropper.vlm import check_options, entry_for, load_vlm


def keyword_options(cls: type) -> set[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_the_registry_names_the_options_the_constructors_take():
    from cropper.vlm.openai_server import OpenAIServerVLM
    from cropper.vlm.transformers_engine import TransformersVLM

    assert registry.SERVER_OPTIONS == keyword_options(OpenAIServerVLM)
    assert registry.TRANSFORMERS_OPTIONS == keyword_options(TransformersVLM)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        # As before the registry knew options: a server's, given to a local model.
        ("/models/qwen", {"max_retries": 2}, "VLM '/models/qwen' takes no max_retries: "
         "those options apply to a server URL (http://host:8000/v1)"),
        ("vllm:Qwen/Qwen3-VL-8B-Instruct", {"timeout": 5, "max_retries": 1},
         "takes no max_retries, timeout: those options apply to a server URL"),
        ("http://localhost:8000/v1", {"batch_size": 4},
         "takes no batch_size: those options apply to a model run by transformers"),
        ("hf:Qwen/Qwen2.5-VL-7B-Instruct", {"bogus": 1, "device": "cpu"},
         "takes no bogus: it takes batch_size, constrained, device, dtype"),
    ],
)  # fmt: skip
def test_an_option_a_backend_does_not_take_is_refused_in_one_line(spec, options, message):
    with pytest.raises(ConfigError) as info:
        check_options(spec, options)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        ("http://localhost:8000/v1", {"timeout": 5, "max_retries": 1, "concurrency": 8}),
        ("http://localhost:8000/v1", {"max_concurrency": 8}),  # the older name
        ("Qwen/Qwen2.5-VL-7B-Instruct", {"batch_size": 4, "device": "cpu"}),
        ("vllm:Qwen/Qwen3-VL-8B-Instruct", {"max_model_len": 8192}),  # the engine's own
        ("/models/qwen", {}),
    ],
)
def test_the_options_a_backend_takes_pass(spec, options):
    check_options(spec, options)


def test_options_for_a_ready_vlm_are_refused():
    with pytest.raises(ConfigError, match="'scripted' is built already and takes no timeout"):
        load_vlm(ScriptedVLM([]), timeout=3)
    vlm = ScriptedVLM([])
    assert load_vlm(vlm) is vlm


def test_an_option_is_refused_before_the_backend_loads(monkeypatch):
    built = []
    entry = dataclasses.replace(entry_for("x"), build=lambda spec, **kw: built.append(spec))
    monkeypatch.setitem(registry.BACKENDS, "", entry)
    with pytest.raises(ConfigError, match="takes no timeout"):
        components.make_vlm("some/model", options={"timeout": 3})
    assert built == []


@pytest.mark.parametrize(("spec", "gets_key"), [("http://h:8000/v1", True), ("some/model", False)])
def test_the_api_key_goes_to_a_backend_that_takes_one(monkeypatch, spec, gets_key):
    given = []
    for prefix in ("http://", ""):
        entry = dataclasses.replace(
            registry.BACKENDS[prefix], build=lambda spec, **kw: given.append(kw) or ScriptedVLM([])
        )
        monkeypatch.setitem(registry.BACKENDS, prefix, entry)
    components.make_vlm(spec, api_key="sk-1")
    assert given == [{"api_key": "sk-1"} if gets_key else {}]
