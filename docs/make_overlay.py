"""Make docs/images/overlay.png, the README's picture of CropResult.draw().

It runs the whole loop on the tiny random demo models (cropper.testing.demo) over a
synthetic photo, offline: the boxes are arbitrary, the picture shows what an overlay
looks like. Point it at a real model for a real one:

    python docs/make_overlay.py                                   # tiny models, offline
    python docs/make_overlay.py --vlm http://localhost:8000/v1 --photo photo.jpg
    python docs/make_overlay.py --faces    # docs/images/faces.png: three ratios, faces protected

``--faces`` crops a photo of four faces (cropper.testing.faces.group_photo: scikit-image's
astronaut, pasted four times) to 1:1, 4:5 and 16:9 with ``protect="faces"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cropper import Cropper
from cropper.testing.demo import demo_models
from cropper.testing.synthetic import synthetic_photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", help="a real VLM (URL, hub id or folder); default: tiny")
    parser.add_argument("--photo", help="the photo to crop; default: a synthetic one")
    parser.add_argument("--faces", action="store_true", help="three ratios, faces protected")
    parser.add_argument("--out", help="default: docs/images/overlay.png (faces.png with --faces)")
    args = parser.parse_args()
    images = Path(__file__).parent / "images"
    args.out = args.out or str(images / ("faces.png" if args.faces else "overlay.png"))
    if args.vlm:
        cropper = Cropper(vlm=args.vlm)
    else:  # small settings: a random model reads its prompt no better for a larger one
        cropper = Cropper(**demo_models(), index=None, seed=0, crops=4, samples=2)
    if args.faces:
        from cropper.testing.faces import group_photo

        photo = args.photo or group_photo((1200, 800)).image
        result = cropper.crop(photo, task="aspect", ratio=["1:1", "4:5", "16:9"], protect="faces")
        result.draw(max_side=640).save(args.out, optimize=True)
        print(f"{args.out}: {len(result.faces)} faces, ratios {', '.join(result)}")
        return
    photo = args.photo or synthetic_photo(7, size=(640, 427))
    result = cropper.crop(photo, task="free")
    result.draw(max_side=640).save(args.out, optimize=True)
    print(f"{args.out}: {len(result.candidates)} candidates over {len(result.rounds)} rounds")


if __name__ == "__main__":
    main()
