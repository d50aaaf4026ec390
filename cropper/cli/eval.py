"""``cropper eval crop|scores|boxes|compare``: measure crops the way the benchmarks do.

Each subcommand prints what a person reads (problems, a short table) on stderr and
one JSON object, the metrics and counts, as the last line of stdout, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_eval_commands(commands: Any) -> None:
    """Register ``eval`` and its subcommands under the main parser's subcommands."""
    from cropper.agent.components import DEFAULT
    from cropper.cli.args import add_group, none_or

    actions = add_group(
        commands,
        "eval",
        "measure crops the way the benchmarks do",
        "Measure crops, or predicted crop scores, against a benchmark's annotations.",
    )
    _add_crop_command(actions)

    scores = actions.add_parser(
        "scores",
        help="rank each photo's annotated crops by your scores: Acc, wAcc, SRCC, PCC",
        description="Measure predicted scores of every annotated crop (GAICD): Acc and wAcc "
        "at 5 and 10, SRCC and PCC, averaged over photos.",
    )
    _add_dataset_args(scores)
    scores.add_argument(
        "--predictions",
        required=True,
        help='JSONL, one photo a line: {"image": name, "scores": [one per annotated crop, '
        "in annotation order]}; with --score-with, where cropper writes its own",
    )
    scores.add_argument(
        "--score-with",
        metavar="TERMS",
        help="score the annotated crops with cropper's own terms first, alone or combined: "
        "e.g. knowledge, or aesthetic=1,knowledge=1 (terms: aesthetic, area, content, "
        "knowledge); needs the photos",
    )
    scores.add_argument(
        "--clip", type=none_or, default=DEFAULT, help="embedder: open_clip MODEL:TAG or hf:MODEL"
    )
    scores.add_argument("--head", type=none_or, default=DEFAULT, help="aesthetic head")
    scores.add_argument("--prompts", help="prompt folder whose knowledge/ prompts to use")
    scores.add_argument("--no-progress", action="store_true", help="no progress bar")
    scores.set_defaults(run=run_scores)

    boxes = actions.add_parser(
        "boxes",
        help="compare your crops with the best annotated ones: IoU, BDE",
        description="Measure predicted crops against the best annotated crops, in pixels of "
        "the original photo: IoU and boundary displacement error, averaged over photos.",
    )
    _add_dataset_args(boxes)
    boxes.add_argument(
        "--predictions",
        required=True,
        help='JSONL, one photo a line: {"image": name, "box": [left, top, right, bottom]} in '
        'pixels of the original photo, with "size": [w, h] when the photo is not at hand '
        "(cropper crop --json writes such lines)",
    )
    boxes.set_defaults(run=run_boxes)

    compare = actions.add_parser(
        "compare",
        help="one table of several eval crop runs: metrics, settings, protocol, split",
        description="Put the metrics of eval crop runs side by side with each run's settings "
        "(method, model, bank, options), protocol and split. Where runs of one metric differ "
        "in protocol or split, every figure of it is marked with its group: compare only "
        "figures of one group. The Markdown table goes to stderr (and to --out), the JSON "
        "to stdout's last line.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders (eval crop --out)")
    compare.add_argument("--out", help="also write the Markdown table to this file")
    compare.set_defaults(run=run_compare)


def _add_crop_command(actions: Any) -> None:
    from cropper.agent.components import DEFAULT
    from cropper.cli.args import none_or, positive_int
    from cropper.core.tasks import TASKS
    from cropper.evaluation.protocol import DEFAULT_RANKING, RANKINGS

    crop = actions.add_parser(
        "crop",
        help="crop a split with cropper or a baseline, and measure it",
        description="Crop every photo of a split (resumable: run the same command again to "
        "go on), then measure the crops: IoU and BDE against the best annotated crops in "
        "original pixels, both from one of them as CACNet's reference code chooses it (the "
        "highest IoU; on a tie, the least displacement); on GAICD also Acc, wAcc, SRCC and "
        "PCC, ranking the annotated crops as --ranking says. FLMS and FCDB with --task "
        "aspect ask one crop per ground truth, with its ratio. Writes predictions.jsonl, "
        "metrics.json, report.md (beside the published numbers of the same protocol), "
        "iou_hist.png and galleries to --out.",
    )
    _add_dataset_args(crop)
    crop.add_argument("--out", required=True, help="the run's folder; an existing one resumes")
    crop.add_argument(
        "--task", choices=TASKS, help="default: the benchmark's (gaicd free, fcdb aspect, ...)"
    )
    crop.add_argument(
        "--ranking",
        choices=list(RANKINGS),
        default=DEFAULT_RANKING,
        help="GAICD's Acc/SRCC: scorer (default; every annotated crop scored by the method's "
        "own scorer, as the published numbers) or iou (ranked by IoU with the predicted "
        "crop, cropper's own protocol); a scorer run can be measured by iou again without "
        "cropping",
    )
    crop.add_argument(
        "--baseline",
        choices=["whole", "centre", "saliency", "head", "smartcrop"],
        help="crop with a baseline instead of the VLM loop (smartcrop: the smartcrop package, "
        "pip install 'cropper[smartcrop]')",
    )
    crop.add_argument("--vlm", default=DEFAULT, help="server URL, model id or folder, or none")
    crop.add_argument(
        "--clip",
        type=none_or,
        default=DEFAULT,
        help="embedder: open_clip MODEL:TAG, hf:MODEL, or none",
    )
    crop.add_argument("--head", type=none_or, default=DEFAULT, help="aesthetic head, or none")
    crop.add_argument(
        "--index", type=none_or, default=DEFAULT, help="exemplar bank (build it from train)"
    )
    crop.add_argument("--prompts", help="folder of prompt files (default: the shipped ones)")
    crop.add_argument("--coords", help="coordinate convention of the model (default norm1000)")
    crop.add_argument(
        "--pixel-budget", help="qwen2.5-vl, qwen3-vl or NAME:MAX_PIXELS (default: none)"
    )
    crop.add_argument(
        "--compose", action="store_true", help="a composition step before the first round"
    )
    crop.add_argument(
        "--top-k",
        type=positive_int,
        help="also keep the K best diverse crops and report iou_top_k, the best IoU among them",
    )
    crop.add_argument(
        "--score-weights",
        metavar="TERMS",
        help="score terms' weights, e.g. aesthetic=1,area=1,knowledge=1 (default: the paper's)",
    )
    crop.add_argument("--api-key", help="server API key (default: $CROPPER_API_KEY)")
    crop.add_argument("--limit", type=int, help="crop only the split's first N photos")
    crop.add_argument("--gallery", type=int, default=6, help="photos in each gallery")
    crop.add_argument("--no-progress", action="store_true", help="no progress bar")
    crop.set_defaults(run=run_crop)


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """``--dataset --root --split --images``: the ground truth to measure against."""
    from cropper.data.datasets import DATASETS

    parser.add_argument("--dataset", required=True, choices=list(DATASETS), help="the benchmark")
    parser.add_argument(
        "--root", required=True, help="the dataset's folder (the .jsonl file for jsonl)"
    )
    parser.add_argument("--split", help="test, train, ... (default: all)")
    parser.add_argument(
        "--images", help="where the photos are, if not where the dataset keeps them"
    )


def run_crop(args: argparse.Namespace) -> int:
    from cropper.evaluation.run import evaluate_crops

    method, settings = _method(args)
    try:
        report = evaluate_crops(
            method,
            args.dataset,
            args.root,
            args.split,
            args.out,
            task=args.task,
            images=args.images,
            limit=args.limit,
            progress=not args.no_progress,
            gallery=args.gallery,
            settings=settings,
            ranking=args.ranking,
        )
    finally:
        method.close()
    for failure in report["failed"]:
        print(f"cropper: could not crop {failure}", file=sys.stderr)
    measured = report["metrics"]
    print(
        f"{args.dataset} ({args.split or 'all'}): {report['measured']} of {report['photos']} "
        f"photos measured, report in {args.out}",
        file=sys.stderr,
    )
    print("  ".join(f"{k} {v:.4f}" for k, v in measured.items()), file=sys.stderr)
    ranking = (report.get("protocol") or {}).get("ranking")
    if ranking:
        from cropper.evaluation.protocol import RANKINGS

        print(f"ranking: {ranking}, {RANKINGS[ranking]}", file=sys.stderr)
    counts = {k: report.get(k, 0) for k in ("photos", "measured", "cropped_now", "resumed")}
    counts["fell_back"] = report.get("fell_back", 0)
    if counts["fell_back"]:
        print(
            f"cropper: {counts['fell_back']} of {report['measured']} photos fell back "
            "(no valid box from the VLM); their lines in predictions.jsonl say why",
            file=sys.stderr,
        )
    print(json.dumps({**measured, **counts, "failed": len(report["failed"])}), flush=True)
    return 1 if report["failed"] else 0


def _method(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The cropper or baseline the options name, and how the report describes it."""
    from cropper.agent.components import DEFAULT

    def shown(value: Any) -> Any:
        return "default" if value is DEFAULT else value

    if args.baseline:
        from cropper.agent.baselines import make_baseline

        method = make_baseline(args.baseline, clip=args.clip, head=args.head)
        settings = {"method": f"baseline: {args.baseline}"}
        if args.baseline == "head":
            settings |= {"clip": shown(args.clip), "head": shown(args.head)}
        return method, settings
    from cropper.cli.args import cropper_from_args

    method = cropper_from_args(args)
    settings = {
        "method": "cropper",
        "vlm": _without_credentials(shown(args.vlm)),
        "clip": shown(args.clip),
        "head": shown(args.head),
        "index": shown(args.index),
        "prompts": args.prompts or "shipped",
        "score_weights": args.score_weights or "the paper's",
        "config": {k: v for k, v in vars(method.config).items() if k != "select"},
    }
    return method, settings


def _without_credentials(spec: Any) -> Any:
    """A server URL with any ``user:password@`` removed, so no secret reaches the report."""
    if not isinstance(spec, str) or "@" not in spec or "://" not in spec:
        return spec
    scheme, rest = spec.split("://", 1)
    host = rest.split("/", 1)
    return f"{scheme}://{host[0].rsplit('@', 1)[-1]}" + (f"/{host[1]}" if len(host) > 1 else "")


def run_scores(args: argparse.Namespace) -> int:
    from cropper.data.metrics import score_keys
    from cropper.evaluation.predictions import evaluate_scores
    from cropper.evaluation.truth import load_truth

    truths = load_truth(args.dataset, args.root, args.split, images=args.images)
    if args.score_with:
        _score_crops(args)
    result = evaluate_scores(truths, args.predictions)
    rows = [
        ("Acc@5", [f"acc{k}_5" for k in (1, 2, 3, 4)] + ["acc5"]),
        ("Acc@10", [f"acc{k}_10" for k in (1, 2, 3, 4)] + ["acc10"]),
        ("wAcc@5", [f"wacc{k}_5" for k in (1, 2, 3, 4)] + ["wacc5"]),
        ("wAcc@10", [f"wacc{k}_10" for k in (1, 2, 3, 4)] + ["wacc10"]),
    ]
    table = ["          K=1    K=2    K=3    K=4   mean"]
    for name, keys in rows:
        table.append(f"{name:<8}" + "".join(f"{100 * result[key]:7.1f}" for key in keys))
    table.append(f"SRCC {result['srcc']:.3f}   PCC {result['pcc']:.3f}")
    _report(truths.label, args.predictions, result, table, score_keys())
    return 0


def _score_crops(args: argparse.Namespace) -> None:
    from cropper.evaluation.harness import dataset_task, eval_photos
    from cropper.evaluation.score_crops import build_scorer, write_score_predictions
    from cropper.scoring.scorer import Weights

    task = dataset_task(args.dataset, None)
    scorer = build_scorer(
        Weights.parse(args.score_with), task, clip=args.clip, head=args.head, prompts=args.prompts
    )
    photos = eval_photos(args.dataset, args.root, args.split, images=args.images)
    failures = write_score_predictions(
        photos, scorer, task, args.predictions, progress=not args.no_progress
    )
    for failure in failures:
        print(f"cropper: could not score {failure}", file=sys.stderr)


def run_boxes(args: argparse.Namespace) -> int:
    from cropper.evaluation.predictions import evaluate_boxes
    from cropper.evaluation.truth import load_truth

    truths = load_truth(args.dataset, args.root, args.split, images=args.images)
    result = evaluate_boxes(truths, args.predictions)  # truths look under --images already
    table = [f"IoU {result['iou']:.4f}   BDE {result['bde']:.4f}"]
    _report(truths.label, args.predictions, result, table, ["iou", "bde"])
    return 0


def _report(
    label: str, predictions: str, result: dict[str, Any], table: list[str], keys: list[str]
) -> None:
    """Problems and the table on stderr; the metrics and counts as stdout's last line."""
    from cropper.evaluation.predictions import COUNT_KEYS

    err = sys.stderr
    for reason in result["reasons"]:
        print(f"cropper: skipped {reason}", file=err)
    unnamed = result["skipped"] + result["duplicates"] - len(result["reasons"])
    if unnamed > 0:
        print(f"cropper: skipped {unnamed} more lines", file=err)
    if result["missing"]:
        names = result["missing_names"]
        more = result["missing"] - len(names)
        print(
            f"cropper: {result['missing']} photos have no prediction: {', '.join(names)}"
            + (f" and {more} more" if more else ""),
            file=err,
        )
    print(
        f"{label}, {predictions}: {result['photos']} photos measured, {result['missing']} "
        f"without a prediction, {result['skipped']} lines skipped",
        file=err,
    )
    for line in table:
        print(line, file=err)
    print(json.dumps({key: result[key] for key in (*keys, *COUNT_KEYS)}), flush=True)


def run_compare(args: argparse.Namespace) -> int:
    from cropper.core.fileio import write_text
    from cropper.evaluation.compare import compare_runs, markdown

    comparison = compare_runs(args.runs)
    table = markdown(comparison)
    print(table, end="", file=sys.stderr)
    if args.out:
        write_text(args.out, table)
    print(json.dumps(comparison), flush=True)
    return 0
