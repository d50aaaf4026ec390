"""Building a bank: photos decoded in workers, bad photos skipped, stopped builds resumed."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.errors import ConfigError, ExemplarIndexError
from retrieval.build import PARTIAL_DIR, embed_exemplars
from retrieval.exemplars import read_jsonl
from retrieval.index import ExemplarIndex

BATCH = 2


def _thumb(image: Image.Image) -> np.ndarray:
    """A 2x2 thumbnail as 12 centred values: tells the test photos apart."""
    return (np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32) / 255 - 0.5).ravel()


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class CountingEmbedder:
    """A toy embedder that counts its calls and can be stopped, like Ctrl-C, after some."""

    def __init__(self, name: str = "toy-2x2", stop_after: int | None = None):
        self.name, self.dim = name, 12
        self.stop_after = stop_after
        self.calls: list[int] = []  # photos per call

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        self._count(len(images))
        return _unit(np.stack([_thumb(im) for im in images]))

    def _count(self, photos: int) -> None:
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(photos)


class ToTensor:
    """The toy's preprocessing, picklable; notes each process it runs in under ``folder``."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder

    def __call__(self, image: Image.Image):
        import torch

        if self.folder is not None:
            (self.folder / str(os.getpid())).touch()
        return torch.from_numpy(_thumb(image))


class PixelEmbedder(CountingEmbedder):
    """The same toy with a transform, so photos are decoded in DataLoader workers."""

    def __init__(self, pids: Path | None = None, stop_after: int | None = None):
        super().__init__(stop_after=stop_after)
        self.transform = ToTensor(pids)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise AssertionError("photos should arrive as tensors from the workers")

    def embed_pixels(self, pixels) -> np.ndarray:
        self._count(len(pixels))
        return _unit(pixels.numpy())


def _photo(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Seven distinct photos in the user's JSONL format: four batches of two."""
    (tmp_path / "photos").mkdir()
    rows = []
    for i in range(7):
        _photo(i).save(tmp_path / "photos" / f"p{i}.png")
        rows.append({"image": f"photos/p{i}.png", "crops": [[0, 0, 16, 12]]})
    path = tmp_path / "crops.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _vectors(bank: ExemplarIndex) -> np.ndarray:
    return bank._index.reconstruct_n(0, len(bank))


def _build(source, embedder, out: Path, **options) -> ExemplarIndex:
    """A quiet build from a JSONL path or a list of exemplars, decoding here unless told."""
    options = {"batch_size": BATCH, "num_workers": 0, "progress": False, **options}
    exemplars = read_jsonl(source) if isinstance(source, Path) else source
    return ExemplarIndex.build(exemplars, embedder, out, **options)


# -- decoding in workers -------------------------------------------------------------


@pytest.mark.slow
def test_workers_give_the_same_vectors_as_the_main_process(tiny_clip: str, photos: Path) -> None:
    from retrieval.embedder import ClipEmbedder

    embedder = ClipEmbedder(tiny_clip)
    exemplars = read_jsonl(photos)
    runs = [
        embed_exemplars(
            exemplars,
            embedder,
            photos.parent / f"w{n}",
            batch_size=BATCH,
            num_workers=n,
            progress=False,
        )
        for n in (0, 2)  # the model runs here before the workers fork
    ]
    np.testing.assert_array_equal(runs[1].vectors, runs[0].vectors)
    assert runs[0].exemplars == runs[1].exemplars == exemplars
    # ... and both equal embedding the PIL images directly.
    direct = embedder.embed([Image.open(e.image) for e in exemplars])
    np.testing.assert_allclose(runs[1].vectors, direct, atol=1e-5)


def test_an_unreadable_photo_in_a_worker_is_skipped_with_one_warning(
    photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exemplars = read_jsonl(photos)
    Path(exemplars[2].image).write_bytes(b"not a png")
    Path(exemplars[5].image).unlink()
    (tmp_path / "pids").mkdir()
    embedder = PixelEmbedder(pids=tmp_path / "pids")
    with caplog.at_level(logging.WARNING):
        bank = _build(photos, embedder, tmp_path / "bank", num_workers=2)
    pids = {int(p.name) for p in (tmp_path / "pids").iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids  # decoded in two worker processes
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    message = record.getMessage()
    assert "skipped 2 of 7" in message and "p2.png" in message and "p5.png" in message
    assert [Path(e.image).name for e in bank.exemplars] == [
        "p0.png",
        "p1.png",
        "p3.png",
        "p4.png",
        "p6.png",
    ]
    expected = _unit(np.stack([_thumb(Image.open(e.image)) for e in bank.exemplars]))
    np.testing.assert_allclose(_vectors(bank), expected, atol=1e-6)
    assert sum(embedder.calls) == 5  # the bad photos never reached the model


def test_no_readable_photo_fails_and_leaves_nothing(photos: Path, tmp_path: Path) -> None:
    exemplars = read_jsonl(photos)[:3]
    for ex in exemplars:
        Path(ex.image).write_bytes(b"broken")
    with pytest.raises(ExemplarIndexError, match="skipped 3 of 3.*no bank was built"):
        ExemplarIndex.build(exemplars, PixelEmbedder(), tmp_path / "bank", num_workers=2)
    assert not (tmp_path / "bank").exists()


def test_bad_settings_fail_before_embedding(photos: Path, tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    for options, words in [
        ({"num_workers": -1}, "num_workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"index_type": "ivf"}, "index kind 'ivf'"),
    ]:
        with pytest.raises(ConfigError, match=words):
            _build(photos, embedder, tmp_path / "bank", **options)
    assert embedder.calls == []


def test_no_progress_bar_when_not_a_terminal(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _build(photos, CountingEmbedder(), tmp_path / "bank", progress=True)
    assert capsys.readouterr().err == ""


# -- stopping and resuming -------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [BATCH, 100])
def test_a_stopped_build_resumes_where_it_left_off(
    photos: Path, tmp_path: Path, chunk_size: int
) -> None:
    # chunk_size 100: nothing was due to be saved, the stop itself saves the batches done.
    out = tmp_path / "bank"
    stopped = CountingEmbedder(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        _build(photos, stopped, out, chunk_size=chunk_size)
    assert stopped.calls == [2, 2]
    assert (out / PARTIAL_DIR).is_dir()
    with pytest.raises(ExemplarIndexError, match="stopped before it finished.*resume"):
        ExemplarIndex.load(out)

    resumed = CountingEmbedder()
    bank = _build(photos, resumed, out, chunk_size=chunk_size)
    assert resumed.calls == [2, 1]  # photos 4-5 and 6 only
    assert not (out / PARTIAL_DIR).exists()

    fresh = _build(photos, CountingEmbedder(), tmp_path / "fresh")
    assert bank.exemplars == fresh.exemplars
    np.testing.assert_array_equal(_vectors(bank), _vectors(fresh))
    assert np.array_equal(_vectors(ExemplarIndex.load(out)), _vectors(fresh))


def test_a_stop_with_workers_ends_them_and_resumes_with_another_batch_size(
    photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bank"
    with pytest.raises(KeyboardInterrupt) as info:
        _build(photos, PixelEmbedder(stop_after=2), out, num_workers=2, chunk_size=BATCH)
    # The traceback (kept here as a notebook keeps it) must not keep the workers alive.
    assert info.traceback and multiprocessing.active_children() == []
    again = PixelEmbedder()
    bank = _build(photos, again, out, num_workers=2, batch_size=3)
    assert again.calls == [3]  # photos 4-6, in one batch of the new size
    fresh = _build(photos, CountingEmbedder(), tmp_path / "fresh")
    np.testing.assert_allclose(_vectors(bank), _vectors(fresh), atol=1e-6)


def test_a_resumed_build_still_reports_photos_skipped_before_the_stop(
    photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exemplars = read_jsonl(photos)
    Path(exemplars[1].image).write_bytes(b"broken")
    with pytest.raises(KeyboardInterrupt):
        _build(exemplars, CountingEmbedder(stop_after=2), tmp_path / "bank", chunk_size=BATCH)
    assert "run it again with the same inputs to resume" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bank = _build(exemplars, CountingEmbedder(), tmp_path / "bank", chunk_size=BATCH)
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "skipped 1 of 7" in record.getMessage() and "p1.png" in record.getMessage()
    assert len(bank) == 6


@pytest.mark.parametrize(
    "change",
    [
        lambda exemplars, name: (exemplars[::-1], name),  # the photos' order
        lambda exemplars, name: (exemplars[:-1], name),  # one photo fewer
        lambda exemplars, name: (exemplars, "toy-other"),  # another embedder
    ],
)
def test_changed_inputs_start_over(photos: Path, tmp_path: Path, change) -> None:
    exemplars = read_jsonl(photos)
    with pytest.raises(KeyboardInterrupt):
        _build(exemplars, CountingEmbedder(stop_after=2), tmp_path / "bank", chunk_size=BATCH)
    changed, name = change(exemplars, "toy-2x2")
    again = CountingEmbedder(name=name)
    bank = _build(changed, again, tmp_path / "bank")
    assert sum(again.calls) == len(changed)  # nothing reused
    assert bank.exemplars == tuple(changed) and bank.embedder_name == name
    fresh = _build(changed, CountingEmbedder(name=name), tmp_path / "fresh")
    np.testing.assert_array_equal(_vectors(bank), _vectors(fresh))


def test_a_damaged_chunk_is_embedded_again(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    with pytest.raises(KeyboardInterrupt):
        _build(photos, CountingEmbedder(stop_after=3), out, chunk_size=BATCH)
    chunks = sorted((out / PARTIAL_DIR).glob("chunk-*.npy"))
    assert len(chunks) == 3
    chunks[1].write_bytes(chunks[1].read_bytes()[:-20])  # cut inside the rows
    (out / PARTIAL_DIR / ".chunk-x.npy.abc.tmp").write_bytes(b"half")  # a write cut short
    again = CountingEmbedder()
    bank = _build(photos, again, out, chunk_size=BATCH)
    assert again.calls == [2, 1]  # photos 2-3 again, then 6
    fresh = _build(photos, CountingEmbedder(), tmp_path / "fresh")
    np.testing.assert_array_equal(_vectors(bank), _vectors(fresh))


_KILLED_BUILD = """
import os, signal
import numpy as np
from retrieval.exemplars import read_jsonl
from retrieval.index import ExemplarIndex

class Dies:
    name, dim, calls = "toy-2x2", 12, 0
    def embed(self, images):
        if Dies.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush
        Dies.calls += 1
        rows = np.stack([
            np.asarray(im.convert("RGB").resize((2, 2)), np.float32).ravel() / 255 - 0.5
            for im in images
        ])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

ExemplarIndex.build(read_jsonl({jsonl!r}), Dies(), {out!r}, batch_size=2, chunk_size=2,
                    num_workers=0, progress=False)
"""


def test_a_killed_build_resumes(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "bank"
    script = _KILLED_BUILD.format(jsonl=str(photos), out=str(out))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], timeout=120)
    assert done.returncode == -9
    assert not (out / "manifest.json").exists()
    again = CountingEmbedder()
    bank = _build(photos, again, out, chunk_size=BATCH)
    assert again.calls == [1]  # three batches were saved before the kill
    fresh = _build(photos, CountingEmbedder(), tmp_path / "fresh")
    np.testing.assert_allclose(_vectors(bank), _vectors(fresh), atol=1e-6)
