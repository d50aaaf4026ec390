"""``cropper``: the parser of every subcommand, quiet logging, and the entry point."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from cropper.cli.args import write_line
from cropper.cli.crop import add_crop_command
from cropper.cli.eval import add_eval_commands
from cropper.cli.index import add_index_commands
from cropper.cli.train_head import add_train_head_command
from cropper.core.errors import CropperError


def _version() -> str:
    """The installed distribution's version (the package face, above the CLI, is not read)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cropper")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cropper", description="Crop photos well with a vision-language model."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--version", action="version", version=f"cropper {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    add_crop_command(commands)
    add_index_commands(commands)
    add_eval_commands(commands)
    add_train_head_command(commands)
    return parser


#: Loggers whose lines are cropper's own.
_OURS = ("cropper", "retrieval")


class _Console(logging.Handler):
    """Log lines on stderr, through tqdm so that a progress bar stays whole.

    cropper's own lines read ``cropper: WARNING: ...``; other libraries' are shown only
    with ``-v`` (warnings) or ``-vv`` (all), under their own names, and not at all when
    their library prints them itself (huggingface_hub has its own handler).
    """

    def __init__(self, verbose: int):
        super().__init__()
        self.ours = logging.WARNING - 10 * verbose
        self.theirs = logging.CRITICAL if verbose == 0 else logging.WARNING - 10 * (verbose - 1)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _OURS:
            return record.levelno >= self.ours
        return record.levelno >= self.theirs and not _prints_itself(record.name)

    def format(self, record: logging.LogRecord) -> str:
        who = "cropper" if record.name.split(".")[0] in _OURS else record.name
        return f"{who}: {record.levelname}: {record.getMessage()}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record), sys.stderr)
        except Exception:  # a logging failure must not end the run
            self.handleError(record)


def _prints_itself(name: str) -> bool:
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None and logger.name != "root":
        if logger.handlers:
            return True
        logger = logger.parent
    return False


def _configure_logging(verbose: int) -> None:
    """Quiet by default, detailed with -v; left alone where logging is set up already."""
    root = logging.getLogger()
    if any(not isinstance(h, _Console) for h in root.handlers):
        return  # an application or a test harness configured logging: its choice stands
    console = _Console(verbose)
    root.handlers[:] = [console]
    root.setLevel(min(console.ours, console.theirs))
    if verbose == 0:
        # Read when these libraries load: their own warnings and loading bars only with -v.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 is printed escaped rather than stopping the run.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader went away (cropper crop ... | head -1): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CropperError as exc:
        print(f"cropper: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cropper: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
