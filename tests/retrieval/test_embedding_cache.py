"""The shared embedding pipeline: items of one row or many, resumed, keyed by their inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.images import load_image
from cropper.testing.synthetic import synthetic_photo
from retrieval.embedding_cache import (
    STATE_FILE,
    ChunkStore,
    Item,
    embed_items,
    fingerprint,
)

SIZE = (64, 48)
CROPS = (Box(0, 0, 1, 1), Box(0.1, 0.1, 0.9, 0.8), Box(0.5, 0.0, 1.0, 0.5))


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32).ravel() / 255 + 0.1


class Toy:
    """A 2x2 thumbnail as the embedding; records the images a call got; stops like Ctrl-C."""

    def __init__(self, name: str = "toy-2x2", stop_after: int | None = None):
        self.name, self.dim = name, 12
        self.stop_after = stop_after
        self.calls: list[int] = []

    def embed(self, images) -> np.ndarray:
        self._count(len(images))
        return np.stack([_thumb(im) for im in images])

    def _count(self, n: int) -> None:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(n)


class ToTensor:
    def __call__(self, image: Image.Image):
        import torch

        return torch.from_numpy(_thumb(image))


class PixelToy(Toy):
    """The same toy with a picklable transform: photos are decoded in DataLoader workers."""

    def __init__(self, **options):
        super().__init__(**options)
        self.transform = ToTensor()

    def embed(self, images) -> np.ndarray:
        raise AssertionError("images should arrive as tensors")

    def embed_pixels(self, pixels) -> np.ndarray:
        self._count(len(pixels))
        return pixels.numpy()


def _items(folder: Path, shapes=(None, 3, 1, 2, None, 3)) -> list[Item]:
    """A photo a shape: None, the whole photo (one row); k, its first k crops (k rows)."""
    items = []
    for i, shape in enumerate(shapes):
        path = folder / f"p{i}.png"
        synthetic_photo(i, size=SIZE, discs=3).save(path)
        items.append(Item(str(path), None if shape is None else CROPS[:shape]))
    return items


def _expected(item: Item) -> np.ndarray:
    image = load_image(item.path)
    images = [image] if item.crops is None else [image.crop(b.to_pixels(SIZE)) for b in item.crops]
    rows = np.stack([_thumb(im) for im in images])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_items_of_one_row_and_of_many_rows(tmp_path: Path) -> None:
    items, embedder = _items(tmp_path), Toy()
    result = embed_items(items, embedder, batch_rows=4, progress=False)
    assert [item.rows for item in items] == [1, 3, 1, 2, 1, 3]
    assert result.offsets.tolist() == [0, 1, 4, 5, 7, 8, 11] and result.rows.shape == (11, 12)
    assert embedder.calls == [4, 4, 3]  # whole items, each batch closed at 4 rows or more
    for position, item in enumerate(items):
        np.testing.assert_allclose(result.of(position), _expected(item), rtol=1e-6)
    assert result.failed == {} and result.resumed == 0 and result.embedded == 11


def test_an_unreadable_photo_is_named_and_its_rows_are_nan(tmp_path: Path) -> None:
    items = _items(tmp_path)
    Path(items[1].path).write_bytes(b"not a png")
    store = ChunkStore.open(tmp_path / "work", fingerprint(Toy(), items), len(items))
    embedder = Toy()
    result = embed_items(items, embedder, store, batch_rows=4, chunk_size=2, progress=False)
    assert list(result.failed) == [1] and items[1].path in result.failed[1]
    assert np.isnan(result.of(1)).all() and np.isfinite(result.of(0)).all()
    assert sum(embedder.calls) == 8 and result.embedded == 8  # the bad photo's 3 crops: none
    # Resumed from the saved chunks, the failure is still named, with its reason.
    again = embed_items(items, Toy(), store, batch_rows=4, progress=False)
    assert again.resumed == 6 and again.embedded == 0 and again.failed == result.failed


@pytest.mark.parametrize("chunk_size", [1, 100])
def test_a_stopped_run_resumes_with_only_the_missing_items(tmp_path: Path, chunk_size) -> None:
    # chunk_size 100: nothing was due to be saved, the stop itself saves the items done.
    items = _items(tmp_path)
    store = ChunkStore.open(tmp_path / "work", fingerprint(Toy(), items), len(items))
    with pytest.raises(KeyboardInterrupt):
        embed_items(
            items, Toy(stop_after=2), store, batch_rows=3, chunk_size=chunk_size, progress=False
        )
    # Batches [0, 1] (4 rows) and [2, 3] (3 rows) were embedded: items 0-3 are saved.
    saved = sorted(p.name for p in store.folder.glob("chunk-*.npy"))
    assert len(saved) == (4 if chunk_size == 1 else 1)
    assert sum(len(np.load(store.folder / name)) for name in saved) == 7

    store = ChunkStore.open(tmp_path / "work", fingerprint(Toy(), items), len(items))
    embedder = Toy()
    resumed = embed_items(items, embedder, store, batch_rows=3, progress=False)
    assert embedder.calls == [4] and resumed.resumed == 4 and resumed.embedded == 4
    fresh = embed_items(items, Toy(), batch_rows=3, progress=False)
    np.testing.assert_array_equal(resumed.rows, fresh.rows)


def test_a_damaged_or_misfit_chunk_is_embedded_again(tmp_path: Path) -> None:
    items = _items(tmp_path)
    key = fingerprint(Toy(), items)
    store = ChunkStore.open(tmp_path / "work", key, len(items))
    embed_items(items, Toy(), store, batch_rows=1, chunk_size=2, progress=False)
    chunks = sorted(store.folder.glob("chunk-*.npy"))
    assert [c.name[6:27] for c in chunks] == [
        "0000000000-0000000002",
        "0000000002-0000000004",
        "0000000004-0000000006",
    ]
    chunks[0].write_bytes(chunks[0].read_bytes()[:-8])  # cut inside the rows
    np.save(chunks[1], np.zeros((2, 12), np.float32))  # items 2-3 have 3 rows, not 2
    (store.folder / ".chunk-x.npy.abcdefgh.tmp").write_bytes(b"half")  # a write cut short
    store = ChunkStore.open(tmp_path / "work", key, len(items))
    assert not list(store.folder.glob("*.tmp"))
    embedder = Toy()
    again = embed_items(items, embedder, store, batch_rows=100, progress=False)
    assert embedder.calls == [4 + 3] and again.resumed == 2
    np.testing.assert_array_equal(again.rows, embed_items(items, Toy(), progress=False).rows)


def test_a_chunk_without_its_rows_is_not_done(tmp_path: Path) -> None:
    # The failures are written first: a kill between the two leaves them without rows.
    items = _items(tmp_path, shapes=(None, None))
    store = ChunkStore.open(tmp_path / "work", fingerprint(Toy(), items), 2)
    (store.folder / "chunk-0000000000-0000000002.failed.json").write_text('[[0, "x: broken"]]')
    result = embed_items(items, Toy(), store, progress=False)
    assert result.resumed == 0 and result.failed == {}
    assert not list(store.folder.glob("*.failed.json"))  # the stale failures are gone


def _replace(path: str, seed: int) -> None:
    synthetic_photo(seed, size=SIZE, discs=3).save(path)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock too


@pytest.mark.parametrize(
    "change",
    [
        lambda items: _replace(items[1].path, 99),  # a photo replaced in place
        lambda items: items.__setitem__(1, Item(items[1].path, CROPS[::-1])),  # its boxes
        lambda items: items.__setitem__(1, Item(items[1].path, (Box(0, 0, 0.5, 0.5),) * 3)),
        lambda items: items.__setitem__(0, Item(items[0].path, CROPS[:1])),  # whole -> a crop
        lambda items: items.reverse(),  # the order
        lambda items: items.pop(),  # one fewer
    ],
    ids=["replaced-photo", "reordered-boxes", "moved-boxes", "whole-to-crop", "order", "fewer"],
)
def test_the_fingerprint_changes_with_any_input_the_rows_depend_on(tmp_path: Path, change) -> None:
    items = _items(tmp_path)
    before = fingerprint(Toy(), items)
    assert fingerprint(Toy(), list(items)) == before  # the same inputs: the same key
    change(items)
    assert fingerprint(Toy(), items) != before


def test_the_fingerprint_covers_the_embedder_and_its_preprocessing(tmp_path: Path) -> None:
    items = _items(tmp_path)
    other = Toy()
    other.preprocess_info = {"resize": 224}
    keys = {fingerprint(e, items) for e in (Toy(), Toy(name="toy-other"), other)}
    assert len(keys) == 3


def test_a_photo_replaced_in_place_is_embedded_again_not_resumed(tmp_path: Path) -> None:
    items = _items(tmp_path)
    folder = tmp_path / "work"
    store = ChunkStore.open(folder, fingerprint(Toy(), items), len(items))
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, Toy(stop_after=2), store, batch_rows=3, chunk_size=1, progress=False)
    _replace(items[1].path, 99)
    key = fingerprint(Toy(), items)
    store = ChunkStore.open(folder, key, len(items))
    assert json.loads((folder / STATE_FILE).read_text())["fingerprint"] == key
    embedder = Toy()
    result = embed_items(items, embedder, store, batch_rows=100, progress=False)
    assert result.resumed == 0 and sum(embedder.calls) == 11  # nothing stale reused
    np.testing.assert_allclose(result.of(1), _expected(items[1]), rtol=1e-6)


def test_workers_decode_items_of_many_rows_and_name_a_bad_photo(tmp_path: Path) -> None:
    items = _items(tmp_path)
    Path(items[3].path).write_bytes(b"not a png")
    here = embed_items(items, Toy(), batch_rows=4, progress=False)
    embedder = PixelToy()
    workers = embed_items(items, embedder, batch_rows=4, num_workers=2, progress=False)
    assert embedder.calls == [4, 2, 3]  # batches [0, 1], [2, 3, 4] (3 failed), [5]
    assert list(workers.failed) == [3] and items[3].path in workers.failed[3]
    assert workers.failed == here.failed
    np.testing.assert_allclose(workers.rows, here.rows, rtol=1e-6)
