"""``cropper index build``, ``merge`` and ``info``: exemplar banks from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cropper.cli.args import add_clip_argument, add_group


def add_index_commands(commands: Any) -> None:
    """Register ``index build``, ``merge`` and ``info`` under the main parser's subcommands."""
    actions = add_group(
        commands, "index", "build and inspect exemplar banks", "Build and inspect exemplar banks."
    )

    build = actions.add_parser(
        "build",
        help="build a bank from a dataset or your own crops",
        description="Embed a dataset's photos and save them, with their crops, as a bank.",
    )
    build.add_argument(
        "--dataset",
        required=True,
        help="gaicd, fcdb, sacd, flms, jsonl (a file of your crops), folder "
        "(photos with a sidecar JSON each) or pro (uncropped professional photos, each "
        "its own crop; sidecars of sub-crops optional)",
    )
    build.add_argument("--root", required=True, help="the dataset's folder (or the .jsonl file)")
    build.add_argument("--split", help="train, test, ... (default: all)")
    build.add_argument("--images", help="where the photos are, if not under --root")
    build.add_argument("--out", required=True, help="the bank folder to write")
    add_clip_argument(build, "the bank's manifest records it; the bank is searched with no other")
    build.add_argument(
        "--index-type",
        choices=["auto", "flat", "hnsw"],
        default="auto",
        help="exact search, HNSW, or auto: HNSW for large banks",
    )
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument(
        "--workers", type=int, default=None, help="processes that decode photos (default: up to 4)"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument(
        "--wait",
        action="store_true",
        help="when another build is writing the same --out bank, wait for it instead of stopping",
    )
    build.set_defaults(run=run_build)

    merge = actions.add_parser(
        "merge",
        help="merge banks built with one embedder into one bank",
        description="Write a bank that serves the exemplars of every bank given "
        "(e.g. a professional bank and a benchmark's); the banks are left as they are.",
    )
    merge.add_argument("banks", nargs="+", metavar="BANK", help="the bank folders to merge (2+)")
    merge.add_argument("--out", required=True, help="the merged bank folder to write")
    merge.add_argument(
        "--index-type",
        choices=["auto", "flat", "hnsw"],
        default="auto",
        help="exact search, HNSW, or auto: HNSW for large banks",
    )
    merge.add_argument("--no-progress", action="store_true", help="no progress bar")
    merge.set_defaults(run=run_merge)

    info = actions.add_parser("info", help="print a bank's manifest as JSON")
    info.add_argument("bank", help="the bank folder")
    info.set_defaults(run=run_info)


def _refuse_overwriting_the_input(root: str, out: str) -> None:
    """A bank's own files must not replace the annotations it is built from."""
    from cropper.core.errors import ConfigError
    from retrieval.index import EXEMPLARS_FILE, INDEX_FILE, MANIFEST_FILE

    written = {(Path(out) / name).resolve() for name in (INDEX_FILE, EXEMPLARS_FILE, MANIFEST_FILE)}
    if Path(root).expanduser().resolve() in written:
        raise ConfigError(
            f"--out {out} would overwrite the input {root} with the bank's own file; "
            "choose another --out folder"
        )


def run_build(args: argparse.Namespace) -> int:
    from cropper.data.datasets import load_dataset
    from retrieval.embedder import load_embedder
    from retrieval.index import ExemplarIndex, bank_lock

    _refuse_overwriting_the_input(args.root, args.out)
    exemplars = load_dataset(args.dataset, args.root, args.split, images=args.images)
    # One build a bank: a second is refused (or waits) before it loads the embedder.
    with bank_lock(args.out, f"cropper index build --out {args.out}", wait=args.wait):
        embedder = load_embedder(args.clip, batch_size=args.batch_size)
        start = time.perf_counter()
        options: dict[str, Any] = {"index_type": args.index_type}
        if args.workers is not None:
            options["num_workers"] = args.workers
        bank = ExemplarIndex.build(
            exemplars,
            embedder,
            args.out,
            batch_size=args.batch_size,
            dataset=args.dataset,
            split=args.split,
            progress=not args.no_progress,
            **options,
        )
    seconds = time.perf_counter() - start
    summary = {
        "bank": str(args.out),
        "count": len(bank),
        # What the dataset's loader left out (bad lines, missing photos), then the build.
        "skipped": getattr(exemplars, "skipped", 0) + len(exemplars) - len(bank),
        "seconds": round(seconds, 2),
        "photos_per_s": round(len(bank) / seconds, 2) if seconds > 0 else None,
        **{k: v for k, v in bank.manifest.items() if k.startswith(("index", "recall"))},
    }
    print(json.dumps(summary))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from retrieval.index import ExemplarIndex
    from retrieval.merge import merge_banks

    out = merge_banks(
        args.banks, args.out, index_type=args.index_type, progress=not args.no_progress
    )
    manifest = ExemplarIndex.load(out).manifest  # checks the merged bank reads back
    summary = {
        "bank": str(args.out),
        "count": manifest["count"],
        "sources": manifest["sources"],
        **{k: v for k, v in manifest.items() if k.startswith(("index", "recall"))},
    }
    print(json.dumps(summary))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from retrieval.index import ExemplarIndex

    bank = ExemplarIndex.load(args.bank)  # checks the files agree before printing
    print(json.dumps(bank.manifest, indent=2))
    return 0
