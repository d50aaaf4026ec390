"""Make docs/images/overlay.png, the README's picture of CropResult.draw().

It runs the whole loop on the tiny random demo models (cropper.testing.demo) over a
synthetic photo, offline: the boxes are arbitrary, the picture shows what an overlay
looks like. Point it at a real model for a real one:

    python docs/make_overlay.py                                   # tiny models, offline
    python docs/make_overlay.py --vlm http://localhost:8000/v1 --photo photo.jpg
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "overlay.png"))
    args = parser.parse_args()
    if args.vlm:
        cropper = Cropper(vlm=args.vlm)
    else:  # small settings: a random model reads its prompt no better for a larger one
        cropper = Cropper(**demo_models(), index=None, seed=0, crops=4, samples=2)
    photo = args.photo or synthetic_photo(7, size=(640, 427))
    result = cropper.crop(photo, task="free")
    result.draw(max_side=640).save(args.out, optimize=True)
    print(f"{args.out}: {len(result.candidates)} candidates over {len(result.rounds)} rounds")


if __name__ == "__main__":
    main()
