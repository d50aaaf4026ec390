"""``cropper train-head``: train the aesthetic head on a dataset's rated crops.

::

    cropper train-head --dataset gaicd --root ~/data/GAICD --out heads/gaicd.safetensors

It embeds every rated crop (cached beside ``--out``), trains the head (see
:mod:`cropper.data.training`), prints a summary to stderr and a JSON object (the validation
metrics and the files written) as stdout's last line, and saves the head with its card,
which ``cropper crop --head`` and ``Cropper(head=...)`` load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cropper.cli.args import add_clip_argument
from cropper.core.errors import ConfigError

#: Datasets with their own train and test splits: train on one, validate on the other.
SPLITS = {"gaicd": ("train", "test")}
#: Datasets whose crops carry no MOS, refused before their photos are looked for.
UNRATED = {"fcdb": "FCDB has one ground-truth crop a photo and no MOS"}


def add_train_head_command(commands: Any) -> None:
    """Register ``train-head`` under the main parser's subcommands."""
    from cropper.data.training import TrainConfig

    defaults = TrainConfig()
    parser = commands.add_parser(
        "train-head",
        help="train the aesthetic head on a dataset's rated crops",
        description="Train the aesthetic head on CLIP embeddings of a dataset's crops to "
        "predict their MOS; report validation SRCC, PCC and Acc5; save it as safetensors "
        "with a JSON card.",
    )
    parser.add_argument(
        "--dataset", required=True, help="gaicd, or jsonl / folder of your own rated crops"
    )
    parser.add_argument("--root", required=True, help="the dataset's folder (or the .jsonl file)")
    parser.add_argument("--images", help="where the photos are, if not under --root")
    parser.add_argument("--out", required=True, help="the head to write, a .safetensors file")
    add_clip_argument(parser, "the head reads it; its card records it, and it runs on no other")
    parser.add_argument(
        "--split", help="the split to train on (default: train where the dataset has one)"
    )
    parser.add_argument(
        "--val-split",
        help="the split to validate on (default: test where the dataset has one); "
        "none: hold out --val-fraction of the photos",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the photos held out for validation without a validation split (default 0.1)",
    )
    parser.add_argument(
        "--cache", help="folder for the crop embeddings (default: <out stem>.cache beside --out)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help=f"training epochs, at most (default {defaults.epochs}; it stops early when the "
        "validation SRCC stops improving)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=defaults.lr,
        help=f"Adam's learning rate (default {defaults.lr})",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=defaults.hidden,
        help=f"the MLP's hidden width (default {defaults.hidden})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="crops per CLIP batch (default 64)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="weights, photo order, held-out photos"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes that decode photos (default: up to 4)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train_head)


def run_train_head(args: argparse.Namespace) -> int:
    from cropper.data.crop_embeddings import embed_crops
    from cropper.data.datasets import load_dataset
    from cropper.data.training import TrainConfig, holdout, resolve_device, train_head
    from cropper.scoring.head import save_head
    from retrieval.embedder import load_embedder

    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"--out {args.out}: the head is saved as safetensors; name a .safetensors"
        )
    if args.dataset in UNRATED:
        raise ConfigError(
            f"--dataset {args.dataset}: {UNRATED[args.dataset]}, and training the head needs "
            "each crop's MOS: use gaicd or your own rated crops (jsonl with scores)"
        )
    # Every setting is checked before the slow work starts.
    config = TrainConfig(
        epochs=args.epochs, lr=args.lr, hidden=args.hidden, seed=args.seed, device=args.device
    )
    device = str(resolve_device(args.device))
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {args.batch_size}")
    split, val_split = _splits(args)
    if val_split is None and not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    cache = Path(args.cache).expanduser() if args.cache else out.with_name(f"{out.stem}.cache")

    train_set = load_dataset(args.dataset, args.root, split, images=args.images)
    val_set = (
        load_dataset(args.dataset, args.root, val_split, images=args.images)
        if val_split is not None
        else None
    )
    embedder = load_embedder(args.clip, device=device, batch_size=args.batch_size)
    common = {
        "dataset": args.dataset,
        "root": args.root,
        "num_workers": args.workers,
        "progress": not args.no_progress,
    }
    train_embedded = embed_crops(train_set, embedder, cache, split=split, **common)
    train = train_embedded.crops
    embedded = {"train": train_embedded.embedded}
    if val_set is not None:
        val_embedded = embed_crops(val_set, embedder, cache, split=val_split, **common)
        val = val_embedded.crops
        embedded["val"] = val_embedded.embedded
    else:
        keep, held = holdout(train.photos, args.val_fraction, args.seed)
        train, val = train.subset(keep), train.subset(held)

    result = train_head(train, val, config, embedder=embedder.name)
    data = {
        "dataset": args.dataset,
        "root": str(Path(args.root).expanduser().resolve()),
        "split": split,
        "val_split": val_split,
        "val_fraction": None if val_split is not None else args.val_fraction,
        "skipped_photos": len(train_embedded.failures)
        + (len(val_embedded.failures) if val_set is not None else 0),
    }
    card = out.with_suffix(".json")
    save_head(result.head, out, metadata=result.card(data))
    _summary(result, out, card, embedder.name)
    print(
        json.dumps(
            {
                "out": str(out),
                "card": str(card),
                "srcc": result.metrics["srcc"],
                "pcc": result.metrics["pcc"],
                "acc5": result.metrics["acc5"],
                "metrics": result.metrics,
                "untrained_srcc": result.untrained["srcc"],
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                **result.data,
                "embedded_crops": embedded,
                "cache": str(cache),
                "seconds": round(result.seconds, 2),
            }
        ),
        flush=True,
    )
    return 0


def _splits(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The training and validation splits: as given, else the dataset's own, else none."""
    train_default, val_default = SPLITS.get(args.dataset, (None, None))
    split = args.split if args.split is not None else train_default
    val = args.val_split if args.val_split is not None else val_default
    if val is not None and val.lower() == "none":
        val = None
    if val is not None and val == split:
        raise ConfigError(
            f"--split and --val-split are both {split!r}: validate on other photos, or give "
            "--val-split none to hold out --val-fraction of them"
        )
    return split, val


def _summary(result: Any, out: Path, card: Path, clip: str) -> None:
    """A few human lines on stderr: the data, the best epoch and its metrics, the files."""
    data, metrics = result.data, result.metrics
    lines = [
        f"train-head: {data['train_photos']} training photos ({data['train_crops']} crops), "
        f"{data['val_photos']} validation photos ({data['val_crops']} crops), {clip}, "
        f"{result.device}",
        f"train-head: best epoch {result.best_epoch} of {result.epochs_run} run: validation "
        f"SRCC {metrics['srcc']:.3f}, PCC {metrics['pcc']:.3f}, Acc5 {100 * metrics['acc5']:.1f}, "
        f"Acc10 {100 * metrics['acc10']:.1f} (untrained SRCC {result.untrained['srcc']:.3f}); "
        f"{result.seconds:.1f} s",
        f"train-head: wrote {out} and {card}",
    ]
    for line in lines:
        print(f"cropper: {line}", file=sys.stderr)
