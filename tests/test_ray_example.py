"""examples/ray_crop_batch.py, run in a local Ray against two local OpenAI-compatible servers."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from cropper.testing.openai_server import Fault, OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ray_crop_batch.py"


@pytest.fixture(scope="module")
def example():
    """The example as a module, pickled by value so Ray's workers need not import it."""
    spec = importlib.util.spec_from_file_location("ray_crop_batch", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def local_ray(example):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'cropper[ray]'")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'cropper[ray]'")
    ray.cloudpickle.register_pickle_by_value(example)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(example)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "day2").mkdir(parents=True)
    sizes = [(320, 240), (240, 320), (300, 300), (400, 200), (200, 400), (360, 270)]
    paths = []
    for i, size in enumerate(sizes):
        path = folder / ("day2" if i % 2 else "") / f"p{i}.jpg"
        synthetic_photo(i, size, discs=4).save(path)
        paths.append(path)
    return folder, paths


@pytest.mark.slow
def test_crops_every_photo_once_across_servers_and_resumes(example, local_ray, photos, tmp_path):
    folder, paths = photos
    bad = folder / "broken.jpg"
    bad.write_bytes(b"not a photo")
    out = tmp_path / "out"
    with OpenAICompatibleServer() as one, OpenAICompatibleServer() as two:
        args = [
            "--photos", str(folder), "--out", str(out), "--vlm", one.url, two.url,
            "--task", "aspect", "--ratio", "4:3", "--actors", "2", "--actor-cpus", "0.5",
            "--batch-size", "1", "--concurrency", "4",
            "--clip", "none", "--head", "none", "--index", "none",
        ]  # fmt: skip
        assert example.main(args) == 1  # the broken photo fails, alone
        lines = [json.loads(t) for t in (out / "results.jsonl").read_text().splitlines()]
        # Each actor talks to its own server (round-robin over the URLs); batches of one photo
        # spread the work over both actors even if one starts late.
        assert one.chat_requests and two.chat_requests

        by_image = {line["image"]: line for line in lines}
        assert len(lines) == len(by_image) == len(paths) + 1
        assert set(by_image[os.path.abspath(bad)]) == {"image", "task", "error"}
        for path in paths:
            line = by_image[os.path.abspath(path)]
            assert line["task"] == "aspect" and 0 <= line["score"] <= 1
            left, top, right, bottom = line["box"]
            w, h = Image.open(path).size
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            assert abs((right - left) / (bottom - top) - 4 / 3) < 0.05

        asked = len(one.chat_requests) + len(two.chat_requests)
        assert example.main(args) == 0  # every photo has its line: nothing is asked again
        assert len(one.chat_requests) + len(two.chat_requests) == asked
    assert (out / "results.jsonl").read_text().count("\n") == len(paths) + 1


@pytest.mark.slow
def test_a_server_that_is_down_stops_the_run_which_a_rerun_resumes(
    example, local_ray, photos, tmp_path, capsys
):
    folder, paths = photos
    out = tmp_path / "out"
    args = ["--photos", str(folder), "--out", str(out), "--actors", "1", "--actor-cpus", "0.5"]
    args += ["--clip", "none", "--head", "none", "--index", "none", "--vlm"]
    down = [Fault(status=503, retry_after=0, message="overloaded")] * 100
    with OpenAICompatibleServer(faults=down) as server:
        assert example.main([*args, server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cropper: error: the run stopped: ") and "rerun to resume" in err
    assert "503" in err or "overloaded" in err
    assert not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text()

    with OpenAICompatibleServer() as server:
        assert example.main([*args, server.url]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(t)["image"] for t in lines) == sorted(
        os.path.abspath(p) for p in paths
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--actors", "0"], "at least 1"),
        (["--task", "aspect", "--ratio", "wide"], "wide"),
        (["--photos", "/no/such/*.jpg"], "no photos match"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_ray_starts(
    example, tmp_path, capsys, extra, message
):
    args = ["--photos", str(tmp_path), "--out", str(tmp_path / "o"), "--vlm", "http://h:1/v1"]
    assert example.main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cropper: error:") and message in err and "\n" not in err
