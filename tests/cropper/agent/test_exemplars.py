from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

import cropper.agent.exemplars as exemplars_module
from cropper.agent.exemplars import ExemplarSource
from cropper.core.boxes import Box


@dataclass
class Hit:
    image: str
    size: tuple[int, int]
    crops: tuple[Box, ...]
    scores: tuple[float, ...] | None
    subjects: tuple | None
    similarity: float


class Index:
    def __init__(self, hits):
        self.hits = hits

    def search(self, embedding, k):
        return self.hits[:k]


def test_exemplar_photos_are_decoded_once_and_sized_to_the_budget(tmp_path, monkeypatch):
    hits = []
    for i in range(3):
        path = tmp_path / f"e{i}.jpg"
        Image.new("RGB", (900, 600)).save(path)
        hits.append(
            Hit(
                str(path),
                (900, 600),
                (Box(0, 0, 0.5, 0.5), Box(0.1, 0.1, 1, 1)),
                (2.0, 4.0),
                None,
                0.9 - i / 10,
            )
        )
    loads = []
    real_load = exemplars_module.load_image
    monkeypatch.setattr(exemplars_module, "load_image", lambda p: loads.append(p) or real_load(p))
    source = ExemplarSource(Index(hits))
    for _ in range(3):  # three queries (or rounds) meet the same exemplars
        got, _ = source.retrieve(np.zeros(4), "free", count=3, crops_per_exemplar=1, side=300)
    assert len(loads) == 3
    assert [e.photo.size for e in got] == [(300, 200)] * 3
    assert [c.score for c in got[0].crops] == [4.0]  # free-form: the top crop by MOS
    source.retrieve(np.zeros(4), "free", count=3, crops_per_exemplar=1, side=200)
    assert len(loads) == 6  # another budget is another entry


def test_a_missing_exemplar_photo_is_skipped_with_one_warning(tmp_path, caplog):
    path = tmp_path / "ok.jpg"
    Image.new("RGB", (100, 100)).save(path)
    hits = [
        Hit(str(tmp_path / "gone.jpg"), (10, 10), (Box.whole(),), None, None, 0.9),
        Hit(str(path), (100, 100), (Box.whole(),), None, None, 0.8),
    ]
    source = ExemplarSource(Index(hits))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            got, _ = source.retrieve(np.zeros(4), "free", count=2, crops_per_exemplar=5, side=64)
    assert [e.photo.key for e in got] == [f"{path}@64"]
    assert sum("gone.jpg" in r.message for r in caplog.records) == 1


def test_a_pixel_budget_sizes_exemplars_to_the_models_multiples(tmp_path):
    from cropper.agent.sizing import QWEN2_5_VL

    path = tmp_path / "e.jpg"
    Image.new("RGB", (900, 600)).save(path)
    hits = [Hit(str(path), (900, 600), (Box(0, 0, 0.5, 0.5),), (3.0,), None, 0.9)]
    source = ExemplarSource(Index(hits))
    plain, _ = source.retrieve(np.zeros(4), "free", count=1, crops_per_exemplar=1, side=448)
    sized, _ = source.retrieve(
        np.zeros(4), "free", count=1, crops_per_exemplar=1, side=448, budget=QWEN2_5_VL
    )
    assert plain[0].photo.size == (448, 299)
    w, h = sized[0].photo.size
    assert w % 28 == 0 and h % 28 == 0 and (w, h) == (448, 308)
    assert sized[0].photo.key != plain[0].photo.key  # cached apart: different pixels


def test_the_query_photo_is_never_its_own_exemplar(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"e{i}.jpg"
        Image.new("RGB", (100, 100), (40 * i, 90, 90)).save(path)
        paths.append(path)
    hits = [
        Hit(str(p), (100, 100), (Box(0, 0, 0.5, 0.5),), (3.0,), None, s)
        for p, s in zip(paths, (1.0, 0.99999, 0.9, 0.8), strict=True)
    ]
    source = ExemplarSource(Index(hits))
    # By its path (another spelling of it), and by an embedding identical to the query's.
    got, itself = source.retrieve(
        np.zeros(4), "free", count=2, crops_per_exemplar=1, side=64,
        query=str(tmp_path / "." / "e1.jpg"),
    )  # fmt: skip
    assert [e.photo.key for e in got] == [f"{paths[2]}@64", f"{paths[3]}@64"]  # still two
    assert itself == [str(paths[0]), str(paths[1])]
