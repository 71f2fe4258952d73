"""`runq build` for real: the pinned llama.cpp from PyPI, built once per machine and cached; its errors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from launcher.llama import build as bld
from launcher.llama import build_config as bc
from launcher.llama import source
from launcher.llama.build import Build
from launcher.measure.synth import SynthModel
from tests.helpers import runq_main, session_cache


def test_binaries_report_the_pinned_commit(llama_build: Build) -> None:
    for name in ("llama-server", "llama-cli", "llama-bench", "llama-fit-params", "llama-gguf-split"):
        assert llama_build.binary(name).is_file()
    r = subprocess.run([str(llama_build.binary("llama-server")), "--version"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "commit 0c1e570" in r.stdout + r.stderr
    h = subprocess.run([str(llama_build.binary("llama-server")), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "--override-tensor" in h.stdout + h.stderr
    m = llama_build.manifest
    assert m["commit"].startswith("0c1e570") and m["backend"] == "cpu"
    caps = m["capabilities"]["flags"]
    assert caps["load_mode"] and caps["fit"] and caps["override_tensor"] and caps["n_cpu_moe"]
    assert not caps["no_mmap"] and not caps["mlock"]  # replaced by -lm at this commit
    assert m["compiler"] and m["seconds"] > 0 and m["versions"]["llama-cli"]


def test_second_build_is_instant(llama_build: Build, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(session_cache(llama_build)))
    t0 = time.perf_counter()
    code, out, _ = runq_main("build", "--source", "pypi")
    assert time.perf_counter() - t0 < 10  # no configure, no compile (minutes); room for a loaded machine
    assert code == 0 and out.startswith("Already built") and "nothing to do" in out
    code, out, _ = runq_main("build", "--list")
    assert llama_build.key in out


@pytest.mark.parametrize("key", ["deepseek2-q8", "qwen3moe-q8", "deepseek2-3shards", "deepseek2-fused"])
def test_generated_models_load_and_run(llama_build: Build, models: dict[str, SynthModel], key: str) -> None:
    """The test models are real: llama.cpp loads them (a split set through shard 1) and generates."""
    r = subprocess.run(
        [
            str(llama_build.binary("llama-cli")),
            "-m",
            str(models[key].path),
            "-p",
            "Hello there",
            "-n",
            "8",
            "-st",
            "-c",
            "512",
            "-t",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Generation:" in r.stdout + r.stderr


def test_list_and_clean_ignore_unfinished_builds(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(tmp_path))
    root = tmp_path / "builds"
    done = root / "0c1e57098b-cpu-aaaaaaaa"
    (done / "bin").mkdir(parents=True)
    for t in bc.TARGETS:
        (done / "bin" / t).write_text("")
    (done / "manifest.json").write_text(json.dumps({"commit": "0c1e57098b", "backend": "cpu", "seconds": 1.0,
                                                    "built_at": "2026-11-27T00:00:00", "cuda_archs": []}))  # fmt: skip
    half = root / "0c1e57098b-cpu-bbbbbbbb"  # binaries but no manifest: interrupted before it was finished
    (half / "bin").mkdir(parents=True)
    (root / ".tmp-0c1e57098b-cpu-cccccccc-123").mkdir()
    assert [b.key for b in bld.cached_builds()] == [done.name]
    code, out, _ = runq_main("build", "--list")
    assert code == 0 and done.name in out and "bbbbbbbb" not in out
    code, _, err = runq_main("build", "--clean", "zzz")
    assert code == 2 and "no cached build 'zzz'" in err
    code, _, err = runq_main("build", "--clean", "0c1e")  # a key must match exactly: never a prefix
    assert code == 2 and "no cached build '0c1e'" in err and done.exists()
    code, _, err = runq_main("build", "--clean", "")  # never "everything" by accident
    assert code == 2 and "--clean --all" in err and done.exists()
    code, out, _ = runq_main("build", "--clean", "--all")
    assert code == 0 and "Removed 2 build(s)" in out
    assert not done.exists() and not (root / ".tmp-0c1e57098b-cpu-cccccccc-123").exists()


def test_missing_cmake_is_exit_4(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code, _, err = runq_main("build", "--source", "pypi")
    assert code == 4
    assert "Error: building llama.cpp needs cmake (Debian/Ubuntu: sudo apt install cmake)" in err
    assert "build-essential" in err
    assert not (tmp_path / "cache" / "builds").exists() or not any((tmp_path / "cache" / "builds").iterdir())


def test_failed_build_shows_the_error_and_leaves_nothing_done(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "broken-llama.cpp"
    (src / "ggml").mkdir(parents=True)
    cmake = 'cmake_minimum_required(VERSION 3.14)\nproject(b C CXX)\nmessage(FATAL_ERROR "boom: this tree is broken")\n'
    (src / "CMakeLists.txt").write_text(cmake)
    code, _, err = runq_main("build", "--source", str(src), "--backend", "cpu")
    assert code == 4
    assert "Error: llama.cpp configure failed" in err and "boom: this tree is broken" in err
    assert "Hint: the full log is" in err
    log = Path(err.split("Hint: the full log is ", 1)[1].strip())
    assert log.is_file() and "boom" in log.read_text()
    assert bld.cached_builds() == []
    assert [p.name for p in (tmp_path / "cache" / "builds").iterdir() if not p.name.endswith(".lock")] == []


def test_git_source_from_a_mirror(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The git source fetches exactly one commit (here from a local mirror; GitHub in real use)."""
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(tmp_path / "cache"))
    repo = tmp_path / "mirror"
    (repo / "ggml").mkdir(parents=True)
    (repo / "CMakeLists.txt").write_text("project(x)\n")
    (repo / "ggml" / "README").write_text("ggml\n")

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("config", "uploadpack.allowAnySHA1InWant", "true")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    commit = git("rev-parse", "HEAD")
    with (tmp_path / "log.txt").open("w") as log:
        src = source.git_source(f"file://{repo}", commit, "git", log)
    assert src.commit == commit and (src.path / "CMakeLists.txt").is_file()
    again = source.git_source(f"file://{repo}", commit, "git", log)  # cached: no second fetch
    assert again.path == src.path


def test_a_moved_cache_says_how_long_a_build_takes_and_where_the_old_one_is(
    llama_build: Build, models: dict[str, SynthModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """RUNQ_HOME moves the build cache too: a command that would build says how long the last build here took
    (from its manifest) and where the build it would redo already is, instead of starting a long build unsaid."""
    from launcher.llama.build_time import build_elsewhere, build_time_text
    from launcher.paths import cache_dir

    real = llama_build.path.parent.parent  # the cache the test build lives in: the default one, here
    monkeypatch.setenv("XDG_CACHE_HOME", str(real.parent))
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(real.parent / "elsewhere-runq-test"))  # an empty cache
    if real.name != "runq":
        pytest.skip("RUNQ_TEST_CACHE_DIR is not an XDG-style …/runq cache")
    assert cache_dir() != real and build_elsewhere(bc.LLAMA_CPP_COMMIT, "cpu") == real
    seconds = llama_build.manifest["seconds"]
    text = build_time_text("cpu")
    assert text.startswith(f"the last cpu build here took {seconds / 60:.0f} min ({seconds:,.0f} s"), text
    model = str(models["qwen3moe-q8"].path)
    code, _, err = runq_main("run", model, "--gpu", "none", "--ram", "16GiB")
    assert code == 1 and "Error: no cpu build of llama.cpp yet" in err
    assert f"add --auto to build it now (the last cpu build here took {seconds / 60:.0f} min" in err
    assert f"Note: {real} has a cpu build of llama.cpp, but runq's cache is elsewhere now" in err
    assert f"set RUNQ_CACHE_DIR={real} to use that build" in err
    code, _, err = runq_main("run", model, "--gpu", "none", "--ram", "16GiB", "--auto", "--dry-run")
    assert code == 0 and f"runq build --source auto — the last cpu build here took {seconds / 60:.0f} min" in err
    monkeypatch.setenv("RUNQ_CACHE_DIR", str(real))
    assert build_elsewhere(bc.LLAMA_CPP_COMMIT, "cpu") is None  # not moved: nothing to point at
