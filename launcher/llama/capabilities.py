"""Which flags a llama.cpp build accepts, read from its `--help` and `--version`.

`parse_help` and `parse_version` are pure; `probe_binaries` runs the binaries
(the edge). The run step composes commands from what is really there: `-lm`
or the old `--no-mmap`, `--fit off` only where `--fit` exists, and so on.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.errors import ExternalToolError

# Flags runq may use, by the name it knows them under -> the spellings to look for in --help.
KNOWN_FLAGS = {
    "load_mode": ("-lm", "--load-mode"),
    "no_mmap": ("--no-mmap",),
    "mlock": ("--mlock",),
    "fit": ("--fit",),
    "override_tensor": ("-ot", "--override-tensor"),
    "cpu_moe": ("--cpu-moe",),
    "n_cpu_moe": ("--n-cpu-moe", "-ncmoe"),
    "reasoning_budget": ("--reasoning-budget",),
    "cache_ram": ("-cram", "--cache-ram"),
    "jinja": ("--jinja",),
    "chat_template_file": ("--chat-template-file",),
    "log_jsonl": ("--log-jsonl",),
    "log_verbosity": ("-lv", "--verbosity"),
    "tensor_split": ("-ts", "--tensor-split"),
    "rpc": ("--rpc",),
    "flash_attn": ("-fa", "--flash-attn"),
    "api_key_file": ("--api-key-file",),
    "alias": ("-a", "--alias"),
    "parallel": ("-np", "--parallel"),
    "kv_unified": ("-kvu", "--kv-unified"),
    "lazy_mode": ("-lzm", "--lazy-mode"),
}

_FLAG_RE = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
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


def parse_help(text: str) -> dict[str, bool]:
    """{known flag name: accepted?} from a `--help` text."""
    seen = set(_FLAG_RE.findall(text))
    return {name: any(s in seen for s in spellings) for name, spellings in KNOWN_FLAGS.items()}


def parse_version(text: str) -> tuple[str | None, int | None, str | None]:
    m = _VERSION_RE.search(text)
    if not m:
        return None, None, None
    return m.group(1), int(m.group(2)), m.group(3)


def run_text(argv: list[str], timeout: float = 30) -> str:
    """stdout + stderr of a short command; llama.cpp prints --version on stderr."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ExternalToolError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise ExternalToolError(f"{' '.join(argv)} did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise ExternalToolError(f"{argv[0]}: cannot run: {e.strerror}") from None
    return r.stdout + r.stderr


def probe_binaries(bin_dir: Path) -> Capabilities:
    server = bin_dir / "llama-server"
    if not server.is_file():
        raise ExternalToolError(
            f"{bin_dir} has no llama-server",
            hint="give the directory that holds the llama.cpp binaries (llama-server, llama-cli …)",
        )
    flags = parse_help(run_text([str(server), "--help"]))
    version, number, commit = parse_version(run_text([str(server), "--version"]))
    return Capabilities(flags=flags, version=version, build_number=number, commit=commit)
