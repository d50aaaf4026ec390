"""``import retrieval`` stays light: torch, faiss and open_clip load only when used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "faiss", "open_clip", "transformers")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_retrieval_is_light() -> None:
    assert _loaded_after("import retrieval") == []


def test_names_resolve_without_loading_heavy_packages() -> None:
    code = (
        "import retrieval\n"
        "from retrieval import ExemplarIndex, Hit, Exemplar, read_jsonl\n"
        "from retrieval import select_crops, ClipEmbedder, Embedder, ExemplarCrop\n"
        "assert ExemplarIndex.__module__ == 'retrieval.index'\n"
        "assert set(retrieval.__all__) <= set(dir(retrieval))"
    )
    assert _loaded_after(code) == []


def test_unknown_name_is_an_attribute_error() -> None:
    import pytest

    import retrieval

    with pytest.raises(AttributeError, match="no_such_thing"):
        retrieval.no_such_thing  # noqa: B018
