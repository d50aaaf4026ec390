"""What every subcommand shares.

Argument types, the cropper that the model flags name, the hub probe, the demo models,
and writing a line around the progress bar.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from cropper.core.errors import ConfigError

log = logging.getLogger("cropper")


def _number(name: str, convert: Any, accept: Any, what: str) -> Any:
    """An argparse type: ``convert`` the text, refusing what ``accept`` does not take."""

    def check(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            number = None
        if number is None or not accept(number):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
        return number

    check.__name__ = name  # argparse names the type in its messages
    return check


positive_int = _number("positive_int", int, lambda n: n >= 1, "a whole number >= 1")
non_negative_int = _number("non_negative_int", int, lambda n: n >= 0, "a whole number >= 0")
positive_float = _number("positive_float", float, lambda n: 0 < n < float("inf"), "a number > 0")
share = _number("share", float, lambda n: 0 <= n <= 1, "a number from 0 to 1")
jpeg_quality = _number("jpeg_quality", int, lambda n: 1 <= n <= 100, "a whole number from 1 to 100")


def add_group(commands: Any, name: str, help: str, description: str) -> Any:
    """A subcommand that has subcommands of its own (``index``, ``eval``): their parsers."""
    group = commands.add_parser(name, help=help, description=description)
    return group.add_subparsers(dest=f"{name}_command", required=True)


def add_clip_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--clip`` for a command that embeds photos (a bank build, head training)."""
    from cropper.core.defaults import DEFAULT_CLIP
    from retrieval.embedder import SPEC_HELP

    parser.add_argument(
        "--clip",
        default=DEFAULT_CLIP,
        help=f"the embedder (default {DEFAULT_CLIP}): {SPEC_HELP}; {what}",
    )


def none_or(value: str) -> str | None:
    return None if value.lower() == "none" else value


def cropper_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~cropper.agent.loop.Cropper` that the model options of a command name."""
    from cropper.agent.loop import Cropper

    if getattr(args, "demo", False):
        use_demo_models(args)
    else:
        offline_unless_the_hub_answers()
    options = {
        "coords": args.coords,
        "pixel_budget": args.pixel_budget,
        "top_k": getattr(args, "top_k", None),
        "compose": getattr(args, "compose", False),
        "allow_urls": getattr(args, "allow_urls", False),
        "min_side": getattr(args, "min_side", None),
        "top_p": getattr(args, "top_p", None),
        "sampling_top_k": getattr(args, "sampling_top_k", None),
        "max_tokens": getattr(args, "max_tokens", None),
        "exemplars": getattr(args, "exemplars", None),
        "crops": getattr(args, "crops", None),
        "refine_rounds": getattr(args, "rounds", None),
        "samples": getattr(args, "samples", None),
        "temperature": getattr(args, "temperature", None),
        "seed": getattr(args, "seed", None),
    }
    # Unset options keep CropConfig's defaults (by identity: a min_side of 0.0 is set).
    settings = {k: v for k, v in options.items() if v is not None and v is not False and v != ""}
    backend = {
        "timeout": getattr(args, "timeout", None),
        "max_retries": getattr(args, "max_retries", None),
        "structured_outputs": False if getattr(args, "no_structured_outputs", False) else None,
    }
    return Cropper(
        model=getattr(args, "model", None),
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


#: What every JSON line of a --demo run says.
DEMO_NOTE = "--demo: tiny random models; the box is arbitrary"


#: Seconds to wait for the hub to accept a connection before working offline.
HUB_PROBE_SECONDS = 3.0


def offline_unless_the_hub_answers() -> None:
    """Work offline at once when the Hugging Face hub cannot be reached.

    Else every model not in the cache costs a minute of retries before its error. Models
    already cached load as ever; what is missing is named in one message.
    """
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        return
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), HUB_PROBE_SECONDS).close()
    except OSError as exc:
        log.info("the Hugging Face hub (%s) cannot be reached (%s): working offline", host, exc)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def use_demo_models(args: argparse.Namespace) -> None:
    """--demo: the notebooks' tiny random models, built offline once; their boxes are arbitrary."""
    from cropper.agent.components import DEFAULT
    from cropper.testing.demo import demo_models

    given = [f"--{n}" for n in ("vlm", "clip", "head") if getattr(args, n) is not DEFAULT]
    if given:
        raise ConfigError(f"--demo brings its own models: drop {', '.join(given)}")
    models = demo_models()
    args.vlm, args.clip, args.head = models["vlm"], models["clip"], models["head"]
    args.coords = args.coords or models["coords"]
    log.warning(
        "--demo: tiny random models (built in %s): every part of the pipeline runs, but the "
        "boxes are arbitrary; for real crops, see the README's first commands",
        Path(models["vlm"]).parent,
    )


def write_line(line: str, stream: Any) -> None:
    """One line out, through tqdm, so that a progress bar on the terminal stays whole."""
    from tqdm import tqdm

    tqdm.write(line, file=stream)
    stream.flush()
