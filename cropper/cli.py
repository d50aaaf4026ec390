"""The command line: ``cropper crop``, ``index``, ``eval`` and ``train-head``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cropper.components import DEFAULT
from cropper.errors import CropperError, VLMError
from cropper.tasks import TASKS

log = logging.getLogger("cropper")


def none_or(value: str) -> str | None:
    return None if value.lower() == "none" else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cropper", description="Crop photos well with a vision-language model."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", required=True)

    crop = commands.add_parser("crop", help="crop photos", description="Crop photos.")
    crop.add_argument("images", nargs="+", metavar="IMAGE", help="photos to crop")
    crop.add_argument("--task", choices=TASKS, default="free", help="the cropping task")
    crop.add_argument("--ratio", help="aspect ratio for --task aspect, e.g. 16:9")
    crop.add_argument(
        "--subject",
        help="for --task subject: a point x,y or box x0,y0,x1,y1 (0-1), a mask file, or a "
        "phrase ('the red kite'); default: the VLM finds the main subject",
    )
    # DEFAULT: the environment, else the documented default (see cropper.defaults).
    crop.add_argument(
        "--vlm",
        default=DEFAULT,
        help="server URL, model id or folder (default: $CROPPER_VLM), or none: no VLM, the "
        "aesthetic head ranks GAICD-style grid crops",
    )
    crop.add_argument(
        "--clip",
        type=none_or,
        default=DEFAULT,
        help="open_clip model, e.g. ViT-L-14:openai, or none",
    )
    crop.add_argument(
        "--head", type=none_or, default=DEFAULT, help="aesthetic head weights, or none"
    )
    crop.add_argument(
        "--index",
        type=none_or,
        default=DEFAULT,
        help="exemplar bank folder (default: $CROPPER_INDEX, else zero-shot)",
    )
    crop.add_argument("--prompts", help="folder of prompt files (default: the shipped ones)")
    crop.add_argument("--coords", help="coordinate convention of the model (default norm1000)")
    crop.add_argument("--api-key", help="server API key (default: $CROPPER_API_KEY)")
    crop.add_argument("-o", "--out", help="output file (one photo) or folder (several)")
    crop.add_argument(
        "--json",
        action="store_true",
        help="one JSON object a line: image, task, box (pixels), score",
    )
    crop.set_defaults(run=run_crop)

    from cropper.evaluation.commands import add_eval_commands
    from cropper.training_commands import add_train_head_command
    from retrieval.commands import add_index_commands

    add_index_commands(commands)
    add_eval_commands(commands)
    add_train_head_command(commands)
    return parser


def run_crop(args: argparse.Namespace) -> int:
    from cropper.fileio import save_image
    from cropper.loop import Cropper

    outputs = _output_paths(args.images, args.out)
    settings = {"coords": args.coords} if args.coords else {}
    cropper = Cropper(
        vlm=args.vlm,
        clip=args.clip,
        head=args.head,
        index=args.index,
        prompts=args.prompts,
        api_key=args.api_key,
        **settings,
    )
    failures = 0
    for image, out in zip(args.images, outputs, strict=True):
        try:
            result = cropper.crop(
                image,
                task=args.task,
                subject=args.subject if args.task == "subject" else None,
                ratio=args.ratio if args.task == "aspect" else None,
            )
            if out is not None:
                save_image(result.image, out)
        except VLMError as exc:
            if exc.retryable:
                raise  # the server is down or overloaded past retries: stop, not photo after photo
            failures += 1
            print(f"cropper: {image}: {exc}", file=sys.stderr)
            continue
        except CropperError as exc:
            failures += 1
            print(f"cropper: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(result.to_json()), flush=True)
        else:
            where = f" -> {out}" if out else ""
            print(f"{image}: box {list(result.pixels)} score {result.score:.4f}{where}", flush=True)
    if failures:
        print(f"cropper: {failures} of {len(args.images)} photos failed", file=sys.stderr)
    return 1 if failures else 0


def _output_paths(images: Sequence[str], out: str | None) -> list[Path | None]:
    """Where each crop goes: ``out`` itself for one photo, ``out/<name>`` for several."""
    from cropper.errors import ConfigError

    if out is None:
        return [None] * len(images)
    target = Path(out)
    if len(images) == 1 and not target.is_dir():
        paths = [target]
    else:
        paths = [target / Path(image).name for image in images]
    if len({os.path.realpath(p) for p in paths}) < len(paths):
        raise ConfigError(
            f"several photos share a file name, so their crops would overwrite each other in "
            f"{target}; crop them in separate runs"
        )
    inputs = {os.path.realpath(i) for i in images}
    for path in paths:
        if os.path.realpath(path) in inputs:
            raise ConfigError(f"output {path} would overwrite an input photo; choose another -o")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose, format="cropper: %(levelname)s: %(message)s"
    )
    try:
        return args.run(args)
    except CropperError as exc:
        print(f"cropper: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cropper: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
