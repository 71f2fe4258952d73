"""Importing runq's modules imports no hardware, hub, UI or numeric library (they load when a call needs them);
`runq --help` imports almost nothing. Checked per folder, in a fresh interpreter each, so a new module is covered
without being listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "launcher"
HEAVY = ("pynvml", "psutil", "huggingface_hub", "textual", "cpuinfo", "requests", "numpy", "gguf")
FOLDERS = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tui")


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("folder", FOLDERS)
def test_modules_import_nothing_heavy(folder: str) -> None:
    names = [f"launcher.{folder}.{p.stem}" for p in sorted((ROOT / folder).glob("*.py")) if p.stem != "__init__"]
    loaded = _modules_after("\n".join(f"import {n}" for n in names))
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY), folder


def test_help_is_light() -> None:
    code = "from launcher.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    loaded = _modules_after(code)
    assert not {m.split(".")[0] for m in loaded} & {*HEAVY, "pydantic"}
