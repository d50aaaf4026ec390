"""Crop embeddings for head training: batched across photos, cached, resumable, robust."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError
from cropper.data.crop_embeddings import RatedCrops, embed_crops, rated_only
from cropper.testing.synthetic import synthetic_photo
from retrieval.exemplars import Exemplar

SIZE = (64, 48)
CROPS = (Box(0, 0, 1, 1), Box(0.1, 0.1, 0.9, 0.8), Box(0.5, 0.0, 1.0, 0.5), Box(0, 0.5, 0.5, 1))


class ToyEmbedder:
    """A crop's 2x2 thumbnail as its embedding; records how many crops each call got."""

    name = "toy-2x2"
    dim = 12

    def __init__(self, batch_size: int = 6, stop_after: int | None = None):
        self.batch_size = batch_size
        self.calls: list[int] = []
        self.stop_after = stop_after

    def embed(self, images):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(len(images))
        rows = [np.asarray(im.resize((2, 2)), dtype=np.float32).reshape(-1) + 1 for im in images]
        return np.stack(rows)


def photos(folder: Path, count: int = 5, scores: bool = True) -> list[Exemplar]:
    out = []
    for i in range(count):
        path = folder / f"p{i}.jpg"
        synthetic_photo(i, size=SIZE, discs=3).save(path)
        mos = tuple(float(k + i) for k in range(len(CROPS))) if scores else None
        out.append(Exemplar(str(path), SIZE, CROPS, mos))
    return out


def truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not


def test_every_crop_embedded_in_batches_that_span_photos(tmp_path):
    exemplars, embedder = photos(tmp_path), ToyEmbedder(batch_size=6)
    result = embed_crops(exemplars, embedder, progress=False)
    crops = result.crops
    assert crops.photos == 5 and crops.counts.tolist() == [4] * 5 and result.embedded == 20
    assert sum(embedder.calls) == 20
    assert all(n >= 6 for n in embedder.calls[:-1])  # 4-crop photos, pooled to fill batches
    np.testing.assert_allclose(np.linalg.norm(crops.vectors, axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(crops.mos[:4], [0, 1, 2, 3])
    assert crops.names == tuple(ex.image for ex in exemplars)
    # Row 1 of photo 2 is that photo's second crop, as the embedder sees it alone.
    from cropper.core.images import load_image

    image = load_image(exemplars[2].image)
    alone = ToyEmbedder().embed([image.crop(CROPS[1].to_pixels(image.size))])[0]
    np.testing.assert_allclose(crops.vectors[9], alone / np.linalg.norm(alone), rtol=1e-5)


def test_second_run_reads_the_cache_and_embeds_nothing(tmp_path):
    exemplars, cache = photos(tmp_path), tmp_path / "cache"
    first = embed_crops(exemplars, ToyEmbedder(), cache, dataset="mine", progress=False)
    manifest = json.loads(first.cache.with_suffix(".json").read_text())
    assert first.cache.name.startswith("mine-all-") and manifest["crops"] == 20
    assert manifest["embedder"] == "toy-2x2" and manifest["failed"] == {}
    assert not list(cache.glob("*.part"))

    embedder = ToyEmbedder()
    again = embed_crops(exemplars, embedder, cache, dataset="mine", progress=False)
    assert embedder.calls == [] and again.embedded == 0
    np.testing.assert_array_equal(again.crops.vectors, first.crops.vectors)


@pytest.mark.parametrize("change", ["crops", "photo", "split"])
def test_changed_inputs_embed_again(tmp_path, change):
    exemplars, cache = photos(tmp_path), tmp_path / "cache"
    embed_crops(exemplars, ToyEmbedder(), cache, progress=False)
    split = None
    if change == "crops":
        exemplars[0] = Exemplar(exemplars[0].image, SIZE, CROPS[:3], (1.0, 2.0, 3.0))
    elif change == "photo":
        synthetic_photo(99, size=SIZE).save(exemplars[1].image)
        os.utime(exemplars[1].image, ns=(1, 1))  # a different file, whatever the clock says
    else:
        split = "test"
    embedder = ToyEmbedder()
    embed_crops(exemplars, embedder, cache, split=split, progress=False)
    assert sum(embedder.calls) > 0


def test_scores_are_not_part_of_the_key(tmp_path):
    exemplars, cache = photos(tmp_path), tmp_path / "cache"
    embed_crops(exemplars, ToyEmbedder(), cache, progress=False)
    rescored = [Exemplar(ex.image, ex.size, ex.crops, (9, 8, 7, 6)) for ex in exemplars]
    embedder = ToyEmbedder()
    result = embed_crops(rescored, embedder, cache, progress=False)
    assert embedder.calls == [] and result.crops.mos[:4].tolist() == [9, 8, 7, 6]


def test_a_stopped_run_resumes_where_it_stopped(tmp_path):
    exemplars, cache = photos(tmp_path, count=6), tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):  # chunk_size 1: a chunk saved after every photo
        embed_crops(
            exemplars, ToyEmbedder(batch_size=4, stop_after=3), cache, chunk_size=1, progress=False
        )
    assert len(list(cache.glob("*.part/chunk-*.npy"))) == 3

    embedder = ToyEmbedder(batch_size=4)
    resumed = embed_crops(exemplars, embedder, cache, chunk_size=1, progress=False)
    assert sum(embedder.calls) == 12 and resumed.embedded == 12  # the last 3 photos only
    fresh = embed_crops(exemplars, ToyEmbedder(), progress=False)
    np.testing.assert_allclose(resumed.crops.vectors, fresh.crops.vectors, rtol=1e-6)


def test_unreadable_photo_is_skipped_with_one_warning(tmp_path, caplog):
    exemplars, cache = photos(tmp_path), tmp_path / "cache"
    truncate(exemplars[1].image)
    with caplog.at_level(logging.WARNING):
        result = embed_crops(exemplars, ToyEmbedder(), cache, progress=False)
    assert result.crops.photos == 4 and exemplars[1].image not in result.crops.names
    assert len(result.failures) == 1 and "truncated" in result.failures[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "p1.jpg" in warnings[0] and "1 of 5" in warnings[0]
    # The cache remembers it: skipped again, and said again, without embedding.
    caplog.clear()
    embedder = ToyEmbedder()
    with caplog.at_level(logging.WARNING):
        again = embed_crops(exemplars, embedder, cache, progress=False)
    assert embedder.calls == [] and again.failures == result.failures
    assert sum("p1.jpg" in r.getMessage() for r in caplog.records) == 1


def test_no_readable_photo_is_an_error_and_caches_nothing(tmp_path):
    exemplars, cache = photos(tmp_path, count=2), tmp_path / "cache"
    for ex in exemplars:
        truncate(ex.image)
    with pytest.raises(ConfigError, match="none of the 2 photos could be read"):
        embed_crops(exemplars, ToyEmbedder(), cache, progress=False)
    assert not list(cache.glob("*.json"))


def test_damaged_cache_is_embedded_again(tmp_path, caplog):
    exemplars, cache = photos(tmp_path, count=2), tmp_path / "cache"
    first = embed_crops(exemplars, ToyEmbedder(), cache, progress=False)
    first.cache.write_bytes(b"not numpy")
    embedder = ToyEmbedder()
    with caplog.at_level(logging.WARNING):
        embed_crops(exemplars, embedder, cache, progress=False)
    assert sum(embedder.calls) == 8 and "damaged" in caplog.text


def test_rated_only_needs_scores(tmp_path, caplog):
    rated, unrated = photos(tmp_path, count=2), photos(tmp_path, count=1, scores=False)
    with pytest.raises(ConfigError, match="MOS"):
        rated_only(unrated, "fcdb-like")
    with caplog.at_level(logging.WARNING):
        kept = rated_only([*unrated, rated[1]], "mixed")
    assert kept == [rated[1]] and "skipped 1 of 2" in caplog.text


@pytest.mark.parametrize(
    ("vectors", "mos", "counts", "names"),
    [
        (np.zeros((3, 2)), [1, 2], [3], ["a"]),  # a MOS short
        (np.zeros((3, 2)), [1, 2, 3], [2], ["a"]),  # counts short
        (np.zeros((3, 2)), [1, 2, 3], [3], ["a", "b"]),  # a name too many
        (np.zeros((3, 2)), [1, 2, 3], [3, 0], ["a", "b"]),  # a photo without crops
        (np.full((1, 2), np.nan), [1], [1], ["a"]),  # NaN
        (np.zeros(3), [1, 2, 3], [3], ["a"]),  # not a matrix
    ],
)
def test_rated_crops_must_agree(vectors, mos, counts, names):
    with pytest.raises(ConfigError, match="RatedCrops"):
        RatedCrops(vectors, mos, counts, names)


@pytest.mark.slow
def test_clip_embedder_in_worker_processes_matches_the_main_process(tmp_path, tiny_clip):
    from cropper.core.images import load_image
    from retrieval.embedder import ClipEmbedder

    exemplars, embedder = photos(tmp_path, count=3), ClipEmbedder(tiny_clip, batch_size=5)
    here = embed_crops(exemplars, embedder, num_workers=0, progress=False)
    workers = embed_crops(exemplars, embedder, num_workers=2, progress=False)
    np.testing.assert_allclose(here.crops.vectors, workers.crops.vectors, atol=1e-5)
    image = load_image(exemplars[1].image)
    alone = embedder.embed([image.crop(CROPS[2].to_pixels(SIZE))])[0]
    np.testing.assert_allclose(here.crops.vectors[6], alone, atol=1e-5)
