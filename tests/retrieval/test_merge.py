"""Merging banks: a professional bank and an annotated one serving together."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.data.datasets import load_pro
from retrieval import ann
from retrieval.exemplars import read_jsonl
from retrieval.index import ExemplarIndex
from retrieval.merge import MERGED, merge_banks

pytestmark = pytest.mark.slow


class ToyEmbedder:
    """Another embedder than CLIP: a 2x2 thumbnail as a 12-d vector."""

    name, dim = "toy-2x2", 12

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = [
            np.resize(np.asarray(i.convert("RGB").resize((2, 2)), np.float32), 12) + 1
            for i in images
        ]
        return np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)


def _photo(path: Path, size: tuple[int, int], shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, (3 * shade) % 256)).save(path)


def _build(exemplars: list, embedder: object, out: Path, dataset: str) -> Path:
    ExemplarIndex.build(exemplars, embedder, out, dataset=dataset, num_workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def clip(tiny_clip: str):
    from retrieval.embedder import ClipEmbedder

    return ClipEmbedder(tiny_clip)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, clip) -> tuple[Path, Path]:
    """A professional bank of 3 photos and an annotated bank of 2 whose photos lie inside it."""
    root = tmp_path_factory.mktemp("sources")
    for i in range(3):
        _photo(root / "pro" / f"pro{i}.jpg", (160, 90), 40 * i)
    pro = _build(load_pro(root / "pro"), clip, root / "pro_bank", "pro")
    own = root / "own_bank"
    rows = []
    for i in range(2):
        _photo(own / "photos" / f"own{i}.png", (100, 100), 200 - 50 * i)
        rows.append({"image": f"photos/own{i}.png", "crops": [[10, 10, 60, 60]], "scores": [3.5]})
    (own / "crops.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    _build(read_jsonl(own / "crops.jsonl"), clip, own, "jsonl")
    assert "photos/own0.png" in (own / "exemplars.jsonl").read_text()  # stored relative
    return pro, own


def test_a_merged_bank_serves_both_sources(sources, clip, tmp_path: Path) -> None:
    pro, own = sources
    out = merge_banks([pro, own], tmp_path / "merged")
    assert out == tmp_path / "merged"
    merged = ExemplarIndex.load(out, embedder=clip)
    first, second = ExemplarIndex.load(pro), ExemplarIndex.load(own)
    assert len(merged) == len(first) + len(second) == 5
    assert merged.exemplars == first.exemplars + second.exemplars
    # The annotated bank's photos were stored relative to it: they still resolve.
    assert all(Path(ex.image).is_absolute() and Path(ex.image).is_file() for ex in merged.exemplars)
    assert str(own / "photos" / "own1.png") in (out / "exemplars.jsonl").read_text()

    hits = merged.search(own / "photos" / "own1.png", k=5)
    assert {Path(h.image).parent.name for h in hits} == {"pro", "photos"}
    assert Path(hits[0].image).name == "own1.png"
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert merged.search(pro.parent / "pro" / "pro2.jpg", k=1)[0].crops == (Box.whole(),)

    manifest = merged.manifest
    assert manifest["embedder"] == clip.name and manifest["dim"] == clip.dim
    assert manifest["count"] == 5 and manifest["dataset"] == MERGED
    assert manifest["index"] == {"kind": "flat"}
    assert manifest["preprocess"] == first.manifest["preprocess"]
    assert manifest["sources"] == [
        {"bank": str(pro.resolve()), "count": 3, "dataset": "pro", "split": None},
        {"bank": str(own.resolve()), "count": 2, "dataset": "jsonl", "split": None},
    ]
    assert not (out / ".partial").exists()


def test_the_index_kind_is_chosen_as_a_build_chooses_it(
    sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each source is small enough for exact search; together they pass the threshold.
    monkeypatch.setattr(ann, "HNSW_THRESHOLD", 4)
    manifest = ExemplarIndex.load(merge_banks(sources, tmp_path / "auto")).manifest
    assert manifest["index"]["kind"] == "hnsw" and 0 <= manifest["recall_at_30"] <= 1
    flat = merge_banks(sources, tmp_path / "flat", index_type="flat")
    assert ExemplarIndex.load(flat).manifest["index"] == {"kind": "flat"}


def test_a_merged_bank_merges_again_and_keeps_its_history(sources, tmp_path: Path) -> None:
    pro, own = sources
    once = merge_banks([pro, own], tmp_path / "once")
    twice = ExemplarIndex.load(merge_banks([once, pro], tmp_path / "twice"))
    assert len(twice) == 8
    assert [s["dataset"] for s in twice.manifest["sources"]] == [MERGED, "pro"]
    assert len(twice.manifest["sources"][0]["sources"]) == 2


@pytest.mark.parametrize("other", ["toy", "second_clip"])
def test_a_bank_of_another_embedder_is_refused(sources, clip, other: str, tmp_path: Path) -> None:
    from cropper.testing.tiny_clip import build_tiny_clip
    from retrieval.embedder import ClipEmbedder

    pro, _ = sources
    if other == "toy":
        embedder = ToyEmbedder()
    else:
        embedder = ClipEmbedder(build_tiny_clip(tmp_path / "other_clip", seed=1))
    stranger = _build(load_pro(pro.parent / "pro"), embedder, tmp_path / "stranger", "pro")
    out = tmp_path / "merged"
    with pytest.raises(ExemplarIndexError) as caught:
        merge_banks([pro, stranger], out)
    message = str(caught.value)
    assert "\n" not in message and "must share one embedder" in message
    for named in (str(pro), str(stranger), repr(embedder.name), repr(clip.name)):
        assert named in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("banks", "out", "match"),
    [
        (["pro"], "new", "two or more banks, got 1"),
        (["pro", "pro"], "new", "is given twice"),
        (["pro", "own"], "own", "is one of the banks being merged"),
        (["pro", "nothing"], "new", "no exemplar bank there"),
    ],
)
def test_refusals(sources, tmp_path: Path, banks: list, out: str, match: str) -> None:
    named = {"pro": sources[0], "own": sources[1], "nothing": tmp_path / "nothing"}
    target = named.get(out, tmp_path / out)
    with pytest.raises((ConfigError, ExemplarIndexError), match=match):
        merge_banks([named[b] for b in banks], target)
    with pytest.raises(ConfigError, match="index kind 'big' is unknown"):
        merge_banks(list(sources), tmp_path / "new", index_type="big")


def test_cropper_index_merge_then_info(
    sources, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cropper.cli.main import main

    pro, own = sources
    out = tmp_path / "merged"
    assert main(["index", "merge", str(pro), str(own), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bank"] == str(out) and summary["count"] == 5
    assert summary["index"] == {"kind": "flat"}
    assert [(s["dataset"], s["count"]) for s in summary["sources"]] == [("pro", 3), ("jsonl", 2)]

    assert main(["index", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == summary["sources"]

    assert main(["index", "merge", str(pro), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
