"""The package's import rule, read from the source (lazy imports inside functions count):

    errors, registry  <  core  <  task  <  store  <  policy_search  <  ship  <  cli, api, workers

A module imports only modules of its own layer or of the layers before it, never one after; the
module graph has no cycle; only store/ and later import Optuna; only core/ imports
Torch-Pruning. ``import autoprune`` and parsing the CLI's flags load neither torch nor Optuna."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autoprune"
LAYERS = ["base", "core", "task", "store", "policy_search", "ship", "outer"]
BASE = {"autoprune.errors", "autoprune.registry"}
OUTER = {"autoprune", "autoprune.__main__", "autoprune.api", "autoprune.workers", "autoprune.testing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module in OUTER or module.startswith("autoprune.cli"):
        return "outer"
    sub = module.split(".")[1]
    assert sub in LAYERS, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return sub


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # "from autoprune.x import y" may import the module autoprune.x.y
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: {i for i in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 30
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module: str) -> None:
    mine = LAYERS.index(layer(module))
    later = sorted(i for i in GRAPH[module] if LAYERS.index(layer(i)) > mine and not module.startswith(i + "."))
    assert not later, f"{module} ({layer(module)}) imports later layers: {later}"


def test_no_import_cycles() -> None:
    """No cycle between modules (a package importing its own submodules does not count)."""
    graph = {m: {i for i in deps if not i.startswith(m + ".") and not m.startswith(i + ".")} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("library, allowed", [
    ("optuna", {"store", "policy_search", "ship", "outer"}),
    ("optuna_dashboard", {"policy_search"}),
    ("torch_pruning", {"core"}),
])
def test_libraries_stay_in_their_layers(library: str, allowed: set[str]) -> None:
    users = {m for m, p in MODULES.items() if any(i == library or i.startswith(library + ".") for i in imports(p))}
    assert users, f"nothing imports {library}: is the rule still needed?"
    wrong = sorted(m for m in users if layer(m) not in allowed)
    assert not wrong, f"{library} imported outside {sorted(allowed)}: {wrong}"


def test_the_rule_catches_a_back_edge(tmp_path: Path) -> None:
    """The checker itself: a core module that imports the search is reported."""
    fake = tmp_path / "bad.py"
    fake.write_text("def f():\n    from autoprune.policy_search import study\n")
    assert "autoprune.policy_search.study" in imports(fake)
    assert LAYERS.index(layer("autoprune.policy_search.study")) > LAYERS.index(layer("autoprune.core.prune"))


def test_cli_and_package_import_light() -> None:
    code = ("import sys, autoprune, autoprune.cli as c; c.build_parser().parse_args(['search', '--budget-flops', '0.5']);"
            "heavy = [m for m in ('torch', 'optuna', 'torch_pruning', 'fvcore') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
