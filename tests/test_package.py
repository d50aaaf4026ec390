"""Packaging: a light import, and prompt files that ship inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "vllm", "open_clip", "faiss"]


@pytest.mark.parametrize("module", ["cropper", "retrieval"])
def test_import_does_not_load_heavy_libraries(module):
    code = (
        f"import sys, {module}; "
        + (
            "from cropper import Box, Cropper, parse_boxes, CropResult; "
            if module == "cropper"
            else ""
        )
        + f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_wheel_ships_the_prompt_files_and_finds_them(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("cropper-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for task in ("free", "subject", "aspect"):
        assert f"cropper/prompt_files/{task}/propose.j2" in names
    assert "cropper/prompt_files/README.md" in names and "cropper/py.typed" in names
    assert any(n.startswith("retrieval/") for n in names)
    # Installed from the wheel, away from the checkout, cropper finds its shipped prompts.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "from cropper.agent.prompts import default_prompt_dir as d; print(d())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    found = Path(out.stdout.strip())
    assert found == target / "cropper" / "prompt_files"
    assert (found / "free" / "refine.j2").is_file()
