"""Every notebook runs top to bottom, offline on tiny models, and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart", "prompt_lab", "house_style")
CELL_TIMEOUT = 600  # seconds; generous for a slow CI machine, not a speed check


def _read(name: str):
    import nbformat

    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def test_every_notebook_is_listed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_committed_notebook_carries_no_outputs(name):
    import nbformat

    notebook = _read(name)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "a notebook with no code"
    for i, cell in enumerate(code):
        where = f"{name} code cell {i}"
        assert cell.outputs == [], f"{where} has outputs: clear them (notebooks/README.md)"
        assert cell.execution_count is None, f"{where} has an execution count: clear it"


@pytest.mark.parametrize("name", NAMES)
def test_the_first_code_cell_picks_the_vlm(name):
    first = next(c for c in _read(name).cells if c.cell_type == "code")
    assert 'VLM = os.environ.get("CROPPER_NOTEBOOK_VLM")' in first.source


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """One folder of demo models for every notebook of the run, built by the first."""
    return tmp_path_factory.mktemp("demo_models")


@pytest.mark.slow
def test_the_demo_models_are_built_once_where_the_environment_says(demo_dir, monkeypatch):
    import json
    import shutil

    from cropper.testing.demo import demo_models

    monkeypatch.setenv("CROPPER_DEMO_DIR", str(demo_dir))
    first = demo_models()
    assert first["clip"] == f"local-dir:{(demo_dir / 'clip').resolve()}"
    assert Path(first["vlm"]).parent == demo_dir and Path(first["head"]).parent == demo_dir
    written = {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file()}
    assert demo_models() == first
    assert {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file()} == written
    # A moved cache: the head is tied to its CLIP's new place again.
    moved = demo_dir.parent / "moved"
    shutil.copytree(demo_dir, moved)
    there = demo_models(moved)
    assert there["clip"] == f"local-dir:{(moved / 'clip').resolve()}"
    card = json.loads(Path(there["head"]).with_suffix(".json").read_text())
    assert card["config"]["embedder"] == there["clip"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_notebook_runs_top_to_bottom_offline(name, demo_dir, monkeypatch):
    from nbclient import NotebookClient

    # The kernel inherits this environment: offline, the tiny models, no real VLM.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("CROPPER_DEMO_DIR", str(demo_dir))
    monkeypatch.delenv("CROPPER_NOTEBOOK_VLM", raising=False)
    notebook = _read(name)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    # Progress bars draw as widgets (tqdm.auto with ipywidgets): no "IProgress not found".
    text = " ".join(
        str(out.get("text", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "IProgress" not in text
