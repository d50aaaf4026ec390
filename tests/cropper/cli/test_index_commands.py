"""`cropper index build|info` and `cropper crop --index`, as a user runs them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cropper.cli.main import main
from cropper.testing.openai_server import OpenAICompatibleServer

pytestmark = pytest.mark.slow


@pytest.fixture
def own_crops(tmp_path):
    lines = []
    for i in range(4):
        Image.new("RGB", (120, 90), (40 * i, 90, 200 - 30 * i)).save(tmp_path / f"p{i}.jpg")
        lines.append({"image": f"p{i}.jpg", "crops": [[10, 5, 110, 85]], "scores": [4.0]})
    lines.append({"image": "gone.jpg", "crops": [[0, 0, 10, 10]]})
    path = tmp_path / "crops.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return path


def build(jsonl, out, clip, *extra):
    return main(
        [
            "index",
            "build",
            "--dataset",
            "jsonl",
            "--root",
            str(jsonl),
            "--out",
            str(out),
            "--clip",
            clip,
            "--no-progress",
            "--workers",
            "0",
            *extra,
        ]
    )


def test_build_then_info_then_crop_with_the_bank(own_crops, tiny_clip, tmp_path, capsys, caplog):
    bank = tmp_path / "bank"
    assert build(own_crops, bank, tiny_clip) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == 4 and summary["bank"] == str(bank)
    assert summary["index"]["kind"] == "flat"
    named = [r.getMessage() for r in caplog.records if "gone.jpg" in r.getMessage()]
    assert len(named) == 1  # the missing photo is named, once

    assert main(["index", "info", str(bank)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["count"] == 4 and manifest["embedder"] == tiny_clip
    assert manifest["dataset"] == "jsonl" and manifest["format_version"] >= 1

    photo = tmp_path / "query.jpg"
    Image.new("RGB", (200, 100), (10, 20, 30)).save(photo)
    with OpenAICompatibleServer() as server:
        code = main(
            [
                "crop",
                str(photo),
                "--index",
                str(bank),
                "--vlm",
                server.url,
                "--head",
                "none",
                "--json",
            ]
        )
        prompt = server.chat_requests[0].body["messages"]
    assert code == 0
    images = [
        p
        for m in prompt
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]
    assert len(images) == 1 + 4  # the four exemplars (the bank holds 4), then the query


def test_info_on_a_broken_bank_says_how_to_rebuild(own_crops, tiny_clip, tmp_path, capsys):
    bank = tmp_path / "bank"
    assert build(own_crops, bank, tiny_clip) == 0
    (bank / "index.faiss").write_bytes(b"truncated")
    assert main(["index", "info", str(bank)]) == 2
    err = capsys.readouterr().err
    assert "cropper index build" in err and len(err.strip().splitlines()) == 1


def test_unknown_dataset_and_no_photos_fail_clearly(tmp_path, tiny_clip, capsys):
    assert (
        main(
            [
                "index",
                "build",
                "--dataset",
                "coco",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "b"),
                "--clip",
                tiny_clip,
            ]
        )
        == 2
    )
    assert "gaicd" in capsys.readouterr().err
    jsonl = tmp_path / "none.jsonl"
    jsonl.write_text(json.dumps({"image": "missing.jpg", "crops": [[0, 0, 5, 5]]}))
    assert build(jsonl, tmp_path / "b", tiny_clip) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_a_bank_that_would_overwrite_its_own_annotations_is_refused(tmp_path, capsys):
    annotations = tmp_path / "exemplars.jsonl"
    annotations.write_text('{"image": "a.jpg", "crops": [[0, 0, 10, 10]]}\n')
    before = annotations.read_bytes()
    assert build(annotations, tmp_path, "local-dir:/nowhere") == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert annotations.read_bytes() == before
