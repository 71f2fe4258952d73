"""Which flags a llama.cpp build accepts, read from each of its binaries' `--help` and `--version`.

Edge: runs the binaries (a few tens of ms each; remembered per binary and modification time). The parsing is pure
(llama/options.py). A build may be split binaries (llama-server, llama-cli, llama-bench, llama-fit-params: runq's
builds) or newer llama.cpp's one multi-call `llama` (`llama serve|cli|bench|fit-params`): `tool_argv` says how to
start each tool either way.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.errors import ExternalToolError
from launcher.llama import procs
from launcher.llama.options import KNOWN_FLAGS, Help, parse_help, parse_options

__all__ = ["KNOWN_FLAGS", "Capabilities", "parse_help", "parse_version", "probe_binaries", "probe_help", "tool_argv"]

MULTI_CALL = "llama"  # newer llama.cpp's one binary: `llama serve …`
SUBCOMMANDS = {"llama-server": "serve", "llama-cli": "cli", "llama-bench": "bench", "llama-fit-params": "fit-params"}
_VERSION_RE = re.compile(r"version:\s*(\S+)\s*\(build (\d+), commit (\w+)\)")


@dataclass(frozen=True)
class Capabilities:
    flags: dict[str, bool]
    version: str | None
    build_number: int | None
    commit: str | None

    def has(self, name: str) -> bool:
        return self.flags.get(name, False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_version(text: str) -> tuple[str | None, int | None, str | None]:
    m = _VERSION_RE.search(text)
    if not m:
        return None, None, None
    return m.group(1), int(m.group(2)), m.group(3)


def run_text(argv: list[str], timeout: float = 30) -> str:
    """stdout + stderr of a short command; llama.cpp prints --version on stderr."""
    try:
        r = procs.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ExternalToolError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise ExternalToolError(f"{' '.join(argv)} did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise ExternalToolError(f"{argv[0]}: cannot run: {e.strerror}") from None
    return r.stdout + r.stderr


def tool_argv(bin_dir: Path, tool: str) -> list[str] | None:
    """How to start a llama.cpp tool from this directory: its own binary, or the multi-call `llama` with the
    tool's subcommand; None when neither is there."""
    own = bin_dir / tool
    if own.is_file():
        return [str(own)]
    multi = bin_dir / MULTI_CALL
    if tool in SUBCOMMANDS and multi.is_file():
        return [str(multi), SUBCOMMANDS[tool]]
    return None


@functools.lru_cache(maxsize=32)
def _help_text(argv: tuple[str, ...], _mtime_ns: int) -> str:
    return run_text([*argv, "--help"])


def probe_help(bin_dir: Path, tool: str) -> Help | None:
    """The options `tool` of this build lists in its `--help`; None when the build has no such tool."""
    argv = tool_argv(bin_dir, tool)
    if argv is None:
        return None
    return parse_options(_help_text(tuple(argv), Path(argv[0]).stat().st_mtime_ns), tool)


def probe_binaries(bin_dir: Path) -> Capabilities:
    """What llama-server (or `llama serve`) accepts, and the build's version."""
    server = tool_argv(bin_dir, "llama-server")
    if server is None:
        raise ExternalToolError(
            f"{bin_dir} has neither llama-server nor a multi-call `llama`",
            hint="give the directory that holds the llama.cpp binaries (llama-server, llama-cli … or llama)",
        )
    h = probe_help(bin_dir, "llama-server")
    assert h is not None
    version, number, commit = parse_version(run_text([server[0], "--version"]))
    return Capabilities(flags=h.flags(), version=version, build_number=number, commit=commit)
