"""The face detector behind protect="faces", on real photos that ship offline with scikit-image."""

from __future__ import annotations

import subprocess
import sys
import threading
import types

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, MissingDependencyError
from cropper.scoring import faces as faces_module
from cropper.scoring.faces import MIN_NEIGHBORS, Face, detect_faces, face_boxes
from cropper.testing.faces import ASTRONAUT_FACE, astronaut, group_photo, lfw_photo


def _inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x0 <= inner.x0
        and outer.y0 <= inner.y0
        and inner.x1 <= outer.x1
        and inner.y1 <= outer.y1
    )


def _assert_finds_each(found: list[Face], truth: tuple[Box, ...], pastes: tuple[Box, ...]):
    assert len(found) == len(truth)
    for face, known, paste in zip(found, truth, pastes, strict=True):
        assert face.box.iou(known) > 0.5, (face, known)
        assert _inside(face.box, paste)
        assert face.neighbors >= MIN_NEIGHBORS


def test_astronaut_has_one_face_where_it_is():
    image, known = astronaut()
    assert known == Box.from_pixels(ASTRONAUT_FACE, (512, 512))
    found = detect_faces(image)
    assert len(found) == 1
    assert found[0].box.iou(known) > 0.5
    assert found[0].neighbors >= 10  # a real face: far more windows than the 5 needed


@pytest.mark.parametrize(
    "photo",
    [
        pytest.param(lambda: skimage_data.coffee(), id="coffee"),
        pytest.param(lambda: skimage_data.chelsea(), id="a cat"),
        pytest.param(lambda: skimage_data.rocket(), id="rocket"),
        pytest.param(lambda: skimage_data.hubble_deep_field(), id="stars"),
        pytest.param(lambda: skimage_data.gravel(), id="gravel"),
        pytest.param(lambda: np.full((600, 800, 3), 128, np.uint8), id="flat"),
        pytest.param(
            lambda: np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8),
            id="noise",
        ),
        # 100 patches of photos with no face, from the LFW subset: 0 found.
        pytest.param(
            lambda: np.asarray(lfw_photo(False, rows=10, cols=10, tile=100).image), id="patches"
        ),
    ],
)
def test_photos_without_faces_give_none(photo):
    assert detect_faces(Image.fromarray(photo())) == []


def test_group_photo_finds_each_pasted_face_largest_first():
    group = group_photo()
    found = detect_faces(group.image)
    _assert_finds_each(found, group.faces, group.pastes)
    areas = [f.box.area for f in found]
    assert areas == sorted(areas, reverse=True)


def test_twelve_megapixel_photos_are_searched_downscaled():
    group = group_photo((4000, 3000))
    _assert_finds_each(detect_faces(group.image), group.faces, group.pastes)
    image, known = astronaut()
    big = image.resize((3464, 3464), Image.Resampling.BICUBIC)  # 12 megapixels, no EXIF
    found = detect_faces(big)
    assert len(found) == 1 and found[0].box.iou(known) > 0.5
    # The answer barely depends on the resolution the photo comes at.
    assert found[0].box.iou(detect_faces(image)[0].box) > 0.8


def test_a_class_of_different_people():
    group = lfw_photo()  # 20 people from Labeled Faces in the Wild
    found = detect_faces(group.image)
    assert len(found) >= 18  # 19 measured; the detector misses a face now and then
    tiles = []
    for face in found:
        tile = next(i for i, t in enumerate(group.pastes) if t.contains(*face.box.center))
        assert face.box.iou(group.faces[tile]) > 0.3 and _inside(face.box, group.pastes[tile])
        tiles.append(tile)
    assert len(set(tiles)) == len(tiles)  # no face found twice


def test_faces_under_min_face_of_the_shorter_side_are_not_looked_for():
    group = group_photo()
    # The pasted faces are 11%, 8%, 6% and 5% of the photo's height.
    shares = [round(f.height, 3) for f in group.faces]
    assert shares == sorted(shares, reverse=True) and shares[-1] > faces_module.MIN_FACE
    # No window smaller than min_face is tried; a face a little smaller than a window is
    # still found in it, one a third smaller or more is not.
    found = detect_faces(group.image, min_face=0.12)
    assert len(found) == 1 and found[0].box.iou(group.faces[0]) > 0.5
    found = detect_faces(group.image, min_face=0.09)
    assert len(found) == 2
    assert all(f.box.iou(known) > 0.5 for f, known in zip(found, group.faces[:2], strict=True))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_pil_mode_is_read(mode):
    image, known = astronaut()
    found = detect_faces(image.convert(mode))
    assert len(found) == 1 and found[0].box.iou(known) > 0.5


@pytest.mark.parametrize("size", [(1, 1), (10, 10), (32, 32), (4000, 8)])
def test_photos_too_small_for_a_face_give_none(size):
    assert detect_faces(Image.new("RGB", size, (200, 150, 120))) == []


@pytest.mark.parametrize(
    "settings",
    [
        {"max_side": 0},
        {"max_side": 63},
        {"max_side": 512.0},
        {"max_side": True},
        {"min_face": -0.1},
        {"min_face": 1.0},
        {"min_face": "3%"},
        {"min_neighbors": 0},
        {"min_neighbors": 2.5},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ConfigError, match=next(iter(settings))):
        detect_faces(Image.new("RGB", (64, 64)), **settings)


def test_missing_opencv_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    monkeypatch.setattr(faces_module, "_local", threading.local())  # no cascade loaded yet
    with pytest.raises(MissingDependencyError) as info:
        detect_faces(Image.new("RGB", (64, 64)))
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert "\n" not in message
    assert "pip install 'cropper[faces]'" in message and 'protect="faces"' in message


def test_opencv_5_without_cascades_says_to_install_opencv_4(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="5.1.0"))
    monkeypatch.setattr(faces_module, "_local", threading.local())
    with pytest.raises(ConfigError, match=r"OpenCV 4.*5\.1\.0.*cropper\[faces\]"):
        detect_faces(Image.new("RGB", (64, 64)))


def test_each_thread_gets_the_same_answer():
    image, _ = astronaut()
    expected = detect_faces(image)
    results: list[list[Face]] = []

    def work():
        results.extend(detect_faces(image) for _ in range(3))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 6


def test_a_face_found_again_inside_a_larger_one_is_dropped():
    big = Face(Box(0.1, 0.1, 0.5, 0.5), 30)
    inside = Face(Box(0.2, 0.2, 0.4, 0.4), 8)
    half_out = Face(Box(0.4, 0.4, 0.6, 0.6), 8)  # a quarter of it overlaps: another face
    apart = Face(Box(0.7, 0.7, 0.8, 0.8), 6)
    kept = faces_module._drop_nested([big, inside, half_out, apart])
    assert kept == [big, half_out, apart]


def test_face_boxes_is_an_n_by_4_array():
    image, known = astronaut()
    boxes = face_boxes(detect_faces(image))
    assert boxes.shape == (1, 4) and boxes.dtype == np.float64
    assert Box(*boxes[0]).iou(known) > 0.5
    assert face_boxes([]).shape == (0, 4)


def test_importing_cropper_does_not_load_opencv_or_scikit_image():
    code = (
        "import sys, cropper, cropper.scoring.faces, cropper.testing.faces; "
        "print([m for m in ('cv2', 'skimage') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
