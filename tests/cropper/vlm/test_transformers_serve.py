"""Against a real peer: ``transformers serve``, an OpenAI-compatible server nobody here wrote.

It serves the tiny random Qwen3-VL on 127.0.0.1. Like many servers it ignores ``n`` (one
choice a request) and ``response_format`` (no constrained decoding), so a random model's
replies hold no box: cropper must still answer, ask again for each sample, and say plainly
that it fell back and why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cropper import Cropper
from cropper.cli.main import main

pytestmark = pytest.mark.slow

if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
    pytest.skip(
        "transformers serve needs transformers[serving] (pip install -e '.[dev]' has it)",
        allow_module_level=True,
    )

#: Seconds the server may take to load the tiny model and answer /health.
START_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_qwen3_vl: Path, tmp_path_factory: pytest.TempPathFactory):
    """``transformers serve FOLDER`` on a free port; yields its API root and model name."""
    port = _free_port()
    home = tmp_path_factory.mktemp("hf-home")  # an empty cache: it lists the one model only
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = (home / "serve.log").open("w")
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]
    process = subprocess.Popen(
        [*command, "serve", str(tiny_qwen3_vl), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu", "--log-level", "warning"],  # fmt: skip
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {(home / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("transformers serve did not start in time")
            time.sleep(0.5)
        yield f"{url}/v1", str(tiny_qwen3_vl)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_the_peer_ignores_n_and_response_format(served):
    """What the tests below rely on, checked on the wire rather than assumed."""
    url, model = served
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Answer with JSON."}],
        "n": 2,
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    }
    reply = httpx.post(f"{url}/chat/completions", json=body, timeout=60).json()
    assert len(reply["choices"]) == 1


def test_cropper_gets_a_crop_asks_again_for_each_sample_and_says_it_fell_back(served):
    url, model = served
    photo = Image.new("RGB", (96, 72), (120, 80, 40))
    settings = dict(refine_rounds=0, retries=0, max_tokens=16, query_side=64)
    with Cropper(vlm=url, clip=None, head=None, index=None, **settings) as cropper:
        result = cropper.crop(photo, task="free", samples=2, temperature=0.7, seed=1)
    # Two samples asked for, one choice a reply: it asked again.
    assert len(result.rounds[0].replies) == 2
    assert result.box is not None and result.pixels == (0, 0, 96, 72)
    # Honest: the whole photo stood in, because the server ignored the schema.
    assert result.fallback.startswith("the whole photo, as propose round 0 gave no valid box")
    assert "ignores it" in result.fallback and "response_format" in result.fallback
    assert result.to_json()["fallback"] == result.fallback


def test_the_command_line_reports_the_fallback_and_strict_fails(served, tmp_path, capsys):
    url, model = served
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (96, 72), (40, 80, 120)).save(path)
    argv = ["crop", str(path), "--vlm", url, "--model", model, "--clip", "none", "--head",
            "none", "--index", "none", "--max-tokens", "16", "--json"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out)
    assert line["box"] == [0, 0, 96, 72] and "response_format" in line["fallback"]
    assert "cropper: 1 of 1 photos fell back:" in captured.err
    assert main([*argv, "--strict"]) == 1
