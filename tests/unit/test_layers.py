"""The house holds its shape: rules by folder, read from the source.

- Each folder of launcher/ may import only the folders listed for it in LAYERS (and the ground floor): the pure
  core imports only itself and the ground floor, nothing below the pipeline imports it or a front end, the TUI
  never imports the CLI. A new folder fails here until it has a rule.
- A module that says it is pure (its docstring has "Pure") reaches only modules that say so too, or the ground
  floor; every module of a pure folder says so.
- No import circle; no function over 80 lines; no file over 450 lines.

Imports are read from every import statement (top level, under TYPE_CHECKING, or inside a function), so a lazy
import that runs back up a layer counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "launcher"

GROUND = {"errors", "units", "paths", "progress"}  # launcher/*.py: imported by anyone, importing nothing above
CORE = {"model", "catalog", "machine", "plan"}
LAYERS: dict[str, set[str]] = {
    "model": set(),
    "catalog": {"model"},
    "machine": {"model"},
    "plan": {"model", "catalog", "machine"},
    "view": CORE | {"llama"},  # renders plans; llama/argv for the command line
    "hub": CORE,
    "llama": CORE,
    "measure": CORE | {"llama"},
    "service": CORE | {"llama", "view"},
    "pipeline": CORE | {"hub", "llama", "measure", "service", "view"},
    "tui": CORE | {"hub", "llama", "measure", "service", "view", "pipeline"},
    "cli": CORE | {"hub", "llama", "measure", "service", "view", "pipeline", "tui"},
}
PURE_FOLDERS = {"model", "catalog", "plan", "view"}  # every module in them is pure; machine/ is, but for probe.py


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def folder(module: str) -> str:
    """'launcher.plan.place' -> 'plan'; 'launcher.errors' -> 'ground'; launcher itself and __main__ -> 'top'."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "top"
    if parts[1] in GROUND:
        return "ground"
    return parts[1]


def _imports(name: str) -> set[str]:
    """The launcher modules `name` imports, anywhere in its source."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in MODULES and m != name and m != "launcher"}


GRAPH = {name: _imports(name) for name in MODULES}


def _says_pure(name: str) -> bool:
    return "Pure" in (ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8"))) or "")


def _closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_is_read() -> None:
    assert "launcher.plan.types" in GRAPH["launcher.plan.choose"]  # from launcher.plan.types import …
    assert "launcher.plan.overrides" in GRAPH["launcher.plan.phases"]  # from launcher.plan import overrides as ovr
    assert "launcher.hub.repo" in GRAPH["launcher.pipeline.target"]  # inside a function
    assert folder("launcher.errors") == "ground" and folder("launcher.plan.place") == "plan"


def test_every_folder_has_a_rule_and_keeps_it() -> None:
    bad = []
    for name, deps in sorted(GRAPH.items()):
        here = folder(name)
        if here == "top":
            continue
        assert here in LAYERS or here == "ground", f"{name}: the folder {here}/ has no rule in LAYERS"
        allowed = set() if here == "ground" else LAYERS[here]
        for dep in sorted(deps):
            there = folder(dep)
            if there not in (here, "ground") and there not in allowed:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports against the folder rules:\n" + "\n".join(bad)


def test_ground_floor_imports_only_itself() -> None:
    for name in (n for n in MODULES if folder(n) == "ground"):
        assert {folder(d) for d in GRAPH[name]} <= {"ground"}, name


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if folder(n) in PURE_FOLDERS and MODULES[n].name != "__init__.py")
)
def test_pure_folders_say_they_are_pure(name: str) -> None:
    assert _says_pure(name), f"{name} is in a pure folder but its docstring does not say 'Pure'"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if MODULES[n].name != "__init__.py" and _says_pure(n)))
def test_pure_modules_reach_only_pure_modules(name: str) -> None:
    reached = _closure(name)
    bad = sorted(m for m in reached if folder(m) != "ground" and MODULES[m].name != "__init__.py" and not _says_pure(m))
    assert not bad, f"{name} says it is pure but reaches {bad}"


def test_no_import_cycle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450


def test_no_function_over_80_lines() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_no_file_over_450_lines() -> None:
    long = [
        f"{n}: {c}" for n, p in MODULES.items() if (c := p.read_text(encoding="utf-8").count("\n")) > MAX_FILE_LINES
    ]
    assert not long, long


def test_every_package_states_its_rule() -> None:
    for path in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, f"{path.parent.name}/ has no docstring saying what it holds and its rule"
