"""The layers hold: the pure core imports no edge or front end, and no import circle exists inside launcher/.

Read from the source (every import statement: at the top, under TYPE_CHECKING, or inside a function), so a lazy
import that runs back up a layer counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "launcher"

PURE = [
    "argv", "arch_shapes", "catalog", "choose", "errors", "estimate", "ggml_types", "gguf", "hparams", "inputs",
    "machine", "memory", "model", "overrides", "planner", "progress", "render", "render_plan", "service_unit",
    "tensors", "units", "build_config", "hub_layout", "llama_log", "paths", "sampling", "speed", "tune",
]  # fmt: skip
EDGES = ("hub", "hardware", "download", "runner", "procs", "service", "build", "pull", "target", "local_models",
         "tui", "cli", "hub_repo", "model_list", "workers", "calibration", "bench_run", "tuned_store",
         "measured")  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    return out


MODULES = _modules()


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
    assert "launcher.planner" in GRAPH["launcher.choose"]  # from launcher.planner import …
    assert "launcher.overrides" in GRAPH["launcher.planner"]  # from launcher import overrides as ovr
    assert {"launcher.catalog", "launcher.hub"} <= GRAPH["launcher.target"]  # top level and inside a function


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_edge(module: str) -> None:
    reached = _closure(f"launcher.{module}")
    tops = {m: m.removeprefix("launcher.").split(".")[0] for m in reached}
    bad = sorted(m for m, top in tops.items() if top in EDGES or top.startswith("cli_"))
    assert not bad, f"launcher.{module} reaches {bad}"


def test_no_core_or_edge_module_imports_a_front_end() -> None:
    front = {m for m in MODULES if m.startswith(("launcher.cli", "launcher.tui"))}
    for name, deps in GRAPH.items():
        if name in front or name == "launcher.__main__":
            continue
        assert not deps & front, f"{name} imports the front end {sorted(deps & front)}"


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
LONG_FOR_NOW: set[str] = set()


def test_no_function_over_80_lines() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in LONG_FOR_NOW:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long
