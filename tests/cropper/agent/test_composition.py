"""The composition step: a choice among the prompt folder's compositions, then crops to it."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from cropper import ConfigError, Cropper
from cropper.agent.composition import (
    Composition,
    composition_schema,
    load_compositions,
    parse_composition,
)
from cropper.agent.prompts import default_prompt_dir
from cropper.testing.scripted import ScriptedVLM, crops_reply

SHIPPED = load_compositions(default_prompt_dir())


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"composition": "rule of thirds"}', "rule of thirds"),
        ('{"composition": "Symmetry"}', "symmetry"),
        ('```json\n{"composition" : "diagonal"}\n```', "diagonal"),
        ("I would use a frame within a frame here.", "frame within a frame"),
        ("Centre it; the rule of thirds would not suit.", "centre"),
        ('{"composition": "golden spiral"} but leading lines also work', "leading lines"),
        ('{"composition": "golden spiral"}', None),
        ("", None),
        ("frames and patterns", None),  # whole words only
    ],
)
def test_parse_composition(reply, expected):
    found = parse_composition(reply, SHIPPED)
    assert (found.name if found else None) == expected


def test_the_shipped_compositions_include_the_usual_rules():
    names = {c.name for c in SHIPPED}
    wanted = {"rule of thirds", "centre", "symmetry", "diagonal", "leading lines"}
    assert wanted | {"frame within a frame"} <= names
    assert composition_schema(SHIPPED)["properties"]["composition"]["enum"] == [
        c.name for c in SHIPPED
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is missing"),
        ("{not json", "not a readable JSON"),
        ('["rule of thirds"]', "expected a JSON object"),
        ("{}", "expected a JSON object"),
        ('{"thirds": 3}', "expected a JSON object"),
    ],
)
def test_a_bad_compositions_file_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / "compositions.json").write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_compositions(tmp_path)
    assert "compositions.json" in str(info.value) and "\n" not in str(info.value)


def _compose_then_crop(answer: str):
    def script(conversation, sampling):
        schema = sampling.json_schema or {}
        if "composition" in schema.get("properties", {}):
            return [answer]
        return [crops_reply((100, 100, 900, 800))]

    return ScriptedVLM(script)


@pytest.mark.parametrize("task, kwargs", [("free", {}), ("aspect", {"ratio": "16:9"})])
def test_the_choice_goes_into_the_propose_prompt_and_the_trace(task, kwargs):
    vlm = _compose_then_crop('{"composition": "diagonal"}')
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None, compose=True)
    result = cropper.crop(Image.new("RGB", (320, 240)), task=task, **kwargs)
    assert [r.stage for r in result.rounds] == ["compose", "propose", "refine", "refine"]
    ask = result.rounds[0].prompt_text
    assert all(c.name in ask for c in SHIPPED)
    assert result.rounds[0].notes == ("composition: diagonal",)
    assert result.composition == "diagonal" and result.to_json()["composition"] == "diagonal"
    diagonal = next(c for c in SHIPPED if c.name == "diagonal")
    for r in result.rounds[1:]:
        assert f"Follow this composition in every crop: diagonal, where {diagonal.description}" in (
            r.prompt_text
        )


def test_without_the_step_no_composition_is_asked_for_or_written():
    vlm = _compose_then_crop('{"composition": "diagonal"}')
    result = Cropper(vlm=vlm, clip=None, head=None, index=None).crop(Image.new("RGB", (64, 48)))
    assert [r.stage for r in result.rounds] == ["propose", "refine", "refine"]
    assert result.composition is None and "composition" not in result.to_json()
    assert all("Follow this composition" not in r.prompt_text for r in result.rounds)


def test_an_unknown_answer_is_noted_and_the_crop_goes_on():
    vlm = _compose_then_crop("a golden spiral, obviously")
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None, compose=True)
    result = cropper.crop(Image.new("RGB", (64, 48)))
    assert result.composition is None
    assert result.rounds[0].notes == ("the VLM named no known composition",)
    assert "Follow this composition" not in result.rounds[1].prompt_text


def test_an_edited_compositions_file_is_what_the_vlm_chooses_from(tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(default_prompt_dir(), prompts)
    (prompts / "compositions.json").write_text(json.dumps({"golden spiral": "a spiral"}))
    vlm = _compose_then_crop('{"composition": "golden spiral"}')
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None, compose=True, prompts=prompts)
    result = cropper.crop(Image.new("RGB", (64, 48)))
    assert result.composition == "golden spiral"
    assert vlm.calls[0][1].json_schema == composition_schema([Composition("golden spiral", "")])
