"""The pure core imports no hardware, hub or UI libraries; `runq --help` imports almost nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pynvml", "psutil", "huggingface_hub", "textual", "cpuinfo", "requests", "numpy", "gguf")
PURE = [
    "launcher.gguf",
    "launcher.ggml_types",
    "launcher.tensors",
    "launcher.hparams",
    "launcher.model",
    "launcher.machine",
    "launcher.units",
    "launcher.render",
    "launcher.render_plan",
    "launcher.planner",
    "launcher.overrides",
    "launcher.memory",
    "launcher.projection",
    "launcher.estimate",
    "launcher.choose",
    "launcher.argv",
    "launcher.inputs",
    "launcher.progress",
    "launcher.service_unit",
    "launcher.llama_log",
    "launcher.catalog",
    "launcher.arch_shapes",
    "launcher.synth",  # gguf/numpy only when a model is written
    "launcher.speed",
    "launcher.tune",
]


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_nothing_heavy(module: str) -> None:
    loaded = _modules_after(f"import {module}")
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)


def test_help_is_light() -> None:
    loaded = _modules_after("from launcher.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not {m.split(".")[0] for m in loaded} & {*HEAVY, "pydantic"}
