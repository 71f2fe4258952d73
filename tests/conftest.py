"""Shared fixtures: generated GGUF models (never committed), an isolated runq home, the llama.cpp build and the
environment that finds it, runq processes cleaned up after each test; and the `llama` marker, put on every test
whose fixtures reach `llama_build` (`pytest -m "not llama"` runs the rest without a build)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.llama.build import Build
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from tests.helpers import RunningRunq, session_cache

# Every generated model the reader, classifier and planner tests run over.
MODEL_SPECS: dict[str, tuple[SynthSpec, int]] = {
    "deepseek2-q8": (SynthSpec(arch="deepseek2"), 1),
    "deepseek2-f16": (SynthSpec(arch="deepseek2", weight_type="F16", n_layer=3), 1),
    "deepseek2-fused": (SynthSpec(arch="deepseek2", fused_gate_up=True, n_dense_lead=2, n_layer=5), 1),
    "deepseek2-kquants": (SynthSpec(arch="deepseek2", n_embd=256, expert_type="Q2_K", n_ff_exp=256), 1),
    "qwen3moe-q8": (SynthSpec(arch="qwen3moe", n_layer=3), 1),
    "qwen3moe-f16": (SynthSpec(arch="qwen3moe", weight_type="F16"), 1),
    "deepseek2-3shards": (SynthSpec(arch="deepseek2", n_layer=5, n_ctx_train=4096), 3),
}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def models(models_dir: Path) -> dict[str, SynthModel]:
    out = {}
    for key, (spec, shards) in MODEL_SPECS.items():
        out[key] = write_model(spec, models_dir / key / f"{key}.gguf", shards=shards)
    return out


@pytest.fixture(params=sorted(MODEL_SPECS))
def any_model(request: pytest.FixtureRequest, models: dict[str, SynthModel]) -> SynthModel:
    return models[request.param]


@pytest.fixture(autouse=True)
def runq_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own RUNQ_HOME and Hugging Face cache so the real ones are never touched, and
    no network: tests that talk to a hub start their own local one (tests/hubserver.py)."""
    home = tmp_path / "runq-home"
    monkeypatch.setenv("RUNQ_HOME", str(home))
    monkeypatch.delenv("RUNQ_CACHE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("RUNQ_AUTO_CALIBRATE", "0")  # a first real `run` would calibrate (up to a minute)
    return home


@pytest.fixture(scope="session")
def llama_build() -> Build:
    """The CPU binaries of llama.cpp, built from the PyPI source by `runq build` itself.

    Cached across test runs in RUNQ_TEST_CACHE_DIR (default ~/.cache/runq), so only the first run on a
    machine pays for the build (about 5 minutes on 2 cores).
    """
    import contextlib
    import io
    import json
    import os

    from launcher.cli.main import main
    from launcher.llama.build import load_build

    cache = os.environ.get("RUNQ_TEST_CACHE_DIR") or str(Path.home() / ".cache" / "runq")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNQ_CACHE_DIR", cache)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["build", "--source", "pypi", "--json"])
        assert code == 0, "runq build --source pypi failed: see the log in the cache's logs/ directory"
        build = load_build(Path(json.loads(out.getvalue())["bin_dir"]).parent)
    assert build is not None
    return build


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `llama` every test that needs the llama.cpp build: its fixture closure (direct or through `env`,
    `cache`, …) holds llama_build."""
    for item in items:
        if "llama_build" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.llama)


@pytest.fixture
def env(llama_build: Build) -> dict[str, str]:
    """This process's environment (the test's RUNQ_HOME) with the shared llama.cpp build's cache."""
    return {**os.environ, "RUNQ_CACHE_DIR": str(session_cache(llama_build))}


@pytest.fixture
def running() -> Iterator[list[RunningRunq]]:
    """runq processes a test starts: whatever is left of them (and their llama-servers) is killed after it."""
    started: list[RunningRunq] = []
    yield started
    for r in started:
        try:
            kids = [c for c in psutil.Process(r.proc.pid).children(recursive=True) if "llama-server" in c.name()]
        except psutil.NoSuchProcess:
            kids = []
        for kid in kids:
            kid.kill()
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runq's wheel, built from a clean copy of the sources (no stale build/ directory can leak into it)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    for d in ("launcher", "profiles", "templates"):
        shutil.copytree(root / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(root / f, src / f)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return next(out.glob("runq-*.whl"))
