"""The benchmark scripts run and count what they claim; their speed is never asserted here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cropper.agent.parsing import parse_reply
from cropper.core.messages import ImagePart, Message, TextPart
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo
from cropper.vlm.base import Sampling
from cropper.vlm.schema import boxes_schema

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def script(name: str):
    """A benchmark script as a module (benchmarks/ is a folder of scripts, not a package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, timeout: float = 600) -> dict:
    """Run a benchmark script in a fresh process; its last line, as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def overhead():
    return script("loop_overhead")


# --------------------------------------------------------------------------- stand-in VLMs


@pytest.mark.parametrize("coords", ["norm1000", "norm1", "pixel"])
@pytest.mark.parametrize("crops", [1, 6])
def test_the_instant_vlm_writes_the_crops_asked_for(overhead, coords: str, crops: int) -> None:
    size = (1024, 768)
    sampling = Sampling(n=2, json_schema=boxes_schema(crops, coords, size))
    replies = overhead.InstantVLM().generate([[], []], sampling)
    assert [len(r) for r in replies] == [2, 2]
    for reply in (r for rows in replies for r in rows):
        parsed = parse_reply(reply, coords, size)
        assert len(parsed.boxes) == crops, (reply, parsed.dropped)


def test_the_instant_vlm_writes_new_crops_each_call(overhead) -> None:
    vlm = overhead.InstantVLM()
    sampling = Sampling(json_schema=boxes_schema(6, "norm1000"))
    assert vlm.generate([[]], sampling) != vlm.generate([[]], sampling)


def test_the_server_responder_writes_r_crops_over_the_wire(overhead) -> None:
    from cropper.vlm.openai_server import OpenAIServerVLM

    conversation = [Message("user", (TextPart("crop"), ImagePart(synthetic_photo(0, (64, 48)))))]
    sampling = Sampling(n=1, json_schema=boxes_schema(6, "norm1000"))
    with OpenAICompatibleServer(responder=overhead.full_responder) as server:
        replies = OpenAIServerVLM(server.url).generate([conversation], sampling)
    assert len(parse_reply(replies[0][0], "norm1000").boxes) == 6


# --------------------------------------------------------------------------- gpu_transformers


@pytest.fixture(scope="module")
def gpu():
    return script("gpu_transformers")


@pytest.mark.slow
def test_the_7b_config_has_qwen2_5_vl_7bs_parameters(gpu) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            gpu.config_7b(gpu.offline_processor()), dtype=torch.bfloat16
        )
    counts = gpu.param_counts(model, torch.bfloat16)
    assert counts["params"] == 8_292_166_656  # Qwen2.5-VL-7B-Instruct's
    assert counts["vision_params"] == 676_550_144


def test_an_option_the_backend_lacks_is_reported_not_available(gpu, tmp_path: Path) -> None:
    import torch

    # The registry refuses an option before anything loads, so no checkpoint is needed.
    answer = gpu.load_backend(tmp_path, torch.device("cpu"), {"no_such_option": False})
    assert isinstance(answer, str) and answer.startswith("not available")


def test_the_floor_counts_a_shared_prefix_once_and_images_by_identity(gpu) -> None:
    from cropper.testing.tiny_vlm import _processor

    processor = _processor("qwen2_5_vl")
    first, second, third = (synthetic_photo(i, (224, 224)) for i in range(3))
    propose = [
        Message("system", (TextPart("You crop photos."),)),
        Message("user", (TextPart("Picture 1:"), ImagePart(first), TextPart("Propose 6 crops."))),
    ]
    refine = [
        *propose,
        Message("assistant", (TextPart('{"crops": [[0, 0, 1000, 1000]]}'),)),
        Message("user", (ImagePart(second), TextPart("Find crops that score higher."))),
    ]
    other_image = [propose[0], Message("user", (TextPart("Picture 1:"), ImagePart(third)))]
    log = gpu.ConversationLog()
    reply = '{"crops": [[1, 2, 3, 4]]}'
    log.calls = [([propose], [[reply]]), ([refine], [[reply]]), ([other_image], [[reply]])]
    calls = gpu.floor_counts(log, processor)

    full = [gpu.token_sequence(c, processor) for c in (propose, refine, other_image)]
    assert [c["prompt_tokens"] for c in calls] == [len(s) for s, _ in full]
    assert calls[0]["new_tokens"] == calls[0]["prompt_tokens"]  # nothing before it
    image_tokens = full[0][1]  # the three photos are the same size
    # The refine prompt's new part: its own image and text past the propose prompt.
    assert calls[1]["new_image_tokens"] == image_tokens
    assert calls[1]["new_tokens"] < calls[1]["prompt_tokens"] - image_tokens
    # The same text before another photo: its image tokens are new, their ids alike.
    assert calls[2]["new_image_tokens"] == image_tokens
    assert calls[2]["new_patches"] == 4 * image_tokens
    assert all(c["steps"] > 1 for c in calls)


@pytest.mark.slow
def test_the_gpu_script_reaches_every_stage_on_tiny_models(gpu, tmp_path, monkeypatch) -> None:
    """``--tiny``: every stage on the CPU, the CLIP stage included; the second backend
    (prefix reuse off) made with an option today's backend takes, so its path runs too."""
    monkeypatch.setattr(gpu, "NO_PREFIX_CACHE", {"static_cache": False})
    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_transformers.py", "--tiny", "--batches", "1",
                                      "--time-limit", "3600", "--out", str(out)])  # fmt: skip
    gpu.main()
    report = json.loads(out.read_text())
    assert report.get("errors") is None and report["skipped"] == []
    assert report["stages_reached"] == [
        "hardware", "model", "bank", "load", "load_no_prefix_cache", "batch_1",
        "batch_1_no_prefix_cache", "clip_embedding", "decode_batch_1",
    ]  # fmt: skip
    batch = report["batch_1"]
    assert batch["failed"] == [] and len(batch["boxes"]) == 1
    assert len(batch["floor_calls"]) == 3  # propose and two refine rounds
    assert 0 < batch["floor_tokens_per_photo"] < batch["prompt_tokens_per_photo"]
    # The script's floor (prefix by text, each prefix once) overcounts a little against the
    # backend's exact one (image runs matched by pixels): within 10% of it, not above.
    assert batch["prefilled_tokens_per_photo"] <= 1.1 * batch["floor_tokens_per_photo"]
    assert batch["vision_patches_per_photo"] >= batch["floor_patches_per_photo"] > 0
    assert report["batch_1_prefix_reuse"]["same_boxes"] == "1 of 1"
    clip = report["clip_embedding"]
    assert clip["input_side"] == 32 and clip["crops_per_s_fp16"] > 0


# --------------------------------------------------------------------------- run.py, memory


@pytest.mark.slow
def test_run_measures_capacity_on_the_real_workload() -> None:
    report = run_script(
        "run", "--photos", "4", "--overhead-photos", "2", "--bank-size", "30",
        "--clips", "tiny", "--sizes", "320x240,640x480", "--latency", "0.05",
        "--slots", "4", "--no-tokens",
    )  # fmt: skip
    assert [r["size"] for r in report["capacity"]] == ["320x240", "640x480"]
    for row in report["capacity"]:
        assert row["failed_count"] == 0
        assert row["calls_per_photo"] == 3
        assert row["crops_scored_per_photo"] == 18  # R=6 in each of three rounds
        assert row["clip_images_per_photo"] >= 19  # the query and every crop
        assert row["client_cpu_s_per_photo"] > 0 and row["server_cpu_s_per_photo"] > 0
    assert report["overhead"][0]["crops_scored_per_photo"] == 18
    assert set(report["capacity_ratio"]) == {"tiny 320x240", "tiny 640x480"}


@pytest.mark.slow
def test_memory_batch_measures_a_chunk_and_a_stream() -> None:
    report = run_script(
        "memory_batch", "--chunk-photos", "2", "--chunk-size", "800x600",
        "--stream-photos", "6", "--every", "2", "--bank-size", "30",
    )  # fmt: skip
    assert report["chunk"]["failed"] == 0
    assert report["chunk"]["peak_rss_mb"] >= report["chunk"]["rss_before_mb"] > 0
    assert report["chunk"]["cropper_package"] == str(REPO / "cropper")
    for kind, kept in (("stream", 0), ("batch", 6)):
        row = report[kind]
        assert row["failed"] == 0 and row["kept_results"] == kept
        assert [n for n, _ in row["rss_samples_mb"]] == [0, 2, 4, 6]


def test_the_rss_slope_is_fitted_past_the_first_photos() -> None:
    memory = script("memory_batch")
    flat = [[0, 500.0], [100, 900.0], [200, 900.0], [300, 900.0]]
    growing = [[0, 500.0], [100, 900.0], [200, 1000.0], [300, 1100.0]]
    assert memory.slope_per_100(flat) == 0
    assert memory.slope_per_100(growing) == 100
    assert memory.slope_per_100([[0, 1.0]]) is None


@pytest.mark.slow
def test_no_vlm_times_narrowed_whole_grid_and_smartcrop(tmp_path: Path) -> None:
    pytest.importorskip("smartcrop")
    report = run_script(
        "no_vlm", "--clip", "tiny", "--photos", "2", "--repeats", "1", "--data", str(tmp_path),
    )  # fmt: skip
    assert report["narrowing"] is True
    assert report["cropper_package"] == str(REPO / "cropper")
    assert len(report["photos"]) == 2
    for mode in ("smartcrop", "narrowed", "whole_grid"):
        assert report["seconds_per_1024px_photo"][mode] > 0
        assert "error" not in report["12mp"][mode], report["12mp"][mode]
        assert report["12mp"][mode]["seconds"] > 0
    assert set(report["ratio_to_smartcrop"]) == {"narrowed", "whole_grid"}
