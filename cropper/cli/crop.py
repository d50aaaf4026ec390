"""``cropper crop``: photos, folders, globs and lists cropped into files and results.jsonl."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cropper.agent.components import DEFAULT
from cropper.cli.args import (
    DEMO_NOTE,
    cropper_from_args,
    jpeg_quality,
    non_negative_int,
    none_or,
    positive_float,
    positive_int,
    share,
    write_line,
)
from cropper.core.errors import ConfigError, CropperError
from cropper.core.fileio import (
    FolderLock,
    JsonLines,
    atomic_path,
    read_json_lines,
    remove_stale_temporaries,
    save_image,
    write_text,
)
from cropper.core.images import shorten_path
from cropper.core.tasks import TASKS

log = logging.getLogger("cropper")

#: The file in an output folder with one line per cropped photo; a rerun skips those.
RESULTS = "results.jsonl"
#: The file in an output folder recording the settings that made its crops.
SETTINGS = "settings.json"


def add_crop_command(commands: Any) -> None:
    """``cropper crop``: its flags."""
    crop = commands.add_parser("crop", help="crop photos", description="Crop photos.")
    crop.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="photos, folders (subfolders too), globs ('shoot/*.jpg') or @list.txt",
    )
    crop.add_argument(
        "--task",
        choices=TASKS,
        help="the cropping task (default: aspect with --ratio, subject with --subject, else free)",
    )
    crop.add_argument(
        "--ratio",
        help="aspect ratio (implies --task aspect), e.g. 16:9; several, comma-separated "
        "(1:1,4:5,16:9), save a crop each as NAME.1x1.jpg ... and JSON lines gain 'ratios'",
    )
    crop.add_argument(
        "--size",
        help="resize each saved crop to this long side (1080) or exact size (1080x1350, which "
        "implies its ratio), with Lanczos resampling",
    )
    crop.add_argument(
        "--keep",
        action="append",
        metavar="X0,Y0,X1,Y1",
        help="a region (0-1) every crop must hold whole; repeat for several",
    )
    crop.add_argument(
        "--avoid",
        action="append",
        metavar="X0,Y0,X1,Y1",
        help="a region (0-1) crops should leave out (scored lower by the share they hold); "
        "repeat for several",
    )
    crop.add_argument(
        "--protect",
        choices=("faces",),
        help="faces: no crop cuts through a face, and the largest is kept whenever the ratio "
        "allows (needs pip install 'cropper[faces]')",
    )
    crop.add_argument(
        "--quality",
        type=jpeg_quality,
        default=95,
        help="JPEG (and WebP) quality of the saved crops, 1-100 (default 95)",
    )
    crop.add_argument(
        "--keep-gps",
        action="store_true",
        help="keep the photo's GPS position in the saved crops' EXIF (dropped by default)",
    )
    crop.add_argument(
        "--subject",
        help="a point x,y or box x0,y0,x1,y1 (0-1), a mask file, or a phrase ('the red kite') "
        "(implies --task subject; with --task subject alone the VLM finds the main subject)",
    )
    # DEFAULT: the environment, else the documented default (see cropper.core.defaults).
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
        "--model",
        help="the model to use on a server that serves several (see its /v1/models)",
    )
    crop.add_argument(
        "--no-structured-outputs",
        action="store_true",
        help="do not send the JSON schema as response_format, for servers that refuse it",
    )
    crop.add_argument(
        "--min-side",
        type=share,
        help="the smallest side a crop may have, as a share of the photo's side (default 0.1); "
        "smaller proposals are grown",
    )
    # The loop's settings, as CropConfig names them (README "Defaults"); unset: the paper's.
    crop.add_argument(
        "--exemplars",
        type=non_negative_int,
        metavar="S",
        help="exemplars retrieved from the bank for each photo (CropConfig.exemplars, default 30)",
    )
    crop.add_argument(
        "--crops",
        type=positive_int,
        metavar="R",
        help="crops the VLM proposes a round (CropConfig.crops, default 6)",
    )
    crop.add_argument(
        "--rounds",
        type=non_negative_int,
        metavar="L",
        help="refinement rounds after the first proposal (CropConfig.refine_rounds, default 2)",
    )
    crop.add_argument(
        "--samples",
        type=positive_int,
        metavar="N",
        help="replies sampled a round (CropConfig.samples, default 1)",
    )
    crop.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="sampling temperature, 0 to 2 (CropConfig.temperature, default 0.05)",
    )
    crop.add_argument(
        "--seed",
        type=int,
        help="sampling seed, for runs that repeat (CropConfig.seed, default none)",
    )
    crop.add_argument(
        "--max-tokens",
        type=positive_int,
        metavar="N",
        help="the most tokens a reply may have (default 512: a dozen boxes as JSON)",
    )
    crop.add_argument("--top-p", type=share, help="nucleus sampling's top_p (default: not sent)")
    crop.add_argument(
        "--sampling-top-k",
        type=positive_int,
        metavar="K",
        help="sample each token from the K likeliest (a request's top_k; default: not sent)",
    )
    crop.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any photo fell back (no valid box from the VLM, an assumed subject)",
    )
    crop.add_argument(
        "--demo",
        action="store_true",
        help="crop with tiny random models built offline in seconds: the whole pipeline runs, "
        "but the boxes are arbitrary (to try cropper with nothing downloaded)",
    )
    crop.add_argument(
        "--wait",
        action="store_true",
        help="when another run is writing the same --out folder, wait for it instead of stopping",
    )
    crop.add_argument(
        "--redo",
        action="store_true",
        help="with --out a folder: crop every photo again, even those done, with this run's "
        "settings",
    )
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


def run_crop(args: argparse.Namespace) -> int:
    from cropper.agent.request import make_request
    from cropper.agent.result import ratio_file_tag
    from cropper.cli.inputs import (
        expand_inputs,
        output_paths,
        ratio_path,
        top_paths,
        writes_a_folder,
    )

    task = crop_task(args.task, ratio=args.ratio, subject=args.subject)
    request = make_request(
        task,
        subject=args.subject if task == "subject" else None,
        ratio=_ratios(args.ratio) if task == "aspect" else None,
        keep=args.keep,
        avoid=args.avoid,
        protect=args.protect,
        size=args.size,
    )
    task = request.task  # an exact --size implies aspect
    tags = [ratio_file_tag(r.text) for r in request.ratios] if request.several else []
    inputs = _not_ours(expand_inputs(args.images), args.out, args.debug_dir)
    top_k = args.top_k or 1
    # Every output checked before work.
    outputs = output_paths(inputs, args.out, top_k=top_k, ratio_tags=tags)
    folder = Path(args.out) if writes_a_folder(inputs, args.out, outputs) else None
    log_path = folder / RESULTS if folder is not None else None
    failures: list[str] = []
    fallbacks: list[str] = []
    with contextlib.ExitStack() as stack:
        if folder is not None:
            # One writer per folder; what a killed run left half-written goes.
            stack.enter_context(FolderLock(folder, f"cropper crop --out {folder}", wait=args.wait))
            remove_stale_temporaries(folder)
            _check_settings(folder, _settings(args, task), redo=args.redo)
        elif outputs[0] is not None:
            _check_writable(outputs[0].parent, "-o")
        if args.debug_dir:
            _check_writable(Path(args.debug_dir), "--debug-dir")
        todo = _not_done(inputs, outputs, None if args.redo else log_path, tags)
        if len(todo) < len(inputs):
            done = len(inputs) - len(todo)
            print(f"cropper: {done} photos already done in {log_path}", file=sys.stderr)
        cropper = cropper_from_args(args)
        stack.callback(cropper.close)
        if folder is not None:
            _record_settings(folder, _settings(args, task), redo=args.redo)
        results_log = stack.enter_context(JsonLines(log_path)) if log_path else None
        stream = cropper.crop_stream(
            [inputs[i].path for i in todo],
            task=request.task,
            subject=request.subject,
            ratio=[r for r in request.ratios] if request.several else request.ratio,
            keep=request.keep,
            avoid=request.avoid,
            protect=request.protect,
            size=request.size,
            concurrency=args.concurrency,
            progress=len(todo) > 1,
        )
        save = functools.partial(_save, quality=args.quality, keep_gps=args.keep_gps)
        for position, result in stream:
            index = todo[position]
            item, out = inputs[index], outputs[index]
            image = _shown(item.path)
            try:
                if isinstance(result, CropperError):
                    if args.debug_dir and result.partial is not None:
                        _write_debug(result.partial, Path(args.debug_dir), item.name)
                    raise result
                if out is not None:
                    crops = (
                        [(ratio_path(out, ratio_file_tag(t)), r) for t, r in result.items()]
                        if request.several
                        else [(out, result)]
                    )
                    for path, one in crops:
                        # Fewer diverse crops than --top-k asks for may come back: not strict.
                        tops = zip(top_paths(path, top_k), one.top_images[1:], strict=False)
                        for where, crop in [*tops, (path, one.image)]:  # the crop last: done
                            save(crop, where)
                if args.debug_dir:
                    _write_debug(result, Path(args.debug_dir), item.name)
            except StopRun:
                raise
            except CropperError as exc:
                shown = shorten_path(image)  # a path of 4,000 characters stays one short line
                named = image in str(exc) or shown in str(exc)
                failures.append(str(exc) if named else f"{shown}: {exc}")
                write_line(f"cropper: {failures[-1]}", sys.stderr)
                continue
            summary = {**result.to_json(top=top_k > 1), "image": image, "name": item.name}
            if args.demo:  # said in every line, so that no demo crop is taken for a real one
                summary["notes"] = [*summary["notes"], DEMO_NOTE]
            if result.fallback:
                fallbacks.append(f"{image}: {result.fallback}")
            if results_log is not None:
                try:
                    results_log.append(summary)
                except OSError as exc:
                    raise _write_error(exc, log_path) from None
            if args.json:
                write_line(json.dumps(summary), sys.stdout)
            else:
                write_line(_result_line(image, summary, out, tags), sys.stdout)
    if fallbacks:
        print(_summary("fell back", fallbacks, len(todo)), file=sys.stderr)
    if failures:
        print(_summary("failed", failures, len(todo)), file=sys.stderr)
    if fallbacks and args.strict and not failures:
        print("cropper: --strict: exit 1, as photos fell back", file=sys.stderr)
    return 1 if failures or (fallbacks and args.strict) else 0


def _ratios(text: str | None) -> Any:
    """``--ratio``: one ratio, or a list of them when comma-separated."""
    if text is None or "," not in text:
        return text
    listed = [part.strip() for part in text.split(",")]
    if not all(listed):
        raise ConfigError(f"--ratio {text}: an empty ratio in the list; write e.g. 1:1,4:5,16:9")
    return listed


def _result_line(image: str, summary: dict[str, Any], out: Path | None, tags: list[str]) -> str:
    """The line a photo's crop gets on the terminal."""
    from cropper.cli.inputs import ratio_path

    fell = " (fell back; see the warning)" if summary["fallback"] else ""
    if "ratios" not in summary:
        where = f" -> {out}" if out else ""
        return f"{image}: box {summary['box']} score {summary['score']:.4f}{where}{fell}"
    parts = []
    for (text, crop), tag in zip(summary["ratios"].items(), tags, strict=True):
        where = f" -> {ratio_path(out, tag)}" if out else ""
        parts.append(f"{text} box {crop['box']} score {crop['score']:.4f}{where}")
    return f"{image}: {'; '.join(parts)}{fell}"


def _not_ours(inputs: list[Any], *folders: str | None) -> list[Any]:
    """The inputs less what cropper wrote, when a folder holding it is given as input.

    Photos in a folder below the given input folder that is this run's ``--out`` or
    ``--debug-dir``, or any folder a cropper run writes (it holds a lock file), are crops
    and overlays, not photos to crop. An ``--out`` that is the input folder itself is
    left to the overwrite check, which refuses it.
    """
    from cropper.core.fetch import is_url
    from cropper.core.fileio import LOCK_NAME

    ours = {os.path.realpath(f) for f in folders if f and os.path.isdir(f)}

    def written_by_cropper(item: Any) -> bool:
        path = os.path.realpath(item.path)
        depth = len(Path(item.name).parts) - 1  # folders between the input folder and it
        folder = os.path.dirname(path)
        for _ in range(depth):
            if folder in ours or os.path.isfile(os.path.join(folder, LOCK_NAME)):
                return True
            folder = os.path.dirname(folder)
        return False

    return [i for i in inputs if is_url(i.path) or not written_by_cropper(i)]


#: Writing errors that every photo would meet: the run stops rather than fail each alike.
_SHARED_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _write_error(exc: OSError, path: Path | None) -> CropperError:
    """A one-line error for a file that could not be written; stops the run when shared."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space, or choose another --out"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "choose a folder you can write to"
    else:
        hint = "check the path"
    kind = StopRun if exc.errno in _SHARED_WRITE_ERRORS else CropperError
    return kind(f"cannot write {path} ({why}): {hint}")


class StopRun(ConfigError):
    """A failure every photo of the run would meet (a full disk): the run stops at once."""


def _save(image: Any, path: Path, *, quality: int = 95, keep_gps: bool = False) -> None:
    try:
        save_image(image, path, quality=quality, keep_gps=keep_gps)
    except OSError as exc:
        raise _write_error(exc, path) from None


def _check_writable(folder: Path, flag: str) -> None:
    """Refuse, before any work, a folder that cannot be written (read-only, a file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / ".cropper-write-check"):
            pass
        (folder / ".cropper-write-check").unlink(missing_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{flag} {folder}: not a folder; choose a folder") from None
    except OSError as exc:
        raise ConfigError(
            f"{flag} {folder} cannot be written ({exc.strerror or exc}): choose a folder you "
            "can write to"
        ) from None


def crop_task(task: str | None, *, ratio: Any = None, subject: Any = None) -> str:
    """The task the flags ask for: ``--ratio`` implies aspect, ``--subject`` subject.

    Flags that ask for different tasks are refused in one line.
    """
    implied = [name for name, flag in (("aspect", ratio), ("subject", subject)) if flag]
    if len(implied) > 1:
        raise ConfigError(
            "--ratio asks for --task aspect and --subject for --task subject: give one of them"
        )
    if task is None:
        return implied[0] if implied else "free"
    if implied and implied[0] != task:
        flag = "--ratio" if implied[0] == "aspect" else "--subject"
        raise ConfigError(
            f"{flag} belongs to --task {implied[0]}, not --task {task}: drop {flag}, or use "
            f"--task {implied[0]}"
        )
    return task


#: The flags whose values make the crops, as recorded in an output folder's settings.json.
_SETTING_FLAGS = (
    "ratio",
    "size",
    "keep",
    "avoid",
    "protect",
    "quality",
    "keep_gps",
    "subject",
    "vlm",
    "model",
    "clip",
    "head",
    "index",
    "prompts",
    "coords",
    "pixel_budget",
    "score_weights",
    "top_k",
    "compose",
    "min_side",
    "top_p",
    "sampling_top_k",
    "max_tokens",
    "exemplars",
    "crops",
    "rounds",
    "samples",
    "temperature",
    "seed",
    "no_structured_outputs",
)


def _settings(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The settings of this run that make its crops, by flag name (unset ones left out)."""
    settings: dict[str, Any] = {"--task": task}
    for name in _SETTING_FLAGS:
        value = getattr(args, name, None)
        if value is None and name in ("clip", "head", "index"):
            value = "none"  # these default to DEFAULT: None is the user's "none"
        if value is None or value is False:  # by identity: a min_side of 0.0 is set
            continue
        settings["--" + name.replace("_", "-")] = "default" if value is DEFAULT else value
    return settings


def _check_settings(folder: Path, settings: dict[str, Any], *, redo: bool) -> None:
    """Refuse to go on in a folder made with other settings, unless asked to redo it."""
    recorded = _recorded_settings(folder)
    if recorded is None or recorded == settings or redo:
        return
    changes = []
    for flag in sorted(set(recorded) | set(settings)):
        before, now = recorded.get(flag), settings.get(flag)
        if before != now:
            changes.append(f"{flag} {_flag_value(before)} then, {_flag_value(now)} now")
    raise ConfigError(
        f"{folder} holds crops made with other settings ({'; '.join(changes)}): crop into "
        "another --out folder, or add --redo to crop every photo again with these"
    )


def _recorded_settings(folder: Path) -> dict[str, Any] | None:
    path = folder / SETTINGS
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} cannot be read ({exc.__class__.__name__}): add --redo to crop every photo "
            "again and write it anew"
        ) from None
    return recorded.get("settings") if isinstance(recorded, dict) else None


def _record_settings(folder: Path, settings: dict[str, Any], *, redo: bool) -> None:
    """Write the folder's settings; a redo starts its results.jsonl afresh."""
    if redo and (folder / RESULTS).exists():
        write_text(folder / RESULTS, "")
    if _recorded_settings(folder) != settings:
        write_text(folder / SETTINGS, json.dumps({"settings": settings}, indent=1) + "\n")


def _flag_value(value: Any) -> str:
    if value is None:
        return "unset"
    return "on" if value is True else repr(value)


def _shown(path: str) -> str:
    """How outputs name a photo: a URL without any password in it."""
    from cropper.core.fetch import is_url, show_url

    return show_url(path) if is_url(path) else path


#: Failures (and fallbacks) listed one by one at the end of a batch; the rest are counted.
SHOWN_FAILURES = 20


def _summary(what: str, items: Sequence[str], total: int) -> str:
    """``cropper: K of N photos failed:`` (or ``fell back:``) and a line each."""
    lines = [f"cropper: {len(items)} of {total} photos {what}:"]
    lines += [f"  {why}" for why in items[:SHOWN_FAILURES]]
    if len(items) > SHOWN_FAILURES:
        lines.append(f"  ... and {len(items) - SHOWN_FAILURES} more")
    return "\n".join(lines)


def _write_debug(result: Any, debug_dir: Path, name: str) -> None:
    """``DIR/<photo name>/``, with prompt images shared by the whole run.

    ``result`` is a CropResult, or the PartialCrop of a photo that failed.
    """
    from cropper.agent.result import RatioCrops
    from cropper.views.debug import write_debug

    try:
        # The name with its suffix: x.jpg and x.png get folders of their own.
        if isinstance(result, RatioCrops):  # a folder a ratio inside
            result.write_debug(debug_dir / name, images=debug_dir / "prompt-images")
        else:
            write_debug(result, debug_dir / name, images=debug_dir / "prompt-images")
    except OSError as exc:
        raise CropperError(f"cannot write the debug folder in {debug_dir} ({exc})") from None


def _not_done(
    inputs: Sequence[Any],
    outputs: Sequence[Path | None],
    log: Path | None,
    ratio_tags: Sequence[str] = (),
) -> list[int]:
    """Positions of the photos still to crop: those with no line in ``log`` and crop files.

    A photo is known by its name under the input folder (``photos/a.jpg`` and
    ``/abs/photos/a.jpg`` are the same photo), or, in lines of older runs, by its path.
    With several ratios, every ratio's crop file must be there.
    """
    from cropper.cli.inputs import ratio_path

    if log is None:
        return list(range(len(inputs)))

    def saved(out: Path | None) -> bool:
        if out is None:
            return False
        return all(p.exists() for p in ([ratio_path(out, t) for t in ratio_tags] or [out]))

    lines = read_json_lines(log)
    names = {r["name"] for r in lines if isinstance(r.get("name"), str)}
    paths = {str(r.get("image")) for r in lines if not isinstance(r.get("name"), str)}
    return [
        i
        for i, (item, out) in enumerate(zip(inputs, outputs, strict=True))
        if not ((item.name in names or _shown(item.path) in paths) and saved(out))
    ]
