"""The command line: ``cropper crop``, ``index``, ``eval`` and ``train-head``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cropper.components import DEFAULT
from cropper.errors import CropperError
from cropper.fileio import JsonLines, read_json_lines, save_image
from cropper.tasks import TASKS

log = logging.getLogger("cropper")

#: The file in an output folder with one line per cropped photo; a rerun skips those.
RESULTS = "results.jsonl"


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not (0 < number < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """An argparse type: a whole number of at least 0."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {value!r}")
    return number


def none_or(value: str) -> str | None:
    return None if value.lower() == "none" else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cropper", description="Crop photos well with a vision-language model."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", required=True)

    crop = commands.add_parser("crop", help="crop photos", description="Crop photos.")
    crop.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="photos, folders (subfolders too), globs ('shoot/*.jpg') or @list.txt",
    )
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
        help="the embedder of retrieval and scoring: an open_clip model (ViT-L-14:openai), a "
        "transformers vision model (hf:facebook/dinov2-small, hf:/folder), or none",
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
    crop.add_argument(
        "--pixel-budget",
        help="size photos as the model's processor wants them: qwen2.5-vl (with --coords "
        "pixel), qwen3-vl, or NAME:MAX_PIXELS for a server's max_pixels (default: none)",
    )
    crop.add_argument(
        "--score-weights",
        metavar="TERMS",
        help="how much each score term counts, e.g. aesthetic=1,area=1,knowledge=1 (terms: "
        "aesthetic, area, content, knowledge; default: the paper's for the task)",
    )
    crop.add_argument(
        "--top-k",
        type=positive_int,
        help="also return the K best crops of all rounds that overlap little (IoU <= 0.5), "
        "saved as NAME.top2.jpg ... beside the crop; JSON lines gain 'top'",
    )
    crop.add_argument(
        "--compose",
        action="store_true",
        help="first ask the VLM which composition suits the photo (rule of thirds, symmetry, "
        "...; prompts/compositions.json), then crop to it",
    )
    crop.add_argument(
        "--allow-urls",
        action="store_true",
        help="fetch photos given as http(s) URLs (at most 50 MB and 20 s each)",
    )
    crop.add_argument(
        "--timeout",
        type=positive_float,
        help="seconds a server request may take before it is retried (default 120)",
    )
    crop.add_argument(
        "--max-retries",
        type=non_negative_int,
        help="retries of a server request that failed in a way that may pass (default 4)",
    )
    crop.add_argument("--api-key", help="server API key (default: $CROPPER_API_KEY)")
    crop.add_argument(
        "-o",
        "--out",
        help="output file (one photo) or folder (several): the folder gets the crops and "
        "results.jsonl, a line a photo; run again to go on where it stopped",
    )
    crop.add_argument(
        "--concurrency",
        type=positive_int,
        help="photos cropped together: requests in flight on a server, batch size in-process "
        "(default 16)",
    )
    crop.add_argument(
        "--debug-dir",
        metavar="DIR",
        help="save each photo's overlays, exact prompts and raw replies under DIR/<photo>/",
    )
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
    from cropper.inputs import expand_inputs, output_paths, writes_a_folder

    inputs = expand_inputs(args.images)
    outputs = output_paths(inputs, args.out)
    log_path = Path(args.out) / RESULTS if writes_a_folder(inputs, args.out, outputs) else None
    todo = _not_done(inputs, outputs, log_path)
    if len(todo) < len(inputs):
        print(
            f"cropper: {len(inputs) - len(todo)} photos already done in {log_path}", file=sys.stderr
        )
    cropper = cropper_from_args(args)
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        results_log = stack.enter_context(JsonLines(log_path)) if log_path else None
        stack.callback(cropper.close)
        stream = cropper.crop_stream(
            [inputs[i].path for i in todo],
            task=args.task,
            subject=args.subject if args.task == "subject" else None,
            ratio=args.ratio if args.task == "aspect" else None,
            concurrency=args.concurrency,
            progress=len(todo) > 1,
        )
        for position, result in stream:
            index = todo[position]
            image, out = _shown(inputs[index].path), outputs[index]
            try:
                if isinstance(result, CropperError):
                    raise result
                if out is not None:
                    for rank, extra in enumerate(result.top_images[1:], start=2):
                        save_image(extra, out.with_name(f"{out.stem}.top{rank}{out.suffix}"))
                    save_image(result.image, out)  # the crop last: its line says it is done
                if args.debug_dir:
                    _write_debug(result, Path(args.debug_dir), inputs[index].name)
            except CropperError as exc:
                failures.append(str(exc) if image in str(exc) else f"{image}: {exc}")
                print(f"cropper: {failures[-1]}", file=sys.stderr)
                continue
            summary = {**result.to_json(top=(args.top_k or 1) > 1), "image": image}
            if results_log is not None:
                results_log.append(summary)
            if args.json:
                print(json.dumps(summary), flush=True)
            else:
                where = f" -> {out}" if out else ""
                print(f"{image}: box {summary['box']} score {result.score:.4f}{where}", flush=True)
    if failures:
        print(_failure_summary(failures, len(todo)), file=sys.stderr)
    return 1 if failures else 0


def _shown(path: str) -> str:
    """How outputs name a photo: a URL without any password in it."""
    from cropper.fetch import is_url, show_url

    return show_url(path) if is_url(path) else path


#: Failures listed one by one at the end of a batch; the rest are counted.
SHOWN_FAILURES = 20


def _failure_summary(failures: Sequence[str], total: int) -> str:
    lines = [f"cropper: {len(failures)} of {total} photos failed:"]
    lines += [f"  {why}" for why in failures[:SHOWN_FAILURES]]
    if len(failures) > SHOWN_FAILURES:
        lines.append(f"  ... and {len(failures) - SHOWN_FAILURES} more")
    return "\n".join(lines)


def _write_debug(result: Any, debug_dir: Path, name: str) -> None:
    """``DIR/<photo name without suffix>/``, with prompt images shared by the whole run."""
    from cropper.debug import write_debug

    try:
        write_debug(
            result, debug_dir / Path(name).with_suffix(""), images=debug_dir / "prompt-images"
        )
    except OSError as exc:
        raise CropperError(f"cannot write the debug folder in {debug_dir} ({exc})") from None


def cropper_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~cropper.loop.Cropper` that the model options of a command name."""
    from cropper.loop import Cropper

    options = {
        "coords": args.coords,
        "pixel_budget": args.pixel_budget,
        "top_k": getattr(args, "top_k", None),
        "compose": getattr(args, "compose", False),
        "allow_urls": getattr(args, "allow_urls", False),
    }
    settings = {key: value for key, value in options.items() if value}
    backend = {
        "timeout": getattr(args, "timeout", None),
        "max_retries": getattr(args, "max_retries", None),
    }
    return Cropper(
        score_weights=getattr(args, "score_weights", None),
        vlm_options={key: value for key, value in backend.items() if value is not None},
        vlm=args.vlm,
        clip=args.clip,
        head=args.head,
        index=args.index,
        prompts=args.prompts,
        api_key=args.api_key,
        **settings,
    )


def _not_done(inputs: Sequence[Any], outputs: Sequence[Path | None], log: Path | None) -> list[int]:
    """Positions of the photos still to crop: those with no line in ``log`` and crop file."""
    if log is None:
        return list(range(len(inputs)))
    done = {str(r.get("image")) for r in read_json_lines(log)}
    return [
        i
        for i, (item, out) in enumerate(zip(inputs, outputs, strict=True))
        if not (_shown(item.path) in done and out is not None and out.exists())
    ]


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
