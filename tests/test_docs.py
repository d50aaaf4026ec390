"""The docs' tables name real tests: every `tests/...py::name` they cite must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^`]*\])?`")
DOCS = ["docs/robustness.md"]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_test_exists(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    cited = CITED.findall(text)
    assert len(cited) >= 40, f"{doc} cites only {len(cited)} tests"
    missing = [
        f"{file}::{name}"
        for file, name in cited
        if not (ROOT / file).is_file() or name not in _tests_in(ROOT / file)
    ]
    assert not missing, f"{doc} cites tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_table_row_cites_a_test(doc):
    rows = [
        line
        for line in (ROOT / doc).read_text(encoding="utf-8").splitlines()
        if line.startswith("|") and not set(line) <= set("|- ") and "what you get" not in line
    ]
    bare = [row for row in rows if not CITED.search(row)]
    assert not bare, f"{doc} rows without a test: {bare}"
