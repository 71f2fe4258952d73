"""Which llama.cpp runs here, and what it accepts: the one answer, for run, services, the projection, calibration,
tune and workers alike.

Edge (reads build manifests, may run `--help` of a build of the user's own). Builds nothing: llama/build.py does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.llama.build import find_build
from launcher.llama.capabilities import probe_help, tool_argv
from launcher.llama.options import Help


@dataclass(frozen=True)
class Binaries:
    """The llama.cpp binaries runq runs here: a cached build of the pinned commit, or the user's --llama-bin."""

    bin_dir: Path
    key: str  # the build key, or "custom:<path>" for --llama-bin
    backend: str | None  # "cpu" or "cuda" from runq's manifest; None for a build of the user's own without one
    commit: str | None  # from the manifest (a custom build: asked with --version when needed)

    def has(self, name: str) -> bool:
        return tool_argv(self.bin_dir, name) is not None

    def tool(self, name: str) -> list[str]:
        """How to start a tool of this build (its binary, or `llama SUBCOMMAND` of a multi-call build)."""
        argv = tool_argv(self.bin_dir, name)
        return argv if argv is not None else [str(self.bin_dir / name)]

    def help(self, name: str) -> Help | None:
        """What this build's `name` lists in its --help (None: no such tool)."""
        return probe_help(self.bin_dir, name)

    @property
    def label(self) -> str:
        """How errors name this build: runq's build key, or the user's directory."""
        return f"build {self.key}" if not self.key.startswith("custom:") else str(self.bin_dir)


def manifest_of(bin_dir: Path) -> dict[str, Any]:
    """runq's manifest of the build these binaries belong to ({} for a build of the user's own)."""
    try:
        data = json.loads((bin_dir.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def binaries_at(bin_dir: Path) -> Binaries:
    """Binaries in a directory: runq's build (its manifest says what it is) or one of the user's own."""
    m = manifest_of(bin_dir)
    path = bin_dir.resolve()
    key = path.parent.name if m else f"custom:{path}"
    return Binaries(path, key, m.get("backend"), m.get("commit"))


def backend_here() -> str:
    """The backend a build for this machine has: CUDA when NVML sees a GPU, else the CPU."""
    from launcher.machine.probe import probe_gpus

    return "cuda" if probe_gpus()[0] else "cpu"


def binaries_here(llama_bin: str | Path | None = None, quirks: tuple[str, ...] = ()) -> Binaries | None:
    """The one answer to "which llama.cpp runs here": --llama-bin when given, else runq's cached build of the
    pinned commit for this machine's backend (with the model's quirks); None when there is none yet. Builds
    nothing. Used by run, services, the projection, calibration, tune and workers alike."""
    if llama_bin:
        return binaries_at(Path(llama_bin))
    found = find_build(backend_here(), quirks)
    return binaries_at(found.bin_dir) if found else None
