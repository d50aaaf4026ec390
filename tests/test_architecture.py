"""The house keeps its shape: dependencies point one way, and no module imports in a circle.

The imports are read from the source (``ast``), the lazy ones inside functions included;
imports under ``if TYPE_CHECKING:`` are for type checkers only and do not count. See
docs/architecture.md for the layers and what each holds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The layers, bottom first. A package may import its own modules and those of lower
#: layers only; the packages of one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cropper.core",),
    ("retrieval", "cropper.vlm", "cropper.views"),
    ("cropper.scoring",),
    ("cropper.agent",),
    ("cropper.data",),
    ("cropper.evaluation",),
    ("cropper.testing",),
    ("cropper.cli",),
    ("cropper",),  # the package's face: cropper/__init__.py and __main__.py
)


def modules() -> dict[str, Path]:
    found = {}
    for top in ("cropper", "retrieval"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def package(module: str) -> str:
    """The layer package a module belongs to: the longest one of LAYERS it lies in."""
    names = [name for layer in LAYERS for name in layer]
    owners = [n for n in names if module == n or module.startswith(n + ".")]
    return max(owners, key=len)


def layer(module: str) -> int:
    owner = package(module)
    return next(i for i, names in enumerate(LAYERS) if owner in names)


def imports(module: str) -> set[str]:
    """The project modules ``module`` imports at run time (lazy imports included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", "")) == (
            "TYPE_CHECKING"
        ):
            typing_only |= {id(n) for n in ast.walk(node)}
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base = here[: len(here) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != module:
                found.add(target)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    assert all(layer(m) >= 0 for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_one_above_it_or_beside_it(module):
    wrong = [
        target
        for target in sorted(GRAPH[module])
        if layer(target) > layer(module)
        or (layer(target) == layer(module) and package(target) != package(module))
    ]
    assert not wrong, f"{module} (layer {layer(module)}) imports {wrong}"


def test_the_bank_stands_alone_on_the_core_types():
    for module, targets in GRAPH.items():
        if module.startswith("retrieval"):
            outside = [t for t in targets if not t.startswith(("retrieval", "cropper.core"))]
            assert not outside, f"{module} imports {outside}"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert circles(GRAPH) == []


def test_the_checks_find_what_they_should():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(planted) == [["a", "b", "c"]]
    assert layer("cropper.cli.main") > layer("cropper.agent.loop") > layer("cropper.core.boxes")
    assert package("cropper.agent.loop") == "cropper.agent" and layer("retrieval.index") == 1
