"""Where llama.cpp's source comes from: a git clone at the pinned commit, the copy vendored in llama-cpp-python's
PyPI sdist (no GitHub needed), or a local directory.

Edge: runs git and pip, writes the source cache.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import ExternalToolError, UsageError
from launcher.llama import build_config as bc
from launcher.llama import procs
from launcher.llama.capabilities import run_text
from launcher.paths import cache_dir

# --- sources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    kind: str  # "git", "pypi" or "dir"
    path: Path
    commit: str


def _run_logged(argv: list[str], log: Any, cwd: Path | None = None, what: str = "") -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    try:
        r = procs.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise ExternalToolError(f"{argv[0]}: not found") from None
    if r.returncode != 0:
        raise ExternalToolError(f"{what or argv[0]} failed (exit {r.returncode})", hint=f"see the log: {log.name}")


def pypi_source(log: Any) -> Source:
    """llama.cpp as vendored in the llama-cpp-python sdist, fetched with pip (honours the user's index config)."""
    dest = cache_dir() / "src" / f"pypi-{bc.PYPI_PACKAGE}-{bc.PYPI_VERSION}"
    tree = dest / "llama.cpp"
    if (dest / ".complete").is_file():
        return Source("pypi", tree, bc.LLAMA_CPP_COMMIT)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        spec = f"{bc.PYPI_PACKAGE}=={bc.PYPI_VERSION}"
        _run_logged(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d", tmp],
            log,
            what=f"pip download {spec}",
        )
        archives = list(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise ExternalToolError(f"pip download {spec} produced no source archive", hint=f"see the log: {log.name}")
        staging = Path(tmp) / "tree"
        _extract_vendored(archives[0], staging)
        if tree.exists():
            shutil.rmtree(tree)
        staging.rename(tree)
    (dest / ".complete").write_text(bc.LLAMA_CPP_COMMIT + "\n")
    return Source("pypi", tree, bc.LLAMA_CPP_COMMIT)


# Parts of the vendored tree a build does not need (models/ alone is 75 MiB).
_SKIP_PARTS = ("models", "docs", "media", "examples/model-conversion", ".github", "tests")


def _extract_vendored(archive: Path, dest: Path) -> None:
    marker = "/vendor/llama.cpp/"
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if marker not in member.name:
                continue
            rel = member.name.split(marker, 1)[1]
            if not rel or any(rel == p or rel.startswith(p + "/") for p in _SKIP_PARTS):
                continue
            member.name = rel
            tf.extract(member, dest, filter="data")
    if not (dest / "CMakeLists.txt").is_file():
        raise ExternalToolError(f"{archive.name} holds no vendor/llama.cpp tree")


def git_source(url: str, ref: str, git: str, log: Any) -> Source:
    dest = cache_dir() / "src" / ("git-" + hashlib.sha256(f"{url}@{ref}".encode()).hexdigest()[:12])
    if (dest / ".runq-complete").is_file():
        return Source("git", dest, (dest / ".runq-complete").read_text().strip())
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _run_logged([git, "init", "-q"], log, cwd=dest, what="git init")
    _run_logged([git, "fetch", "-q", "--depth", "1", url, ref], log, cwd=dest, what=f"git fetch {url} {ref}")
    _run_logged([git, "-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"], log, cwd=dest)
    commit = run_text([git, "-C", str(dest), "rev-parse", "HEAD"]).strip()
    (dest / ".runq-complete").write_text(commit + "\n")
    return Source("git", dest, commit)


def dir_source(path: Path, git: str | None) -> Source:
    if not (path / "CMakeLists.txt").is_file() or not (path / "ggml").is_dir():
        raise UsageError(f"{path} is not a llama.cpp source tree (no CMakeLists.txt and ggml/)")
    commit = ""
    if git and (path / ".git").exists():
        out = run_text([git, "-C", str(path), "rev-parse", "HEAD"]).strip()
        if re.fullmatch(r"[0-9a-f]{40}", out):
            commit = out
    return Source("dir", path, commit or "local-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10])
