"""The tests' own layout: test modules import shared code from tests/helpers.py and tests/support/, never from
another test module (or a conftest), so moving or deleting one test file never breaks another."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
FOLDERS = {"unit", "edge", "e2e", "tui"}


def _imported(path: Path) -> set[str]:
    """Every module an import statement in the file names (top level, inside functions, under TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from tests.unit import test_x`
    return out


def _is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return name.startswith("tests.") and (last.startswith("test_") or last == "conftest")


def test_no_test_module_imports_another() -> None:
    found = {
        str(p.relative_to(TESTS)): sorted(m for m in _imported(p) if _is_test_module(m))
        for p in sorted(TESTS.rglob("*.py"))
    }
    assert {f: ms for f, ms in found.items() if ms} == {}
    assert len(found) > 40  # the walk saw the suite


def test_test_modules_live_in_the_folders_by_kind() -> None:
    stray = [str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py") if p.parent.name not in FOLDERS]
    assert stray == []
    for folder in FOLDERS:
        assert (TESTS / folder / "__init__.py").is_file(), folder


def test_helpers_hold_no_tests_and_no_fixtures() -> None:
    tree = ast.parse((TESTS / "helpers.py").read_text())
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert names and not [n for n in names if n.startswith(("test_", "Test"))]
    decorated = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.decorator_list]
    assert decorated == []  # fixtures belong in a conftest


def test_no_test_points_runq_at_the_developers_own_cache() -> None:
    """Tests borrow the llama.cpp build from the developer's cache (~/.cache/runq) but give runq a cache of their
    own (helpers.session_cache / own_cache): a calibration or tune a test writes must never become the
    developer's (a test's constants there made `runq plan` predict 5x too slow afterwards)."""
    offenders = [
        f"{p.relative_to(TESTS)}:{n}"
        for p in sorted(TESTS.rglob("*.py"))
        if p != Path(__file__).resolve()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "RUNQ_CACHE_DIR" in line and "path.parent.parent" in line
    ]
    assert offenders == []
