from __future__ import annotations

import pytest
from PIL import Image

from cropper.agent.prompts import PromptPhoto, PromptSet, default_prompt_dir
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.core.messages import ImagePart, TextPart
from cropper.core.tasks import Ratio, Subject


class Crop:
    def __init__(self, box, score=None, subject=None):
        self.box, self.score, self.subject = box, score, subject


class Exemplar:
    def __init__(self, size):
        self.photo = PromptPhoto(Image.new("RGB", size), key=f"ex{size}")
        self.crops = [Crop(Box(0.1, 0.2, 0.7, 0.9), 4.25, (0.4, 0.5)), Crop(Box(0, 0, 0.5, 0.5))]
        self.similarity = 0.9


def variables(task, stage="propose"):
    query = PromptPhoto(Image.new("RGB", (800, 600)), key="q")
    out = dict(
        query=query,
        exemplars=[Exemplar((400, 300)), Exemplar((300, 400))],
        n_crops=6,
        subject=Subject((0.5, 0.4), Box(0.4, 0.3, 0.6, 0.5), "the kite", "text"),
        ratio=Ratio(16 / 9, "16:9"),
        candidates=[],
    )
    if stage == "refine":
        out["candidates"] = [
            {
                "photo": PromptPhoto(Image.new("RGB", (50, 40))),
                "box": Box(0.1, 0.1, 0.9, 0.8),
                "score": 0.75,
                "round": 0,
            }
        ]
    if stage == "ground":
        out = dict(query=query, subject_text="the kite")
    return out


@pytest.mark.parametrize("task", ["free", "subject", "aspect"])
@pytest.mark.parametrize("stage", ["propose", "refine"])
@pytest.mark.parametrize("coords", ["norm1000", "rel1000", "norm1", "pixel"])
def test_shipped_prompts_render_to_system_and_user_messages(task, stage, coords):
    conv = PromptSet().render(task, stage, coords=coords, **variables(task, stage))
    assert [m.role for m in conv] == ["system", "user"]
    images = [p for p in conv[1].parts if isinstance(p, ImagePart)]
    # two exemplars, the query, and on refine the one candidate crop
    assert len(images) == 3 + (stage == "refine")
    assert images[2].key == "q"
    text = conv[1].text
    assert "\x00" not in text and "{{" not in text
    assert '{"crops"' in text and "6 different crops" in text


@pytest.mark.parametrize(
    ("coords", "expected"),
    [
        ("norm1000", "100, 200, 700, 900"),
        ("rel1000", "100, 200, 700, 900"),
        ("norm1", "0.1, 0.2, 0.7, 0.9"),
        ("pixel", "40, 60, 280, 270"),  # in the 400x300 exemplar's own pixels
    ],
)
def test_exemplar_boxes_are_written_in_the_convention(coords, expected):
    conv = PromptSet().render("free", "propose", coords=coords, **variables("free"))
    assert f"(4.25, {expected})" in conv[1].text


def test_subject_prompt_carries_point_box_and_phrase():
    text = (
        PromptSet().render("subject", "propose", coords="norm1000", **variables("subject"))[1].text
    )
    assert "the kite, is centred at (500, 400) inside 400, 300, 600, 500" in text
    assert "((400, 500), 100, 200, 700, 900)" in text


@pytest.mark.parametrize(
    ("coords", "first", "second"),
    [
        # The 400x300 exemplar, then the 300x400 one: (0.4, 0.5) and its crop in each frame.
        ("norm1000", "((400, 500), 100, 200, 700, 900)", "((400, 500), 100, 200, 700, 900)"),
        ("rel1000", "((400, 500), 100, 200, 700, 900)", "((400, 500), 100, 200, 700, 900)"),
        ("norm1", "((0.4, 0.5), 0.1, 0.2, 0.7, 0.9)", "((0.4, 0.5), 0.1, 0.2, 0.7, 0.9)"),
        ("pixel", "((160, 150), 40, 60, 280, 270)", "((120, 200), 30, 80, 210, 360)"),
    ],
)
def test_a_subject_exemplars_point_is_written_in_its_own_photos_frame(coords, first, second):
    text = PromptSet().render("subject", "propose", coords=coords, **variables("subject"))[1].text
    assert first in text and second in text
    # Each exemplar's subject lies inside its own crop, in every convention.
    for written in (first, second):
        numbers = [float(v) for v in written.replace("(", "").replace(")", "").split(",")]
        x, y, x0, y0, x1, y1 = numbers
        assert x0 <= x <= x1 and y0 <= y <= y1


def test_ground_prompt_names_the_phrase():
    conv = PromptSet().render(
        "subject", "ground", coords="norm1000", **variables("subject", "ground")
    )
    assert [m.role for m in conv] == ["user"]
    assert isinstance(conv[0].parts[0], ImagePart)
    assert "Find the kite" in conv[0].text


def test_a_users_folder_replaces_the_shipped_prompts(tmp_path):
    (tmp_path / "free").mkdir()
    (tmp_path / "free" / "propose.j2").write_text(
        '{{ role("user") }}Crop {{ image(query) }} into {{ n_crops }} crops, {{ coords }}.'
    )
    conv = PromptSet(tmp_path).render("free", "propose", coords="norm1", **variables("free"))
    assert [type(p) for p in conv[0].parts] == [TextPart, ImagePart, TextPart]
    assert conv[0].text == "Crop <image> into 6 crops, norm1."


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ no_such_variable }}", "undefined"),
        ("{{ ''.__class__.__mro__ }}", "unsafe|access"),
        ('{% include "../secret.txt" %}', "secret.txt"),
        ("{% if %}", "line 1"),
    ],
)
def test_bad_templates_fail_with_the_file_named(tmp_path, template, message):
    (tmp_path / "secret.txt").write_text("top secret")
    folder = tmp_path / "p"
    (folder / "free").mkdir(parents=True)
    (folder / "free" / "propose.j2").write_text(template)
    with pytest.raises(ConfigError, match=message) as info:
        PromptSet(folder).render("free", "propose", coords="norm1", **variables("free"))
    assert "propose.j2" in str(info.value)
    assert "top secret" not in str(info.value)


def test_missing_prompt_file_and_folder_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PromptSet(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="aspect/refine.j2 is missing"):
        PromptSet(tmp_path).render("aspect", "refine", coords="norm1", **variables("aspect"))


def test_default_prompt_dir_holds_every_task():
    folder = default_prompt_dir()
    for task in ("free", "subject", "aspect"):
        assert (folder / task / "propose.j2").is_file() and (folder / task / "refine.j2").is_file()
