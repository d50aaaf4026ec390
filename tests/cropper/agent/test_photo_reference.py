"""Results hold their photo by reference: no pixels of their own, full resolution when saved.

The loop works from a copy of each photo only as large as its prompts and scores need; a
result keeps the path (or the caller's own image) and makes its crop when asked.
"""

from __future__ import annotations

import gc
import types

import numpy as np
import pytest
from PIL import Image

from cropper import Cropper
from cropper.core.images import load_image
from cropper.core.messages import ImagePart
from cropper.core.photos import Photo
from cropper.testing.scripted import ScriptedVLM, crops_reply
from cropper.testing.synthetic import synthetic_photo


def make(**settings) -> tuple[Cropper, list]:
    seen: list = []

    class Spy:  # an embedder that records the sizes of what it is given
        name, dim, batch_size = "spy", 4, 32

        def embed(self, images):
            seen.extend(image.size for image in images)
            return np.ones((len(images), 4), np.float32)

    vlm = ScriptedVLM(lambda conv, s: [crops_reply((100, 100, 700, 900), (0, 0, 500, 500))] * s.n)
    cropper = Cropper(
        vlm=vlm, clip=Spy(), head=None, index=None, score_weights="content=1", **settings
    )
    return cropper, seen


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> str:
    """A 12-megapixel JPEG stored on its side (EXIF orientation 6: shown 3000x4000)."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    synthetic_photo(3, size=(4000, 3000)).save(path, quality=90, exif=exif.tobytes())
    return str(path)


def test_a_large_photo_is_worked_on_from_a_copy_and_cut_at_full_resolution(big):
    cropper, seen = make()
    result = cropper.crop(big, task="aspect", ratio="4:5")
    assert result.size == (3000, 4000)  # as displayed
    assert max(max(s) for s in seen) < 3000  # nothing embedded was cut from all 12 MP
    left, top, right, bottom = result.pixels
    assert abs((right - left) - 0.8 * (bottom - top)) <= 1  # the ratio in the photo's pixels
    full = load_image(big)
    crop = result.image
    assert crop.size == (right - left, bottom - top)
    assert np.array_equal(np.asarray(crop), np.asarray(full.crop(result.pixels)))


def test_results_of_a_batch_hold_no_pixels_of_their_photos(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"p{i}.jpg"))
        synthetic_photo(i, size=(1600, 1200)).save(paths[-1], quality=90)
    cropper, _ = make()
    results = cropper.crop_batch(paths, task="free")
    for path, result in zip(paths, results, strict=True):
        assert isinstance(result.photo, Photo) and result.photo.source == path
        parts = [p for r in result.rounds for m in r.prompt for p in m.parts]
        images = [p for p in parts if isinstance(p, ImagePart)]
        assert images and not any(p.held for p in images)  # the query and the crops shown
        assert max(images[0].image.size) == 1024  # the query, made again when asked
    # Nothing reachable from the results, closures that make images again included.
    assert reachable_images(results) == []
    folder = results[0].write_debug(tmp_path / "debug")
    assert (folder / "crop.jpg").is_file() and any(folder.glob("round-1-refine/*"))


def reachable_images(root) -> list[tuple[int, int]]:
    """Sizes of the PIL images ``root`` keeps alive: through attributes, containers and the
    closures and defaults of functions (not through modules' globals, nor classes)."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Image.Image):
            found.append(obj.size)
        elif isinstance(obj, types.FunctionType):
            for cell in obj.__closure__ or ():
                try:
                    stack.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            stack += [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
        elif isinstance(obj, (type, types.ModuleType, str, bytes)):
            continue
        elif isinstance(obj, dict) and "__builtins__" in obj:  # a module's globals
            continue
        else:
            stack += gc.get_referents(obj)
    return found


def test_a_pil_photo_is_kept_as_the_callers_own_object():
    photo = synthetic_photo(5, size=(640, 480))
    cropper, _ = make(refine_rounds=0)
    result = cropper.crop(photo)
    assert result.photo.source is photo
    assert result.image.size == tuple(np.subtract(result.pixels[2:], result.pixels[:2]))


def test_the_prompt_images_made_again_are_the_pixels_sent(tmp_path):
    path = tmp_path / "p.jpg"
    synthetic_photo(7, size=(2400, 1800)).save(path, quality=90)
    vlm = ScriptedVLM(lambda conv, s: [crops_reply((100, 100, 700, 900))] * s.n)
    sent = []
    generate = vlm.generate

    def keep(conversations, sampling, **kw):
        sent.extend(np.asarray(p.image) for c in conversations for m in c for p in m.parts
                    if isinstance(p, ImagePart))  # fmt: skip
        return generate(conversations, sampling, **kw)

    vlm.generate = keep
    result = Cropper(vlm=vlm, clip=None, head=None, index=None, refine_rounds=1).crop(str(path))
    again = [np.asarray(p.image) for r in result.rounds for m in r.prompt for p in m.parts
             if isinstance(p, ImagePart)]  # fmt: skip
    assert len(again) == len(sent) == 3  # the query twice, one candidate crop
    assert all(np.array_equal(a, b) for a, b in zip(again, sent, strict=True))


def test_the_scorer_cuts_crops_a_batch_at_a_time(monkeypatch):
    import cropper.scoring.scorer as scorer_module
    from cropper.core.boxes import Box
    from cropper.scoring.scorer import Scorer, weights_by_task

    made = []
    cut = scorer_module.scoring_crop
    monkeypatch.setattr(scorer_module, "scoring_crop", lambda *a: (made.append(1), cut(*a))[1])
    seen_when_called = []

    class Spy:
        name, dim, batch_size = "spy", 4, 5

        def embed(self, images):
            seen_when_called.append(len(made))
            return np.ones((len(images), 4), np.float32)

    photo = synthetic_photo(2, size=(800, 600))
    boxes = [Box(0.01 * i, 0.0, 0.5 + 0.01 * i, 0.9) for i in range(12)]
    scores = Scorer(Spy(), None, weights=weights_by_task("content=1")).score(photo, boxes, "free")
    assert len(scores) == 12
    # 12 crops and the photo itself (the content term), never more made than one batch ahead
    assert seen_when_called == [5, 10, 13]
