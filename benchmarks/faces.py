"""The face detector behind protect="faces": seconds a photo, and what it finds.

Photos (real, shipped offline with scikit-image): the 512 x 512 astronaut; the group photo
of ``cropper.testing.faces`` (the astronaut pasted four times) at 2400 x 1600 and at
4000 x 3000 (12 megapixels, searched on a 1024 px copy); and, for comparison, that 12 MP
photo searched at full size (``max_side=4000``, a cascade pass over every pixel). Each is
timed ``--repeats`` times after one warm-up call; the medians of wall-clock seconds and
of CPU seconds (OpenCV's threads together; steadier on a busy machine) are reported, the
conversion to grey and the downscale included. ``load_average``: how busy the machine was.
The cascade is loaded once a thread (about 0.015 s, in the warm-up).

    python benchmarks/faces.py              # ~1 minute on 2 CPU cores
    python benchmarks/faces.py --compare    # and OpenCV's frontal cascades: ~3 more minutes

``--compare`` runs :func:`detect_faces` with each of OpenCV's frontal cascades on photos
with no face (scikit-image's, cropper's synthetic ones, the GAICD photos of
``../shared/data`` when there), each at 512, 768 and 1024 px on its longer side and
mirrored, counting the false faces; and on the 100 LFW faces scikit-image ships, five
class photos of 20 (:func:`cropper.testing.faces.lfw_photo`), counting the faces found.

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import cv2
from PIL import Image

from cropper.scoring import faces as faces_module
from cropper.scoring.faces import CASCADE, detect_faces
from cropper.testing.faces import astronaut, group_photo, lfw_photo


def timed(image: Image.Image, repeats: int, **settings) -> tuple[float, float, list]:
    """Median wall seconds, median CPU seconds (all threads) and the faces found."""
    found = detect_faces(image, **settings)  # warm-up: loads the cascade
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        detect_faces(image, **settings)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), found


NO_FACE = (
    "coffee chelsea rocket horse page text brick grass gravel cell immunohistochemistry "
    "hubble_deep_field retina logo colorwheel moon clock microaneurysms checkerboard"
).split()


def no_face_photos() -> dict[str, Image.Image]:
    from skimage import data

    from cropper.testing.synthetic import synthetic_photo

    photos = {name: Image.fromarray(getattr(data, name)()) for name in NO_FACE}
    photos["motorcycle"] = Image.fromarray(data.stereo_motorcycle()[0])
    photos.update({f"synthetic-{seed}": synthetic_photo(seed) for seed in range(10)})
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "gaicd"
    for path in sorted(shared.glob("official_layout/images/*/*.jpg")):
        photos[path.name] = Image.open(path).convert("RGB")
    return photos


def compare_cascades() -> dict:
    """False faces and faces found, by each frontal cascade, through detect_faces."""
    photos = no_face_photos()
    classes = [lfw_photo(start=start) for start in range(0, 100, 20)]
    results = {}
    for cascade in ("default", "alt", "alt2", "alt_tree"):
        faces_module.CASCADE = f"haarcascade_frontalface_{cascade}.xml"
        faces_module._local = threading.local()  # load it afresh
        start = time.perf_counter()
        false = {}
        for name, photo in photos.items():
            for side in (512, 768, 1024):
                scale = side / max(photo.size)
                size = (round(photo.width * scale), round(photo.height * scale))
                small = photo.resize(size, Image.Resampling.BOX)
                for image in (small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
                    if n := len(detect_faces(image)):
                        false[name] = false.get(name, 0) + n
        found = sum(
            len({_tile(f, group) for f in detect_faces(group.image)} - {None}) for group in classes
        )
        image = astronaut()[0]
        on_her = [len(detect_faces(image.resize((s, s)))) for s in (512, 768, 1024)]
        results[cascade] = {
            "false_faces": sum(false.values()),
            "false_faces_in": false,
            "runs": 6 * len(photos),
            "lfw_faces_found_of_100": found,
            "astronaut_faces_at_512_768_1024": on_her,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(cascade, json.dumps(results[cascade]))
    faces_module.CASCADE = CASCADE
    faces_module._local = threading.local()
    return results


def _tile(face, group) -> int | None:
    """The tile whose face ``face`` is, or None when it is no face of the photo."""
    for i, known in enumerate(group.faces):
        if known.iou(face.box) > 0.3:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="compare the cascades too")
    args = parser.parse_args()
    photos = {
        "astronaut 512x512": (astronaut()[0], {}),
        "group 2400x1600": (group_photo((2400, 1600)).image, {}),
        "group 4000x3000": (group_photo((4000, 3000)).image, {}),
        "group 4000x3000 at full size": (group_photo((4000, 3000)).image, {"max_side": 4000}),
    }
    report = {
        "cascade": CASCADE,
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "seconds": {},
        "cpu_seconds": {},
        "faces": {},
    }
    for name, (image, settings) in photos.items():
        seconds, cpu, found = timed(image, args.repeats, **settings)
        report["seconds"][name] = round(seconds, 3)
        report["cpu_seconds"][name] = round(cpu, 3)
        report["faces"][name] = len(found)
        print(
            f"{name:30s} {seconds:6.3f} s ({cpu:5.3f} s CPU)  {len(found)} faces: "
            + ", ".join(map(str, found))
        )
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if args.compare:
        report["cascades"] = compare_cascades()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
