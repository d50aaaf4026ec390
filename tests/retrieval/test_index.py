"""The exemplar bank: build, save, load, search, and refusing damaged or mismatched banks."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from retrieval.exemplars import Exemplar, read_jsonl
from retrieval.index import FORMAT_VERSION, ExemplarIndex, Hit


class ToyEmbedder:
    """A 2x2 thumbnail as a 12-d vector: fast, deterministic, tells patterns apart."""

    def __init__(self, name: str = "toy-2x2", dim: int = 12):
        self.name, self.dim = name, dim

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            thumb = np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32) / 255 - 0.5
            row = np.resize(thumb.reshape(-1), self.dim)
            rows.append(row / max(np.linalg.norm(row), 1e-9))
        return np.stack(rows).astype(np.float32)


def _pattern(kind: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Visibly different synthetic photos: stripes, checks, gradients, blocks."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = [
        np.stack([(x // 8 % 2) * 255, x * 0, y * 0], -1),
        np.stack([y * 0, ((x // 8 + y // 8) % 2) * 255, y * 0 + 60], -1),
        np.stack([x * 255 // w, y * 255 // h, x * 0 + 128], -1),
        np.stack([(y < h // 2) * 255, (x < w // 2) * 255, (x >= w // 2) * 255], -1),
        np.stack([x * 0 + 250, x * 0 + 250, y * 255 // h], -1),
    ][kind]
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture
def photo_jsonl(tmp_path: Path) -> Path:
    """Five synthetic photos with crops, listed in the user's JSONL format."""
    (tmp_path / "photos").mkdir()
    rows = []
    for i in range(5):
        _pattern(i).save(tmp_path / "photos" / f"p{i}.png")
        rows.append(
            {
                "image": f"photos/p{i}.png",
                "crops": [[0, 0, 32, 24], [8, 8, 64, 48]],
                "scores": [float(i), 1.0],
                "subject": [20, 10],
            }
        )
    path = tmp_path / "crops.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def toy_bank(photo_jsonl: Path, tmp_path: Path) -> Path:
    ExemplarIndex.build(read_jsonl(photo_jsonl), ToyEmbedder(), tmp_path / "bank", progress=False)
    return tmp_path / "bank"


@pytest.mark.slow
def test_build_save_load_search_with_tiny_clip(
    tiny_clip: str, photo_jsonl: Path, tmp_path: Path
) -> None:
    from retrieval.embedder import ClipEmbedder

    embedder = ClipEmbedder(tiny_clip)
    exemplars = read_jsonl(photo_jsonl)
    built = ExemplarIndex.build(
        exemplars, embedder, tmp_path / "bank", batch_size=2, split="train", progress=False
    )
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == [
        "exemplars.jsonl",
        "index.faiss",
        "manifest.json",
    ]
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["embedder"] == tiny_clip and manifest["dim"] == 32 and manifest["count"] == 5
    assert manifest["format_version"] == FORMAT_VERSION and manifest["split"] == "train"
    assert manifest["model"] == tiny_clip and manifest["pretrained"] is None
    assert manifest["preprocess"]["image_size"] == [32, 32]
    assert manifest["index"] == {"kind": "flat"} and "recall_at_30" not in manifest
    assert built.manifest == manifest

    bank = ExemplarIndex.load(tmp_path / "bank", embedder=embedder)
    assert len(bank) == 5 and bank.dim == 32 and bank.embedder_name == tiny_clip
    assert bank.exemplars == built.exemplars == tuple(exemplars)
    for i in (0, 3):
        hits = bank.search(photo_jsonl.parent / "photos" / f"p{i}.png", k=3)
        assert len(hits) == 3 and isinstance(hits[0], Hit)
        assert hits[0].index == i and hits[0].image == exemplars[i].image
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
        assert hits[0].similarity > hits[1].similarity >= hits[2].similarity
        assert hits[0].crops == exemplars[i].crops and hits[0].scores == exemplars[i].scores
    # The same photo as a PIL image, and its embedding, find the same exemplar.
    assert bank.search(_pattern(2), k=1)[0].index == 2
    vector = embedder.embed([_pattern(4)])[0]
    assert bank.search(vector, k=1)[0].index == 4


def test_search_many_at_once_and_k_capped(toy_bank: Path) -> None:
    embedder = ToyEmbedder()
    bank = ExemplarIndex.load(toy_bank, embedder=embedder)
    queries = embedder.embed([_pattern(1), _pattern(3)])
    results = bank.search_embeddings(queries, k=10)
    assert [len(r) for r in results] == [5, 5]
    assert [r[0].index for r in results] == [1, 3]
    assert sorted(h.index for h in results[0]) == [0, 1, 2, 3, 4]
    # Unnormalized queries give cosine similarities all the same.
    scaled = bank.search_embeddings(queries * 7.0, k=1)
    assert scaled[0][0].similarity == pytest.approx(results[0][0].similarity, abs=1e-5)


def test_search_by_embedding_needs_no_embedder(toy_bank: Path) -> None:
    bank = ExemplarIndex.load(toy_bank)
    vector = ToyEmbedder().embed([_pattern(0)])[0]
    assert bank.search(vector, k=1)[0].index == 0
    # By photo, it builds the bank's own embedder; a toy's name is no open_clip model.
    with pytest.raises(ConfigError, match="open_clip"):
        bank.search(_pattern(0))
    with pytest.raises(ConfigError, match=r"\(N, 12\)"):
        bank.search(np.ones(5))
    with pytest.raises(ConfigError, match="k must be"):
        bank.search(vector, k=0)


def test_photos_inside_the_bank_are_stored_relative(tmp_path: Path) -> None:
    # A bank folder that holds its photos can be moved as a whole.
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    _pattern(0).save(home / "photos" / "p0.png")
    (home / "c.jsonl").write_text(json.dumps({"image": "photos/p0.png", "crops": [[0, 0, 9, 9]]}))
    ExemplarIndex.build(read_jsonl(home / "c.jsonl"), ToyEmbedder(), home, progress=False)
    first = json.loads((home / "exemplars.jsonl").read_text().splitlines()[0])
    assert first["image"] == "photos/p0.png"
    moved = tmp_path / "moved"
    home.rename(moved)
    bank = ExemplarIndex.load(moved)
    assert bank.exemplars[0].image == str(moved.resolve() / "photos" / "p0.png")
    assert Path(bank.exemplars[0].image).is_file()


def test_build_skips_unreadable_photos_with_one_warning(
    photo_jsonl: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exemplars = read_jsonl(photo_jsonl)
    Path(exemplars[1].image).unlink()
    Path(exemplars[3].image).write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="retrieval.index"):
        bank = ExemplarIndex.build(
            exemplars, ToyEmbedder(), tmp_path / "bank", batch_size=2, progress=False
        )
    assert [Path(e.image).name for e in bank.exemplars] == ["p0.png", "p2.png", "p4.png"]
    [record] = caplog.records
    assert "skipped 2 of 5" in record.getMessage() and "p1.png" in record.getMessage()
    assert len(ExemplarIndex.load(tmp_path / "bank")) == 3


def test_build_with_no_usable_photo_writes_nothing(photo_jsonl: Path, tmp_path: Path) -> None:
    exemplars = read_jsonl(photo_jsonl)[:1]
    Path(exemplars[0].image).unlink()
    with pytest.raises(ExemplarIndexError, match="no bank was built"):
        ExemplarIndex.build(exemplars, ToyEmbedder(), tmp_path / "bank", progress=False)
    assert not (tmp_path / "bank").exists()
    with pytest.raises(ExemplarIndexError, match="no exemplars"):
        ExemplarIndex.build([], ToyEmbedder(), tmp_path / "bank")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ExemplarIndexError, match="cannot write the exemplar bank"):
        ExemplarIndex.build(read_jsonl(photo_jsonl)[1:], ToyEmbedder(), tmp_path / "a_file")


def test_rebuild_replaces_the_bank_and_leaves_no_temporary_files(
    photo_jsonl: Path, toy_bank: Path
) -> None:
    ExemplarIndex.build(read_jsonl(photo_jsonl)[:2], ToyEmbedder(), toy_bank, progress=False)
    assert sorted(p.name for p in toy_bank.iterdir()) == [
        "exemplars.jsonl",
        "index.faiss",
        "manifest.json",
    ]
    assert len(ExemplarIndex.load(toy_bank)) == 2


def _truncate_index(bank: Path) -> None:
    data = (bank / "index.faiss").read_bytes()
    (bank / "index.faiss").write_bytes(data[: len(data) // 2])


def _edit_manifest(**changes: object):
    def edit(bank: Path) -> None:
        manifest = json.loads((bank / "manifest.json").read_text())
        manifest.update(changes)
        (bank / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _drop_last_exemplar(bank: Path) -> None:
    lines = (bank / "exemplars.jsonl").read_text().splitlines()
    (bank / "exemplars.jsonl").write_text("\n".join(lines[:-1]) + "\n")


@pytest.mark.parametrize(
    ("damage", "embedder", "words"),
    [
        (_truncate_index, None, "corrupt or truncated"),
        (lambda b: (b / "index.faiss").write_bytes(b"garbage" * 30), None, "corrupt or truncated"),
        (lambda b: (b / "exemplars.jsonl").unlink(), None, "incomplete \\(no exemplars.jsonl\\)"),
        (lambda b: (b / "manifest.json").unlink(), None, "incomplete \\(no manifest.json\\)"),
        (lambda b: (b / "manifest.json").write_text("{oops"), None, "not a readable JSON"),
        (
            _edit_manifest(format_version=FORMAT_VERSION + 1),
            None,
            f"format {FORMAT_VERSION + 1} is newer",
        ),
        (_edit_manifest(format_version="1"), None, "no valid format_version"),
        (_edit_manifest(dim=13), None, "manifest says 5 of 13"),
        (_edit_manifest(count=6), None, "manifest says 6 of 12"),
        (_edit_manifest(embedder=None), None, "bad 'embedder'"),
        (
            _edit_manifest(index={"kind": "hnsw", "ef_search": 64}),
            None,
            "not the inner-product hnsw",
        ),
        (_edit_manifest(index={"kind": "ivf"}), None, "unknown index kind 'ivf'"),
        (_edit_manifest(index=None), None, "unknown index kind None"),
        (_drop_last_exemplar, None, "has 4 exemplars but the manifest says 5"),
        (lambda b: (b / "exemplars.jsonl").write_text("{}\n" * 5), None, "line 1: bad exemplar"),
        (_edit_manifest(embedder="ViT-B-32:openai"), ToyEmbedder(), "built with embedder"),
        (lambda b: None, ToyEmbedder(name="other"), "built with embedder 'toy-2x2'"),
        (lambda b: None, ToyEmbedder(dim=16), r"\(12-d\), not 'toy-2x2' \(16-d\)"),
    ],
)
def test_damaged_or_mismatched_banks_are_refused_with_how_to_rebuild(
    toy_bank: Path, damage, embedder, words: str
) -> None:
    damage(toy_bank)
    with pytest.raises(ExemplarIndexError, match=words) as info:
        ExemplarIndex.load(toy_bank, embedder=embedder)
    message = str(info.value)
    assert "\n" not in message
    assert "rebuild it with `cropper index build --dataset " in message
    assert f"--out {toy_bank}`" in message


def test_rebuild_hint_fills_in_what_the_manifest_knows(photo_jsonl: Path, tmp_path: Path) -> None:
    ExemplarIndex.build(
        read_jsonl(photo_jsonl),
        ToyEmbedder(),
        tmp_path / "bank",
        dataset="gaicd",
        split="train",
        progress=False,
    )
    (tmp_path / "bank" / "exemplars.jsonl").write_text("")
    with pytest.raises(ExemplarIndexError) as info:
        ExemplarIndex.load(tmp_path / "bank", embedder=ToyEmbedder())
    assert (
        "cropper index build --dataset gaicd --root ... --split train --clip toy-2x2 "
        f"--out {tmp_path / 'bank'}`"
    ) in str(info.value)
    # Against another embedder, the hint rebuilds with the one in use.
    with pytest.raises(ExemplarIndexError, match="--clip other --out"):
        ExemplarIndex.load(tmp_path / "bank", embedder=ToyEmbedder(name="other"))


def test_hnsw_bank_records_its_settings_and_recall(photo_jsonl: Path, tmp_path: Path) -> None:
    exemplars = read_jsonl(photo_jsonl)
    built = ExemplarIndex.build(
        exemplars, ToyEmbedder(), tmp_path / "bank", index_type="hnsw", progress=False
    )
    manifest = built.manifest
    assert manifest["index"]["kind"] == "hnsw" and manifest["index"]["ef_search"] >= 30
    assert manifest["recall_at_30"] == 1.0  # 5 vectors: the graph finds them all
    # The manifest's search setting is the one used, and search finds the same photos.
    _edit_manifest(index={**manifest["index"], "ef_search": 40})(tmp_path / "bank")
    bank = ExemplarIndex.load(tmp_path / "bank", embedder=ToyEmbedder())
    assert bank._index.hnsw.efSearch == 40
    assert [bank.search(_pattern(i), k=1)[0].index for i in range(5)] == [0, 1, 2, 3, 4]
    _edit_manifest(index={**manifest["index"], "ef_search": 0})(tmp_path / "bank")
    with pytest.raises(ExemplarIndexError, match="bad index settings.*ef_search.*rebuild it"):
        ExemplarIndex.load(tmp_path / "bank")


def test_format_1_banks_still_load_as_exact(toy_bank: Path) -> None:
    manifest = json.loads((toy_bank / "manifest.json").read_text())
    del manifest["index"]
    (toy_bank / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    assert ExemplarIndex.load(toy_bank).search(ToyEmbedder().embed([_pattern(2)])[0])[0].index == 2
    # From format 2 on, the index kind must be named.
    (toy_bank / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(ExemplarIndexError, match="unknown index kind"):
        ExemplarIndex.load(toy_bank)


def test_manifest_names_the_model_and_its_pretrained_tag(toy_bank: Path, tmp_path: Path) -> None:
    exemplars = ExemplarIndex.load(toy_bank).exemplars
    bank = ExemplarIndex.build(
        exemplars, ToyEmbedder(name="ViT-B-32:laion2b_s34b_b79k"), tmp_path / "b", progress=False
    )
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest == bank.manifest
    assert (manifest["embedder"], manifest["model"], manifest["pretrained"]) == (
        "ViT-B-32:laion2b_s34b_b79k",
        "ViT-B-32",
        "laion2b_s34b_b79k",
    )
    assert manifest["dataset"] == "jsonl" and manifest["split"] is None
    created = datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ExemplarIndexError, match="no exemplar bank there.*cropper index build"):
        ExemplarIndex.load(tmp_path / "nope")


def test_manifest_property_is_a_copy(toy_bank: Path) -> None:
    bank = ExemplarIndex.load(toy_bank)
    bank.manifest["count"] = 99
    assert bank.manifest["count"] == 5 and bank.manifest["dataset"] == "jsonl"
    assert bank.manifest["preprocess"] is None  # the toy embedder has no preprocessing to record


@pytest.mark.slow
def test_a_bank_loaded_alone_searches_by_photo_with_its_own_embedder(tmp_path, tiny_clip) -> None:
    from retrieval.embedder import ClipEmbedder

    photos = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        _pattern(i).save(path)
        photos.append(Exemplar(str(path), _pattern(i).size, (Box.whole(),)))
    ExemplarIndex.build(photos, ClipEmbedder(tiny_clip), tmp_path / "bank", progress=False)
    bank = ExemplarIndex.load(tmp_path / "bank")
    hits = bank.search(str(tmp_path / "p2.png"), k=3)
    assert hits[0].image.endswith("p2.png") and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert bank.embedder.name == tiny_clip
