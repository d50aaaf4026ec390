"""protect="faces": on real photos with faces, no crop cuts through one.

The photos are scikit-image's astronaut (public domain) pasted at four sizes onto one
photo; the detector is OpenCV's real Haar cascade. The scripted VLM proposes crops that
cut through faces on purpose; every other part is the real one.
"""

from __future__ import annotations

import json
import sys

import pytest

from cropper import ConfigError, Cropper
from cropper.agent.constraints import _cuts, _holds
from cropper.testing.faces import group_photo
from cropper.testing.scripted import ScriptedVLM, crops_reply

pytest.importorskip("cv2", reason="protect='faces' needs pip install 'cropper[faces]'")

RATIOS = ["1:1", "4:5", "16:9", "9:16"]
# Proposals through the faces: the left third, a band across the middle, the centre.
THROUGH = [(0, 0, 330, 1000), (0, 300, 1000, 600), (250, 250, 750, 750), (100, 50, 520, 480)]


@pytest.fixture(scope="module")
def group():
    return group_photo()


def test_no_crop_of_any_ratio_cuts_a_face_and_the_largest_is_in(group):
    vlm = ScriptedVLM(lambda conv, s: [crops_reply(*THROUGH)] * s.n)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    result = cropper.crop(group.image, task="aspect", ratio=RATIOS, protect="faces")
    size = group.image.size
    assert len(result.faces) == 4  # each pasted astronaut's face, found
    for found, truth in zip(result.faces, group.faces, strict=True):  # largest first, as pasted
        assert found.iou(truth) > 0.5
    for text in RATIOS:
        crop = result[text]
        for candidate in crop.candidates:  # every candidate, not only the chosen one
            box = candidate.box.to_pixels(size)
            for face in group.faces:
                assert not _cuts(box, face.to_pixels(size)), (text, candidate)
        assert _holds(crop.pixels, group.faces[0].to_pixels(size)), text
        assert any("faces protected: 4 found" in n for n in crop.notes)
        assert any("face" in c.repair for c in crop.candidates)  # the proposals were repaired
    assert result.to_json()["faces"] == [list(f.to_pixels(size)) for f in result.faces]


def test_a_free_crop_without_a_vlm_protects_faces_too(group):
    cropper = Cropper(vlm=None, clip=None, head=None, index=None)
    result = cropper.crop(group.image, protect="faces")
    size = group.image.size
    assert len(result.faces) == 4
    assert not any(_cuts(result.pixels, f.to_pixels(size)) for f in group.faces)
    assert _holds(result.pixels, group.faces[0].to_pixels(size))


def test_the_trace_and_the_overlay_show_the_faces(group, tmp_path):
    vlm = ScriptedVLM(lambda conv, s: [crops_reply(*THROUGH)] * s.n)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None, refine_rounds=0)
    result = cropper.crop(group.image, task="aspect", ratio="1:1", protect="faces")
    folder = result.write_debug(tmp_path / "debug")
    trace = json.loads((folder / "trace.json").read_text())
    assert len(trace["faces"]) == 4 and trace["focus"] == list(result.focus)
    # The focus of a crop without a subject is the centre of the largest face in it.
    assert result.focus == pytest.approx(result.faces[0].center, abs=1e-3)
    overlay = result.draw(max_side=None)
    # The face outlines are drawn in their colour on the largest face's edge.
    from cropper.views.drawing import FACE

    left, top, right, _ = result.faces[0].to_pixels(group.image.size)
    edge = [overlay.getpixel((x, top)) for x in range(left, right)]
    assert FACE in edge


def test_without_opencv_protect_fails_in_one_line_before_any_photo(group, monkeypatch):
    import cropper.scoring.faces as faces

    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setattr(faces, "_local", type(faces._local)())  # no cascade cached
    vlm = ScriptedVLM(lambda conv, s: [crops_reply(*THROUGH)] * s.n)
    cropper = Cropper(vlm=vlm, clip=None, head=None, index=None)
    with pytest.raises(ConfigError, match=r"pip install 'cropper\[faces\]'") as caught:
        list(cropper.crop_stream([group.image], protect="faces"))
    assert "\n" not in str(caught.value) and vlm.calls == []
