"""`cropper index build` under concurrent, killed and replaced runs: the bank is exactly right.

One writer a bank (a second is refused, or waits with --wait); a bank whose vectors and
rows come from two builds is refused when loaded; a kill keeps the work of every 64
photos; a replaced photo is embedded again; stale temporary files are cleared; a JSONL
line that would crash the parser is skipped, named by file and line.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.cli.main import main
from cropper.core.errors import ExemplarIndexError
from cropper.core.fileio import FolderLock
from cropper.data.datasets import load_dataset
from cropper.testing.synthetic import synthetic_photo
from retrieval.build import PARTIAL_DIR
from retrieval.exemplars import read_jsonl
from retrieval.index import ExemplarIndex


class Thumbs:
    """A toy embedder: a photo's 2x2 thumbnail, 12-d; counts the photos it embeds."""

    def __init__(self, stop_after: int | None = None):
        self.name, self.dim = "toy-2x2", 12
        self.stop_after = stop_after
        self.photos = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.stop_after is not None and self.photos >= self.stop_after:
            raise KeyboardInterrupt
        self.photos += len(images)
        rows = np.stack([_thumb(im) for im in images])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _thumb(image: Image.Image) -> np.ndarray:
    return (np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32) / 255 - 0.5).ravel()


def _photos(folder: Path, count: int, size: tuple[int, int] = (32, 24), suffix: str = "png"):
    """``count`` distinct photos and the JSONL naming them, in ``folder``."""
    (folder / "photos").mkdir(parents=True)
    rows = []
    for i in range(count):
        synthetic_photo(i, size=size, discs=3).save(folder / "photos" / f"p{i:03d}.{suffix}")
        rows.append({"image": f"photos/p{i:03d}.{suffix}", "crops": [[0, 0, size[0], size[1]]]})
    path = folder / "crops.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(exemplars, out: Path, embedder=None, **options) -> ExemplarIndex:
    options = {"batch_size": 4, "num_workers": 0, "progress": False, **options}
    return ExemplarIndex.build(exemplars, embedder or Thumbs(), out, **options)


def _cli_build(jsonl: Path, out: Path, clip: str, *extra: str) -> int:
    argv = ["index", "build", "--dataset", "jsonl", "--root", str(jsonl), "--out", str(out),
            "--clip", clip, "--no-progress", "--workers", "0", *extra]  # fmt: skip
    return main(argv)


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


# -- 1. one writer a bank, and a bank of two writers is refused -------------------------


def test_a_second_build_into_a_bank_being_built_is_refused_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    jsonl = _photos(tmp_path, 3)
    out = tmp_path / "bank"
    with FolderLock(out, f"cropper index build --out {out}"):
        # Refused before the embedder is loaded: this one does not even exist.
        assert _cli_build(jsonl, out, "local-dir:/nowhere") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{out} is being written by another run (pid {os.getpid()} on " in err[0]
    assert f"cropper index build --out {out}" in err[0] and "--wait" in err[0]
    assert not (out / "manifest.json").exists() and not (out / PARTIAL_DIR).exists()


@pytest.mark.slow
def test_wait_starts_the_build_once_the_holder_is_done(
    tmp_path: Path, tiny_clip: str, caplog: pytest.LogCaptureFixture
) -> None:
    jsonl = _photos(tmp_path, 4)
    out = tmp_path / "bank"
    holder = FolderLock(out, "another build").__enter__()
    done = threading.Timer(1.0, holder.__exit__)
    done.start()
    try:
        with caplog.at_level(logging.WARNING):
            assert _cli_build(jsonl, out, tiny_clip, "--wait") == 0
    finally:
        done.cancel()
        holder.__exit__()
    assert any("waiting for it" in r.getMessage() for r in caplog.records)
    assert len(ExemplarIndex.load(out)) == 4


@pytest.mark.parametrize(
    ("taken", "named"),
    [
        ("index.faiss", "index.faiss"),  # vectors of one build, rows and manifest of the other
        ("exemplars.jsonl", "exemplars.jsonl"),
        ("manifest.json", "exemplars.jsonl"),  # both files disagree with it: rows checked first
    ],
)
def test_a_bank_whose_files_come_from_two_builds_is_refused(
    tmp_path: Path, taken: str, named: str
) -> None:
    # What two unlocked builds of one bank (same count) can leave: each file whole, but
    # the vectors belonging to other photos than the rows say. It loaded before.
    exemplars = read_jsonl(_photos(tmp_path, 6))
    bank, other = tmp_path / "bank", tmp_path / "other"
    _build(exemplars, bank)
    _build(exemplars[::-1], other)
    shutil.copyfile(other / taken, bank / taken)
    with pytest.raises(ExemplarIndexError) as info:
        ExemplarIndex.load(bank)
    message = str(info.value)
    assert message.startswith(f"{bank / named} is not the one the manifest was written with")
    assert "rebuild it with `cropper index build" in message and "\n" not in message


# -- 2. a kill keeps the work of every 64 photos ---------------------------------------

_KILLED_AFTER_80 = """
import os, signal
import numpy as np
from retrieval.exemplars import read_jsonl
from retrieval.index import ExemplarIndex

class Dies:
    name, dim, photos = "toy-2x2", 12, 0
    def embed(self, images):
        if Dies.photos >= 80:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush
        Dies.photos += len(images)
        rows = np.stack([
            np.asarray(im.convert("RGB").resize((2, 2)), np.float32).ravel() / 255 - 0.5
            for im in images
        ])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

# The default chunk size and flush interval: what `cropper index build` uses.
ExemplarIndex.build(read_jsonl({jsonl!r}), Dies(), {out!r}, batch_size=10, num_workers=0,
                    progress=False)
"""


def test_a_killed_build_keeps_the_work_of_every_64_photos(tmp_path: Path) -> None:
    jsonl = _photos(tmp_path, 100)
    out = tmp_path / "bank"
    script = _KILLED_AFTER_80.format(jsonl=str(jsonl), out=str(out))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], timeout=120)
    assert done.returncode == -signal.SIGKILL
    saved = sum(len(np.load(p)) for p in (out / PARTIAL_DIR).glob("chunk-*.npy"))
    assert 0 <= 80 - saved < 64  # 80 embedded when killed: fewer than 64 of them lost
    again = Thumbs()
    bank = _build(read_jsonl(jsonl), out, again, batch_size=10)
    assert again.photos == 100 - saved
    fresh = _build(read_jsonl(jsonl), tmp_path / "fresh", batch_size=10)
    np.testing.assert_allclose(bank.vectors(), fresh.vectors(), atol=1e-6)


def test_a_photo_replaced_in_place_is_embedded_again_not_resumed(tmp_path: Path) -> None:
    exemplars = read_jsonl(_photos(tmp_path, 6))
    out = tmp_path / "bank"
    with pytest.raises(KeyboardInterrupt):
        _build(exemplars, out, Thumbs(stop_after=4), chunk_size=4)  # photos 0-3 saved
    first = Path(exemplars[0].image)
    synthetic_photo(99, size=(32, 24), discs=3).save(first)  # same path, another photo
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock too
    bank = _build(exemplars, out, chunk_size=4)
    fresh = _build(exemplars, tmp_path / "fresh")
    np.testing.assert_allclose(bank.vectors(), fresh.vectors(), atol=1e-6)


# -- 3. JSONL lines that would crash the parser ------------------------------------------

_GOOD = '{"image": "photos/p000.png", "crops": [[0, 0, 32, 24]]}'
_HUGE = "9" * 400


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"image": "photos/p000.png", "crops": ' + "[" * 100_000 + "]" * 100_000 + "}",
         "JSON nested too deeply"),
        ('{"image": "photos/p000.png", "crops": [[0, 0, 10, ' + _HUGE + "]]}",
         "a number too large"),
        ('{"image": "photos/p000.png", "crops": [[0, 0, 10, 10]], "scores": [' + _HUGE + "]}",
         "a number too large"),
        ('{"image": "photos/p000.png", "crops": [[0, 0, 10, 10]], "subject": [' + _HUGE + ", 1]}",
         "a number too large"),
        ('{"image": "photos/p000.png", "crops": [[0, 0, 10, 10]], "subject": '
         + "[" * 300 + "]" * 300 + "}", "is neither a pixel point"),
        ('{"image": "photos/p000.png", "crops": ' + "[" * 300 + "]" * 300 + "}",
         "is not [left, top, right, bottom]"),
    ],
    ids=["nested-100000", "huge-crop", "huge-score", "huge-subject", "nested-subject",
         "nested-crops"],
)  # fmt: skip
def test_a_jsonl_line_too_deep_or_with_a_huge_number_is_skipped_naming_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, line: str, reason: str
) -> None:
    _photos(tmp_path, 1)
    jsonl = tmp_path / "crops.jsonl"
    jsonl.write_text(f"{_GOOD}\n{line}\n{_GOOD}\n")
    with caplog.at_level(logging.WARNING):
        exemplars = load_dataset("jsonl", jsonl)
    assert len(exemplars) == 2
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    message = record.getMessage()
    assert message.startswith(f"{jsonl}: skipped 1 of 3 lines: line 2")
    assert reason in message and "\n" not in message and len(message) < 300


# -- 4. temporary files a killed build left -----------------------------------------------

# What cropper.core.fileio.atomic_path names its temporaries: .NAME.<8 random characters>.tmp
_OURS = [".index.faiss.k3j4h5g6.tmp", ".exemplars.jsonl.a1b2c3d4.tmp",
         ".manifest.json.z_9y8x7w.tmp", "sub/.index.faiss.a1b2c3d4.tmp"]  # fmt: skip
_NOT_OURS = [".notes.tmp", "keep.tmp", "sub/.index.faiss.tmp"]


@pytest.mark.slow
def test_a_rerun_removes_the_temporary_files_a_killed_build_left(
    tmp_path: Path, tiny_clip: str
) -> None:
    jsonl = _photos(tmp_path, 3)
    out = tmp_path / "bank"
    (out / "sub").mkdir(parents=True)
    for name in [*_OURS, *_NOT_OURS]:
        (out / name).write_bytes(b"cut short by kill -9")
    assert _cli_build(jsonl, out, tiny_clip) == 0
    assert _temporaries(out) == sorted(_NOT_OURS)  # only the bank's own are ours to remove
    assert len(ExemplarIndex.load(out)) == 3


# -- the kill loop ------------------------------------------------------------------------

# Importing torch and open_clip takes ~7 s of a 2-core CI machine, the build itself ~1 s:
# ten fresh interpreters would spend the test importing. So one process imports once, and
# forks a child per run that executes `python -m cropper.cli ARGS` (runpy, as -m does);
# the test SIGKILLs the child. A run's stderr goes to a log named in the request.
_ZYGOTE = """
import json, os, runpy, sys
import faiss, open_clip, torch, torch.utils.data
import cropper.cli.index, retrieval.embedder, retrieval.index  # cropper.cli is run, not imported

for request in sys.stdin:
    argv, log = json.loads(request)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.argv = ["cropper", *argv]
            runpy.run_module("cropper.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class _Runs:
    """`python -m cropper.cli ARGS` runs, forked from one process that imported it all."""

    def __init__(self, log: Path):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.log = log
        self.zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env,
        )  # fmt: skip
        self.deadline = threading.Timer(240, self.zygote.kill)  # a hung run fails, not hangs
        self.deadline.start()

    def start(self, argv: list[str]) -> int:
        assert self.zygote.stdin is not None and self.zygote.stdout is not None
        self.zygote.stdin.write(json.dumps([argv, str(self.log)]) + "\n")
        self.zygote.stdin.flush()
        return int(self.zygote.stdout.readline())

    def exit_code(self) -> int:
        assert self.zygote.stdout is not None
        return int(self.zygote.stdout.readline())

    def close(self) -> None:
        self.deadline.cancel()
        self.zygote.kill()
        self.zygote.wait()


@pytest.mark.slow
def test_ten_kills_at_random_moments_then_a_rerun_leave_the_exact_bank(
    tmp_path: Path, tiny_clip: str
) -> None:
    jsonl = _photos(tmp_path, 150, size=(160, 120), suffix="jpg")
    out, clean = tmp_path / "bank", tmp_path / "clean"
    log = tmp_path / "runs.log"
    argv = ["index", "build", "--dataset", "jsonl", "--root", str(jsonl), "--clip", tiny_clip,
            "--batch-size", "8", "--workers", "2", "--no-progress", "--out"]  # fmt: skip
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    runs = _Runs(log)

    def said() -> str:  # for a failure: the seed (to replay the moments) and the runs' stderr
        return f"seed {seed}; the runs said: {log.read_text()[-2000:]}"

    try:
        runs.start([*argv, str(clean)])  # returns once the run is forked, all imported
        began = time.monotonic()
        assert runs.exit_code() == 0, said()
        lasts = min(time.monotonic() - began, 1.0)  # a busy machine's slow run: kill early on
        kills = finished = 0
        while kills < 10:
            pid = runs.start([*argv, str(out)])
            time.sleep(rng.uniform(0, lasts))  # from before the lock to the bank's writing
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it had finished
            code = runs.exit_code()
            kills += code == -signal.SIGKILL
            finished += code == 0
            # Killed or done: never refused, as if a killed run (or its workers) held on.
            assert code in (0, -signal.SIGKILL), f"exit {code}; {said()}"
            assert kills + finished < 30, f"the runs outpace the kills; {said()}"
        runs.start([*argv, str(out)])
        assert runs.exit_code() == 0, said()
    finally:
        runs.close()

    bank, reference = ExemplarIndex.load(out), ExemplarIndex.load(clean)
    assert [ex.image for ex in bank.exemplars] == [ex.image for ex in reference.exemplars]
    assert len(bank) == 150
    vectors, expected = bank.vectors(), reference.vectors()
    apart = np.linalg.norm(expected[:, None] - expected[None], axis=-1) + np.eye(150)
    assert apart.min() > 1e-3  # the photos' vectors tell them apart, far beyond the tolerance
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5, err_msg=f"seed {seed}")
    assert _temporaries(out) == [] and not (out / PARTIAL_DIR).exists(), f"seed {seed}"
