"""The first minutes: a crop with nothing downloaded, defaults fitting the machine, quiet runs."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import cropper
from cropper.agent import components
from cropper.cli.args import cropper_from_args
from cropper.cli.main import _Console, build_parser, main
from cropper.core import defaults
from cropper.testing.synthetic import synthetic_photo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    synthetic_photo(3, size=(320, 240)).save(path)
    return path


# -- defaults by hardware --------------------------------------------------------------------


@pytest.mark.parametrize(("cuda", "vlm", "clip"), [
    (True, "Qwen/Qwen3-VL-8B-Instruct", "ViT-L-14:openai"),
    (False, "Qwen/Qwen3-VL-2B-Instruct", "ViT-B-32:openai"),
])  # fmt: skip
def test_the_defaults_fit_the_machine(monkeypatch, cuda, vlm, clip):
    monkeypatch.setattr(defaults, "has_cuda", lambda: cuda)
    monkeypatch.delenv("CROPPER_VLM", raising=False)
    monkeypatch.delenv("CROPPER_CLIP", raising=False)
    assert components.vlm_spec(components.DEFAULT) == vlm
    assert components.clip_spec(components.DEFAULT) == clip
    assert clip in defaults.DEFAULT_HEADS  # and its head follows it
    monkeypatch.setenv("CROPPER_CLIP", "hf:some/model")  # the environment still wins
    assert components.clip_spec(components.DEFAULT) == "hf:some/model"


# -- models that are not here: one message, in flags ------------------------------------------


@pytest.mark.slow
def test_every_missing_model_is_named_in_one_message_as_flags(photo, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(defaults, "has_cuda", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))  # nothing cached
    for name in ("CROPPER_VLM", "CROPPER_CLIP", "CROPPER_HEAD", "CROPPER_INDEX"):
        monkeypatch.delenv(name, raising=False)
    assert main(["crop", str(photo)]) == 2
    err = capsys.readouterr().err
    message = err[err.index("cropper: error:") :]
    assert "3 models not on this machine" in message
    for flag in ("--vlm Qwen/Qwen3-VL-2B-Instruct", "--clip ViT-B-32:openai", "--head https://"):
        assert flag in message
    assert "then --vlm DIR" in message and "then --clip local-dir:DIR" in message
    assert "--vlm none --clip none crops by saliency" in message and "--demo" in message
    assert "Cropper(" not in message  # flags, not Python


def test_an_unreachable_hub_means_working_offline_at_once(monkeypatch):
    from cropper.cli.args import offline_unless_the_hub_answers

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
    offline_unless_the_hub_answers()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


# -- what works with nothing downloaded -------------------------------------------------------


def test_no_vlm_and_no_clip_crops_by_saliency_and_says_so(photo, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["crop", str(photo), "--vlm", "none", "--clip", "none", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert any("spectral-residual saliency" in n for n in line["notes"])
    assert any("spectral-residual saliency" in r.getMessage() for r in caplog.records)
    left, top, right, bottom = line["box"]
    assert (right - left) * (bottom - top) < 320 * 240  # not simply the whole photo


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_on_tiny_models_and_says_the_box_is_arbitrary(
    photo, capsys, caplog, monkeypatch, tmp_path
):
    monkeypatch.setenv("CROPPER_DEMO_DIR", str(tmp_path / "demo"))
    with caplog.at_level(logging.WARNING):
        assert main(["crop", str(photo), "--demo", "--json", "--rounds", "0"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert "--demo: tiny random models; the box is arbitrary" in line["notes"]
    assert any("the boxes are arbitrary" in r.getMessage() for r in caplog.records)
    assert main(["crop", str(photo), "--demo", "--vlm", "none"]) == 2
    assert "--demo brings its own models: drop --vlm" in capsys.readouterr().err


def test_the_readme_opens_its_crop_section_with_what_needs_no_download():
    text = (ROOT / "README.md").read_text()
    crop = text[text.index("## Crop") :]
    first_block = crop[crop.index("```") + 3 :].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line.startswith("cropper crop")]
    assert commands and "--vlm none --clip none" in commands[0] and "--demo" in commands[1]
    assert crop.index("--vlm none --clip none") < crop.index("vllm serve")


# -- installing, and the package itself --------------------------------------------------------


@pytest.mark.parametrize("command", [["cropper"], [sys.executable, "-m", "cropper"]])
def test_the_version_is_printed_by_either_entry_point(command):
    if command == ["cropper"]:
        command = [str(Path(sys.executable).with_name("cropper"))]
    run = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == f"cropper {cropper.__version__}"


def test_dir_lists_the_exports():
    assert {"Cropper", "CropResult", "Box", "load_image"} <= set(dir(cropper))


def test_a_notebooks_extra_brings_jupyter_and_widgets():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=\[]", d)[0] for d in extras["notebooks"]}
    assert {"jupyterlab", "ipywidgets"} <= names
    assert "ipywidgets" in {re.split(r"[<>=\[]", d)[0] for d in extras["dev"]}


# -- the command line's own flags --------------------------------------------------------------


def test_the_loops_settings_are_flags_named_as_cropconfig_names_them(photo):
    args = build_parser().parse_args(
        ["crop", str(photo), "--vlm", "none", "--clip", "none", "--seed", "7", "--exemplars",
         "12", "--crops", "4", "--rounds", "1", "--samples", "3", "--temperature", "0.5",
         "--min-side", "0.2"]  # fmt: skip
    )
    config = cropper_from_args(args).config
    assert (config.seed, config.exemplars, config.crops, config.refine_rounds) == (7, 12, 4, 1)
    assert (config.samples, config.temperature, config.min_side) == (3, 0.5, 0.2)


def test_two_photos_to_an_image_file_name_are_refused(photo, tmp_path, capsys):
    other = tmp_path / "other.jpg"
    synthetic_photo(4, size=(200, 150)).save(other)
    assert main(["crop", str(photo), str(other), "--vlm", "none", "--clip", "none",
                 "-o", str(tmp_path / "two.jpg")]) == 2  # fmt: skip
    assert "names a file, but there are 2 photos" in capsys.readouterr().err
    assert not (tmp_path / "two.jpg").exists()


def test_index_builds_json_counts_the_lines_the_dataset_skipped(tmp_path, tiny_clip, capsys):
    (tmp_path / "photos").mkdir()
    rows = []
    for i in range(3):
        synthetic_photo(i, size=(64, 48)).save(tmp_path / "photos" / f"p{i}.png")
        rows.append(json.dumps({"image": f"photos/p{i}.png", "crops": [[0, 0, 64, 48]]}))
    rows += ["not json", '{"image": "photos/gone.png", "crops": [[0, 0, 4, 4]]}', "{}", "[]"]
    jsonl = tmp_path / "crops.jsonl"
    jsonl.write_text("\n".join(rows) + "\n")
    argv = ["index", "build", "--dataset", "jsonl", "--root", str(jsonl), "--clip", tiny_clip,
            "--out", str(tmp_path / "bank"), "--no-progress", "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["count"], summary["skipped"]) == (3, 4)


# -- quiet by default, detailed on request ------------------------------------------------------


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_console_shows_croppers_lines_and_others_only_when_asked():
    quiet, verbose = _Console(0), _Console(1)
    ours = _record("cropper.agent.loop", logging.WARNING, "a photo fell back")
    theirs = _record("root", logging.ERROR, "Failed to download weights")  # open_clip's
    assert quiet.filter(ours) and quiet.format(ours) == "cropper: WARNING: a photo fell back"
    assert not quiet.filter(theirs)  # cropper's own error says it, once
    assert verbose.filter(theirs)
    assert verbose.format(theirs) == "root: ERROR: Failed to download weights"  # not cropper's


def test_a_library_that_prints_its_own_lines_is_not_printed_twice():
    library = logging.getLogger("some_hub_library")
    handler = logging.NullHandler()
    library.addHandler(handler)
    try:
        retry = _record("some_hub_library.http", logging.WARNING, "retrying in 1 s")
        assert not _Console(2).filter(retry)
    finally:
        library.removeHandler(handler)


def test_result_lines_go_through_the_progress_bars_writer(photo, tmp_path, monkeypatch, capsys):
    import tqdm

    written = []
    real = tqdm.tqdm.write

    def record(line, file=None, **kw):
        written.append(line)
        real(line, file=file, **kw)

    monkeypatch.setattr(tqdm.tqdm, "write", staticmethod(record))
    other = tmp_path / "b.jpg"
    synthetic_photo(5, size=(200, 150)).save(other)
    assert main(["crop", str(photo), str(other), "--vlm", "none", "--clip", "none"]) == 0
    assert sum(": box [" in line for line in written) == 2


def test_a_run_prints_no_line_of_another_library(photo):
    run = subprocess.run(
        [sys.executable, "-m", "cropper", "crop", str(photo), "--vlm", "none", "--clip", "none"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert all(line.startswith("cropper: ") for line in run.stderr.splitlines()), run.stderr
    assert Image.open(photo).size == (320, 240)


def test_transformers_loading_bars_only_with_verbose(monkeypatch):
    import transformers.utils.logging as hf_logging

    from cropper.vlm import transformers_engine

    logger = transformers_engine.logger
    before = logger.level
    monkeypatch.setattr(hf_logging, "_tqdm_active", True)
    try:
        logger.setLevel(logging.INFO)
        transformers_engine.quiet_loading_bar()
        assert hf_logging.is_progress_bar_enabled()  # -v: the bar stays
        logger.setLevel(logging.WARNING)
        transformers_engine.quiet_loading_bar()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        logger.setLevel(before)
