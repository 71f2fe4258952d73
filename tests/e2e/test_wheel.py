"""The wheel on its own: installed into a clean virtual environment (no source tree, no dev extras, only what
`pip install runq` brings), its `runq demo` runs end to end: a generated model (launcher/measure/synth.py needs
gguf and numpy at run time), the plan, the shared llama.cpp build, a real server and runq's verification.

About half a minute: a venv, pip installing the runtime dependencies (from the local wheel mirror and pip's
cache), the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from launcher.llama.build import Build
from tests.helpers import default_signals


def test_a_clean_venv_with_only_the_wheel_runs_the_demo(wheel: Path, llama_build: Build, tmp_path: Path) -> None:
    t0 = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    r = subprocess.run([*pip, "install", "-q", str(wheel)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    installed = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True).stdout.lower()
    assert not {"pytest", "hypothesis", "ruff", "mypy", "jinja2"} & {x.split("==")[0] for x in installed.split()}
    # Nothing of the source tree or of this test's venv can be imported there: no PYTHONPATH, another cwd.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # A cache of its own that sees the shared llama.cpp build: the demo writes its model afresh, as a first run does.
    cache = tmp_path / "cache"
    (cache / "builds").mkdir(parents=True)
    (cache / "builds" / llama_build.key).symlink_to(llama_build.path)
    env |= {"RUNQ_CACHE_DIR": str(cache), "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import launcher; print(launcher.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout  # fmt: skip
    assert where.startswith(str(venv)), where
    installed_s = time.monotonic() - t0
    demo = subprocess.run([str(venv / "bin" / "runq"), "demo"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, timeout=600, preexec_fn=default_signals)  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Traceback" not in demo.stderr
    assert "the model answered" in demo.stdout and "override lines: exactly the" in demo.stdout
    assert (cache / "demo" / "runq-demo.gguf").is_file()  # generated in the wheel's venv
    print(f"\nwheel: venv + install {installed_s:.0f} s, demo {time.monotonic() - t0 - installed_s:.0f} s")
