r"""Crop a large photo collection with Ray Data: a ``Cropper`` per actor, many VLM servers.

Photo *paths* go through Ray (each actor opens its own photos: they must sit on storage
every node mounts at the same path); each actor holds one ``Cropper`` pointed at one of
the ``--vlm`` servers (round-robin by actor) and calls ``crop_batch`` on its batches,
keeping ``--concurrency`` requests in flight. Only a short JSON line per photo comes back
to the driver, which appends it to ``OUT/results.jsonl``: crops' pixels never travel.

    pip install 'cropper[ray]'
    python examples/ray_crop_batch.py --photos /mnt/photos --out /mnt/crops --actors 8 \
        --vlm http://gpu-a:8000/v1 http://gpu-b:8000/v1 --concurrency 32

On a cluster, run it on the head node (or ``ray job submit``); ``RAY_ADDRESS`` picks the
cluster. A rerun with the same ``--out`` skips the photos already in ``results.jsonl``.
See docs/scaling.md for sizing actors, concurrency and servers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cropper.agent.components import DEFAULT, vlm_spec
from cropper.cli.args import none_or
from cropper.cli.crop import RESULTS
from cropper.cli.inputs import expand_inputs
from cropper.core.errors import ConfigError, CropperError
from cropper.core.fileio import JsonLines, read_json_lines
from cropper.core.tasks import TASKS, check_request

log = logging.getLogger("cropper.ray")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Crop many photos with Ray Data, a Cropper per actor."
    )
    parser.add_argument(
        "--photos", nargs="+", required=True, help="folders, globs, @lists or photo paths"
    )
    parser.add_argument("--out", required=True, help="folder for results.jsonl")
    parser.add_argument(
        "--vlm", nargs="+", required=True, metavar="URL", help="OpenAI-compatible server URL(s)"
    )
    parser.add_argument("--task", choices=TASKS, default="free", help="the cropping task")
    parser.add_argument("--ratio", help="aspect ratio for --task aspect, e.g. 4:5")
    parser.add_argument("--subject", help="for --task subject: a phrase or point for every photo")
    parser.add_argument("--actors", type=int, default=2, help="Cropper actors (default 2)")
    parser.add_argument(
        "--actor-cpus", type=float, default=1.0, help="CPUs reserved per actor (default 1)"
    )
    parser.add_argument(
        "--actor-gpus", type=float, default=0.0, help="GPUs per actor, for CLIP scoring (default 0)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="photos per crop_batch call (default 64)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight per actor (default 16)"
    )
    parser.add_argument("--clip", type=none_or, default=DEFAULT, help="open_clip model, or none")
    parser.add_argument("--head", type=none_or, default=DEFAULT, help="aesthetic head, or none")
    parser.add_argument(
        "--index", type=none_or, default=DEFAULT, help="exemplar bank on shared storage, or none"
    )
    parser.add_argument("--prompts", help="folder of prompt files on shared storage")
    parser.add_argument("--coords", help="coordinate convention of the model (default norm1000)")
    parser.add_argument("--api-key", help="server API key (default: $CROPPER_API_KEY)")
    return parser


class Turns:
    """Hands out 0, 1, 2, ... so each actor picks its server round-robin."""

    def __init__(self) -> None:
        self.count = -1

    def next(self) -> int:
        self.count += 1
        return self.count


class CropActor:
    """One ``Cropper`` per actor; turns a batch of paths into result lines."""

    def __init__(self, urls: Sequence[str], turns: Any, options: dict[str, Any]):
        import ray

        from cropper.agent.loop import Cropper

        self.url = urls[ray.get(turns.next.remote()) % len(urls)]
        self.request = options["request"]
        self.cropper = Cropper(self.url, **options["cropper"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["image"]]
        # A VLMError that stops a batch (the server is gone, or refuses every photo) raises
        # here and stops the run: the lines already written stay, and a rerun resumes after.
        results = self.cropper.crop_batch(paths, **self.request)
        task = self.request["task"]
        lines = [_line(p, r, task) for p, r in zip(paths, results, strict=True)]
        return {"line": np.array(lines, dtype=object)}


def _line(path: str, result: Any, task: str) -> str:
    """The photo's JSON line: image, task, box (pixels), score; or image, task, error."""
    if isinstance(result, CropperError):
        return json.dumps({"image": path, "task": task, "error": str(result)})
    return json.dumps({**result.to_json(), "image": path})


def _check(args: argparse.Namespace) -> None:
    """Fail on the driver, in one line, before any actor starts."""
    if min(args.actors, args.batch_size, args.concurrency) < 1:
        raise ConfigError("--actors, --batch-size and --concurrency must each be at least 1")
    check_request(
        args.task,
        subject=args.subject if args.task == "subject" else None,
        ratio=args.ratio if args.task == "aspect" else None,
    )
    for url in args.vlm:
        vlm_spec(url)


def photos_to_crop(args: argparse.Namespace) -> list[str]:
    """The photos given, less those ``OUT/results.jsonl`` already holds a line for."""
    # Failures that get a line are the photo's own (unreadable, refused): a rerun skips them
    # too. A server that is down gives no lines: it stops the run instead.
    done = {str(r.get("image")) for r in read_json_lines(Path(args.out) / RESULTS)}
    # Absolute paths: actors on other nodes (other working directories) open them too.
    paths = [os.path.abspath(i.path) for i in expand_inputs(args.photos)]
    todo = [p for p in paths if p not in done]
    log.info("%d photos: %d done before, %d to crop", len(paths), len(paths) - len(todo), len(todo))
    return todo


def crop_all(todo: Sequence[str], args: argparse.Namespace) -> int:
    """Crop ``todo`` on a pool of actors, appending lines as batches end; returns failures."""
    import ray

    settings = {"coords": args.coords} if args.coords else {}
    options = {
        "cropper": dict(
            clip=args.clip,
            head=args.head,
            index=args.index,
            prompts=args.prompts,
            api_key=args.api_key or os.environ.get("CROPPER_API_KEY"),
            **settings,
        ),
        "request": dict(
            task=args.task,
            subject=args.subject if args.task == "subject" else None,
            ratio=args.ratio if args.task == "aspect" else None,
            concurrency=args.concurrency,
        ),
    }
    turns = ray.remote(num_cpus=0)(Turns).remote()
    lines = ray.data.from_items([{"image": p} for p in todo]).map_batches(
        CropActor,
        fn_constructor_args=(args.vlm, turns, options),
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        batch_size=args.batch_size,
        num_cpus=args.actor_cpus,
        num_gpus=args.actor_gpus,
    )
    failures = written = 0
    # One file on the driver, not write_json: a few hundred bytes a photo, appended as batches
    # end, is what `cropper crop` writes and what a rerun resumes from.
    with JsonLines(Path(args.out) / RESULTS) as sink:
        for batch in lines.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["line"]:
                record = json.loads(text)
                sink.append(record)
                failures += "error" in record
            written += len(batch["line"])
            log.info("%d of %d photos cropped", written, len(todo))
    return failures


def _cause(exc: BaseException) -> str:
    """The cropper error inside a Ray error: it arrives only as the text of a remote traceback."""
    lines = str(exc).splitlines()
    ours = [line for line in lines if line.startswith("cropper.core.errors.")]
    if ours:
        return ours[-1].split(": ", 1)[-1]
    theirs = [line for line in lines if line.startswith("ray.exceptions.")]
    return theirs[-1] if theirs else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe; starts a local Ray (or joins ``$RAY_ADDRESS``) unless one is running."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="cropper: %(message)s")
    log.setLevel(logging.INFO)  # this script's progress; the library stays at warnings
    try:
        _check(args)
        todo = photos_to_crop(args)
    except CropperError as exc:
        print(f"cropper: error: {exc}", file=sys.stderr)
        return 2
    if not todo:
        return 0
    try:
        import ray
    except ImportError:
        print("cropper: error: Ray is needed: pip install 'cropper[ray]'", file=sys.stderr)
        return 2
    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        failures = crop_all(todo, args)
    except ray.exceptions.RayError as exc:
        print(f"cropper: error: the run stopped: {_cause(exc)}; rerun to resume", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    if failures:
        print(f"cropper: {failures} photos failed; see 'error' in {RESULTS}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
